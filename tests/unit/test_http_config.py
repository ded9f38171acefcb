"""bluesky-httpserver's configuration file, read as it is; what is not supported is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.gateway.access import dictionary_access
from services.gateway.authstore import AuthStore
from services.gateway.config import AuthOptions, load_authenticator
from services.gateway.hsconfig import ConfigError
from services.gateway.logins import LoginAuthenticator

TOY_PROVIDER = {
    "provider": "toy",
    "authenticator": "bluesky_httpserver.authenticators:DictionaryAuthenticator",
    "args": {"users_to_passwords": {"bob": "bob_password"}},
}


def offline() -> Any:
    raise AssertionError("a unit test does not connect")


def load(tmp_path: Path, config: dict[str, Any]) -> Any:
    path = tmp_path / "http.yml"
    path.write_text(yaml.safe_dump(config))
    return load_authenticator(AuthOptions(config_file=path), lambda: AuthStore(offline, "b"))


def test_the_reference_sections_give_providers_policies_and_token_ages(tmp_path: Path) -> None:
    auth = load(
        tmp_path,
        {
            "authentication": {
                "providers": [TOY_PROVIDER],
                "access_token_max_age": 2,
                "refresh_token_max_age": 600,
                "session_max_age": 1000,
                "secret_keys": ["k1", "k2"],
            },
            "api_access": {
                "policy": "bluesky_httpserver.authorization:DictionaryAPIAccessControl",
                "args": {
                    "users": {"bob": {"roles": ["admin", "expert"], "email": "bob@x.org"}},
                    "roles": {"expert": {"scopes_remove": "write:scripts"}},
                },
            },
            "resource_access": {
                "policy": "bluesky_httpserver.authorization:DefaultResourceAccessControl",
                "args": {"default_group": "test_user"},
            },
        },
    )
    assert isinstance(auth, LoginAuthenticator)
    s = auth.settings
    assert (s.access_token_max_age, s.refresh_token_max_age, s.session_max_age) == (2, 600, 1000)
    assert s.secret_keys == ("k1", "k2") and list(s.providers) == ["toy"]
    assert auth.group == "test_user"
    assert auth.access.displayed_name("bob") == "bob <bob@x.org>"
    scopes = auth.access.scopes_of("bob")
    assert "admin:apikeys" in scopes and "write:lock" in scopes and "write:scripts" not in scopes


def test_unsupported_settings_are_all_named_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(
            tmp_path,
            {
                "authentication": {"providers": [TOY_PROVIDER], "tiled_admins": []},
                "uvicorn": {"port": 60610},
                "qserver_zmq_configuration": {"control_address": "tcp://localhost:60615"},
                "server_configuration": {"custom_routers": ["a.b"]},
                "metrics": {"prometheus": True},
                "allow_origins": ["https://x.org"],
            },
        )
    text = str(e.value)
    for name in (
        "'uvicorn'",
        "'qserver_zmq_configuration'",
        "'server_configuration'",
        "'metrics'",
        "'allow_origins'",
        "'authentication: tiled_admins'",
    ):
        assert name in text, text


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"authentication": {"providers": [{**TOY_PROVIDER, "authenticator": "x.y:SAML"}]}},
            "authenticator 'x.y:SAML' is not supported",
        ),
        (
            {
                "authentication": {
                    "providers": [
                        {
                            **TOY_PROVIDER,
                            "authenticator": "bluesky_httpserver.authenticators:SAMLAuthenticator",
                        }
                    ]
                }
            },
            "is not supported",
        ),
        (
            {"authentication": {"providers": [TOY_PROVIDER, TOY_PROVIDER]}},
            "the provider name 'toy' is used twice",
        ),
        (
            {"authentication": {"providers": [{**TOY_PROVIDER, "args": {"users": {}}}]}},
            "unsupported argument(s) ['users']",
        ),
        (
            {
                "authentication": {"providers": [TOY_PROVIDER]},
                "api_access": {
                    "policy": "bluesky_httpserver.authorization:ServerBasedAPIAccessControl"
                },
            },
            "api_access policy 'bluesky_httpserver.authorization:ServerBasedAPIAccessControl' "
            "is not supported",
        ),
        (
            {
                "authentication": {"providers": [TOY_PROVIDER]},
                "api_access": {
                    "policy": "bluesky_httpserver.authorization:DictionaryAPIAccessControl",
                    "args": {"users": {"bob": {"roles": "admin", "phone": "1"}}},
                },
            },
            "users 'bob': unsupported setting(s) ['phone']",
        ),
        ({"api_access": {}}, "nobody could get in"),
    ],
)
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv("QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY", raising=False)
    with pytest.raises(ConfigError) as e:
        load(tmp_path, config)
    assert message in str(e.value)


def test_environment_variables_are_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOB_PASSWORD", "from-env")
    provider = {**TOY_PROVIDER, "args": {"users_to_passwords": {"bob": "$BOB_PASSWORD"}}}
    auth = load(tmp_path, {"authentication": {"providers": [provider]}})
    assert auth.settings.providers["toy"].users_to_passwords == {"bob": "from-env"}


def test_role_scopes_are_set_added_and_removed_as_the_reference_does() -> None:
    access = dictionary_access(
        {
            "roles": {
                "user": {"scopes_set": ["read:status", "read:queue"], "scopes_add": "write:lock"},
                "observer": None,
                "custom": {"scopes_add": ["read:history"]},
            },
            "users": {"a": {"roles": "user"}, "o": {"roles": "observer"}, "c": {"roles": "custom"}},
        }
    )
    assert access.scopes_of("a") == {"read:status", "read:queue", "write:lock"}
    assert access.scopes_of("o") == frozenset()
    assert access.scopes_of("c") == {"read:history"}
    assert not access.is_known("nobody") and access.scopes_of("nobody") == frozenset()


def test_the_references_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "http.yml"
    path.write_text(yaml.safe_dump({"authentication": {"providers": [TOY_PROVIDER]}}))
    monkeypatch.delenv("QSERVER_HTTP_CONFIG", raising=False)
    monkeypatch.setenv("QSERVER_HTTP_SERVER_CONFIG", str(path))
    auth = load_authenticator(AuthOptions(), lambda: AuthStore(offline, "b"))
    assert isinstance(auth, LoginAuthenticator) and list(auth.settings.providers) == ["toy"]

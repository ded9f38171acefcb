"""The gateway's auth configuration: keys, roles, anonymous access, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.gateway.auth import DEFAULT_ROLES, READ_SCOPES, Credentials, key_digest
from services.gateway.config import AuthOptions, ConfigError, load_authenticator
from services.gateway.errors import Unauthorized
from tests.conftest import packages_loaded


def config(tmp_path: Path, data: object) -> AuthOptions:
    path = tmp_path / "gateway.yml"
    path.write_text(yaml.safe_dump(data))
    return AuthOptions(config_file=path)


def test_a_key_stored_as_its_digest_authenticates_its_user(tmp_path: Path) -> None:
    opts = config(
        tmp_path,
        {
            "api_keys": [
                {
                    "key_sha256": key_digest("s3cret"),
                    "user": "bob",
                    "roles": ["observer"],
                    "user_group": "lab",
                }
            ]
        },
    )
    bob = load_authenticator(opts).authenticate(Credentials.of("ApiKey s3cret"))
    assert (bob.name, bob.user_group, bob.scopes) == ("bob", "lab", DEFAULT_ROLES["observer"])
    with pytest.raises(
        Unauthorized, match=r"Not enough permissions. Requires scopes \['write:queue:edit'\]"
    ):
        bob.require("write:queue:edit")
    with pytest.raises(Unauthorized, match="Invalid API key"):
        load_authenticator(opts).authenticate(Credentials.of("ApiKey s3cre"))


def test_unknown_roles_and_scopes_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown role 'boss'"):
        load_authenticator(
            config(tmp_path, {"api_keys": [{"key": "k", "user": "u", "roles": ["boss"]}]})
        )
    with pytest.raises(ConfigError, match="unknown scope 'write:all'"):
        load_authenticator(
            config(tmp_path, {"api_keys": [{"key": "k", "user": "u", "scopes": ["write:all"]}]})
        )


def test_anonymous_access_is_read_only(tmp_path: Path) -> None:
    opts = config(
        tmp_path, {"allow_anonymous_access": True, "anonymous_scopes": sorted(READ_SCOPES)}
    )
    assert load_authenticator(opts).authenticate(Credentials()).scopes == READ_SCOPES
    with pytest.raises(ConfigError, match="read-only"):
        load_authenticator(
            config(
                tmp_path, {"allow_anonymous_access": True, "anonymous_scopes": ["write:queue:edit"]}
            )
        )


def test_a_gateway_nobody_could_use_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY", raising=False)
    monkeypatch.delenv("QSERVER_HTTP_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="no API key is configured"):
        load_authenticator(AuthOptions())


def test_the_single_user_key_comes_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("abc123\n")
    auth = load_authenticator(AuthOptions(single_user_key_file=tmp_path / "key"))
    assert "write:manager:stop" in auth.authenticate(Credentials.of("ApiKey abc123")).scopes
    (tmp_path / "key").write_text("not alnum!")
    with pytest.raises(ConfigError, match="alphanumeric"):
        load_authenticator(AuthOptions(single_user_key_file=tmp_path / "key"))


def test_no_auth_lets_everyone_in_as_the_single_user() -> None:
    user = load_authenticator(AuthOptions(no_auth=True)).authenticate(
        Credentials.of("ApiKey whatever")
    )
    assert user.name == "UNAUTHENTICATED_SINGLE_USER"


def test_the_gateway_loads_no_heavy_package() -> None:
    heavy = ("bluesky", "ophyd", "numpy", "tiled", "confluent_kafka")
    assert packages_loaded("services.gateway.app", heavy) == []

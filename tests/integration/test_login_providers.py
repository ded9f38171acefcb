"""PAM, LDAP and OIDC logins against real back ends made by the fixtures.

PAM: a system user and a PAM service (pam_unix) made for the test. LDAP: Debian's slapd on
a free loopback port with users and a group. OIDC: oidc-provider-mock (a real OpenID
provider) on loopback, the browser's part played by httpx.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for
from tests.integration.login_support import write_config
from tests.integration.provider_servers import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    LDAP_USERS,
    OPERATORS,
    Oidc,
    PamUser,
    oidc_provider,
    pam_user,
    slapd,
)

AUTHENTICATORS = "bluesky_httpserver.authenticators"
REDIRECT = "http://127.0.0.1/qserver/oidc-callback"  # the browser is the test: never visited
CLIENT_ID = "qserver-gateway"


@pytest.fixture(scope="module")
def pam() -> Iterator[PamUser]:
    with pam_user() as user:
        yield user


@pytest.fixture(scope="module")
def ldap_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with slapd(tmp_path_factory.mktemp("slapd")) as port:
        yield port


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oidc]:
    with oidc_provider(tmp_path_factory.mktemp("oidc")) as provider:
        yield provider


def providers(pam: PamUser, ldap_port: int, oidc: Oidc) -> list[dict[str, Any]]:
    ldap_common = {"server_address": "127.0.0.1", "server_port": ldap_port, "use_tls": False}
    return [
        {
            "provider": "pam",
            "authenticator": f"{AUTHENTICATORS}:PAMAuthenticator",
            "args": {"service": pam.service},
        },
        {
            "provider": "ldap",
            "authenticator": f"{AUTHENTICATORS}:LDAPAuthenticator",
            "args": {
                **ldap_common,
                "bind_dn_template": f"uid={{username}},ou=users,{BASE_DN}",
                "allowed_groups": [OPERATORS],
            },
        },
        {
            "provider": "ldap_lookup",
            "authenticator": f"{AUTHENTICATORS}:LDAPAuthenticator",
            "args": {
                **ldap_common,
                "lookup_dn": True,
                "user_search_base": f"ou=users,{BASE_DN}",
                "user_attribute": "uid",
                "lookup_dn_search_user": ADMIN_DN,
                "lookup_dn_search_password": ADMIN_PASSWORD,
                "lookup_dn_user_dn_attribute": "uid",
            },
        },
        {
            "provider": "oidc",
            "authenticator": f"{AUTHENTICATORS}:OIDCAuthenticator",
            "args": {
                "client_id": CLIENT_ID,
                "client_secret": "client-secret",
                "redirect_uri": REDIRECT,
                "token_uri": oidc.discovery["token_endpoint"],
                "authorization_endpoint": oidc.discovery["authorization_endpoint"]
                + "?client_id={client_id}&redirect_uri={redirect_uri}&response_type=code"
                "&scope=openid",
                "public_keys": oidc.jwks,
                "confirmation_message": "You logged in as {id}",
            },
        },
    ]


@pytest.fixture(scope="module")
async def gateway(
    module_services: Services,
    tmp_path_factory: pytest.TempPathFactory,
    pam: PamUser,
    ldap_port: int,
    oidc: Oidc,
) -> AsyncIterator[Gateway]:
    users = {u: {"roles": "user"} for u in (pam.name, "alice", "bob", "carol@example.org")}
    config = {
        "authentication": {"providers": providers(pam, ldap_port, oidc)},
        "api_access": {
            "policy": "bluesky_httpserver.authorization:DictionaryAPIAccessControl",
            "args": {"users": users},
        },
    }
    path = write_config(tmp_path_factory.mktemp("providers"), config)
    async with gateway_for(module_services, "--http-config", str(path)) as gw:
        yield gw


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


async def login(http: httpx.AsyncClient, provider: str, user: str, password: str) -> httpx.Response:
    return await http.post(
        f"/api/auth/provider/{provider}/token", data={"username": user, "password": password}
    )


async def added_by(http: httpx.AsyncClient, access_token: str) -> str:
    """The `user` the gateway writes on an item added with this token."""
    headers = {"Authorization": f"Bearer {access_token}"}
    item = {"item_type": "plan", "name": "count", "args": [["det1"]]}
    r = await http.post("/api/queue/item/add", json={"item": item}, headers=headers)
    assert r.status_code == 200 and r.json()["success"], r.text
    await http.post(
        "/api/queue/item/remove", json={"uid": r.json()["item"]["item_uid"]}, headers=headers
    )
    user: str = r.json()["item"]["user"]
    return user


async def test_pam_lets_in_the_system_user_with_its_password(
    http: httpx.AsyncClient, pam: PamUser
) -> None:
    r = await login(http, "pam", pam.name, pam.password)
    assert r.status_code == 200, r.text
    assert await added_by(http, r.json()["access_token"]) == pam.name
    r = await login(http, "pam", pam.name, pam.password + "x")
    assert r.status_code == 401 and r.json()["detail"] == "Incorrect username or password"
    r = await login(http, "pam", "no-such-user-qst", "whatever")
    assert r.status_code == 401 and r.json()["detail"] == "Incorrect username or password"


async def test_ldap_binds_as_the_user_and_checks_the_allowed_groups(
    http: httpx.AsyncClient,
) -> None:
    r = await login(http, "ldap", "alice", LDAP_USERS["alice"])
    assert r.status_code == 200, r.text
    assert await added_by(http, r.json()["access_token"]) == "alice"
    r = await login(http, "ldap", "alice", "wrong")
    assert r.status_code == 401 and r.json()["detail"] == "Incorrect username or password"
    r = await login(http, "ldap", "alice", "")
    assert r.status_code == 401  # an empty password would be an anonymous bind: refused
    # bob's password is right, but he is not in the allowed group.
    r = await login(http, "ldap", "bob", LDAP_USERS["bob"])
    assert r.status_code == 401 and r.json()["detail"] == "Incorrect username or password"
    # A name that could inject into a filter or a DN is refused before any bind.
    r = await login(http, "ldap", "alice)(uid=*", LDAP_USERS["alice"])
    assert r.status_code == 401


async def test_ldap_finds_the_dn_with_a_search_user(http: httpx.AsyncClient) -> None:
    r = await login(http, "ldap_lookup", "bob", LDAP_USERS["bob"])
    assert r.status_code == 200, r.text
    assert await added_by(http, r.json()["access_token"]) == "bob"
    r = await login(http, "ldap_lookup", "bob", LDAP_USERS["alice"])
    assert r.status_code == 401
    r = await login(http, "ldap_lookup", "nobody", "x")
    assert r.status_code == 401


async def browser_code(oidc: Oidc, gateway_http: httpx.AsyncClient, sub: str) -> str:
    """What a browser does: the provider's page (as listed by the gateway), a choice, a redirect."""
    listed = (await gateway_http.get("/api/auth/providers")).json()["providers"]
    endpoint = next(p for p in listed if p["provider"] == "oidc")["links"]["auth_endpoint"]
    async with httpx.AsyncClient(timeout=30) as browser:
        assert (await browser.get(endpoint)).status_code == 200
        r = await browser.post(endpoint, data={"sub": sub})
        assert r.status_code in (302, 303), r.text
    location = urllib.parse.urlparse(r.headers["location"])
    assert location.path == urllib.parse.urlparse(REDIRECT).path
    return urllib.parse.parse_qs(location.query)["code"][0]


async def test_oidc_code_flow_gives_a_session(
    http: httpx.AsyncClient, oidc: Oidc, tmp_path: Path
) -> None:
    code = await browser_code(oidc, http, "carol@example.org")
    r = await http.get("/api/auth/provider/oidc/code", params={"code": code})
    assert r.status_code == 200, r.text
    refresh_token = r.json()
    assert isinstance(refresh_token, str)
    r = await http.post("/api/auth/session/refresh", json={"refresh_token": refresh_token})
    assert r.status_code == 200, r.text
    assert await added_by(http, r.json()["access_token"]) == "carol@example.org"
    # A code is good once; a made-up one is refused.
    for bad in (code, "not-a-code"):
        r = await http.get("/api/auth/provider/oidc/code", params={"code": bad})
        assert r.status_code == 401 and r.json()["detail"] == "Authentication failure"
    # A user the provider knows but the access policy does not: refused.
    code = await browser_code(oidc, http, "mallory@example.org")
    r = await http.post("/api/auth/provider/oidc/code", params={"code": code})
    assert r.status_code == 401 and r.json()["detail"] == "Authentication failure"

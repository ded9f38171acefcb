"""Logins with bluesky-httpserver's 'toy' configuration, through both reference clients.

The cases of bluesky-queueserver-api's `test_api_fs.py` (login, session refresh and revoke,
API keys, whoami, logout, principal info), each with the threaded and the asyncio client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bluesky_queueserver_api.http.aio import REManagerAPI as AsyncREManagerAPI
from websockets.asyncio.client import connect

from tests.conftest import Services, unique_prefix
from tests.integration.gateway_support import Gateway, gateway_for, running_gateway
from tests.integration.login_support import (
    LIBRARIES,
    TOY,
    client,
    short_tokens,
    with_client,
    write_config,
)

pytestmark = pytest.mark.parametrize("library", LIBRARIES)
BOB = {"username": "bob", "password": "bob_password"}


@pytest.fixture(scope="module")
async def gateway(
    module_services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    config = write_config(tmp_path_factory.mktemp("toy"), TOY)
    async with gateway_for(module_services, "--http-config", str(config)) as gw:
        yield gw


def test_login_gives_tokens_that_open_the_api(gateway: Gateway, library: str) -> None:
    for default_provider in (True, False):
        for use_kwargs in (True, False):
            params = {"http_auth_provider": "/toy/token"} if default_provider else {}
            RM = client(library, gateway.url, **params)
            try:
                with pytest.raises(RM.HTTPClientError, match="401"):
                    RM.status()
                kwargs: dict[str, Any] = {"password": "bob_password"}
                if not default_provider:
                    kwargs["provider"] = "/toy/token"
                args = [] if use_kwargs else ["bob"]
                if use_kwargs:
                    kwargs["username"] = "bob"
                tokens = RM.login(*args, **kwargs)
                assert RM.auth_key == (tokens["access_token"], tokens["refresh_token"])
                assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
                assert RM.status()["manager_state"] == "idle"
            finally:
                RM.close()


def test_wrong_credentials_are_refused_with_the_references_message(
    gateway: Gateway, library: str
) -> None:
    def test(RM: Any) -> None:
        for username, password in (
            ("bob", "rand_pwd"),
            ("rand_user", "bob-password"),
            ("rand_user", "rand_pwd"),
        ):
            with pytest.raises(RM.HTTPClientError, match="401: Incorrect username or password"):
                RM.login(username, password=password)
        # cara has a password but no role: she is not let in.
        with pytest.raises(RM.HTTPClientError, match="401: User is not authorized"):
            RM.login("cara", password="cara_password")
        with pytest.raises(RM.HTTPClientError, match="401"):
            RM.status()

    with_client(library, gateway.url, test)


def test_a_session_refreshes_and_a_bad_refresh_token_is_401(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        RM.login("bob", password="bob_password")
        for token_as_param in (False, True):
            if token_as_param:
                refresh_token = RM.auth_key[1]
                RM.set_authorization_key()
                response = RM.session_refresh(refresh_token=refresh_token)
            else:
                RM.set_authorization_key(refresh_token=RM.auth_key[1])
                response = RM.session_refresh()
            assert (response["access_token"], response["refresh_token"]) == RM.auth_key
            RM.status()
        with pytest.raises(RM.HTTPClientError, match="401"):
            RM.session_refresh(refresh_token="invalidtoken")

    with_client(library, gateway.url, test)


def test_a_revoked_session_refreshes_no_more(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        resp = RM.login("bob", password="bob_password")
        token, refresh_token = resp["access_token"], resp["refresh_token"]
        api_key = RM.apikey_new(expires_in=900)["secret"]
        RM.session_refresh()
        session = RM.session_refresh()  # the session's tokens after two refreshes
        whoami = RM.whoami()
        mine = [s for s in whoami["sessions"] if not s["revoked"]]
        assert mine, whoami
        uid = mine[-1]["uuid"]
        for params in ({"token": session["access_token"]}, {"api_key": api_key}):
            RM.set_authorization_key()  # anonymous: not the owner
            with pytest.raises(RM.HTTPClientError, match="requester has insufficient permissions"):
                RM.session_revoke(session_uid=uid)
            # Revoking with bob's credentials as a parameter works (each session once).
            if "api_key" in params:
                assert RM.session_revoke(session_uid=uid, **params)["success"] is True
        RM.set_authorization_key(token=token, refresh_token=refresh_token)
        with pytest.raises(RM.HTTPClientError, match="Session has expired"):
            RM.session_refresh()

    with_client(library, gateway.url, test)


def test_api_keys_are_made_read_and_scoped(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        resp = RM.login("bob", password="bob_password")
        token, refresh_token = resp["access_token"], resp["refresh_token"]
        api_key = RM.apikey_new(expires_in=900)["secret"]
        info = RM.apikey_info(api_key=api_key)
        assert (info["note"], info["scopes"], info["first_eight"]) == (
            None,
            ["inherit"],
            api_key[:8],
        )
        with pytest.raises(RM.HTTPClientError, match="No API key was provided with this request"):
            RM.apikey_info()
        RM.set_authorization_key(api_key=api_key)
        assert RM.apikey_info()["scopes"] == ["inherit"]
        RM.set_authorization_key(token=token, refresh_token=refresh_token)
        key2 = RM.apikey_new(
            expires_in=900, scopes=["read:status", "read:queue"], note="Some message!!!"
        )["secret"]
        info = RM.apikey_info(api_key=key2)
        assert (info["note"], info["scopes"]) == ("Some message!!!", ["read:status", "read:queue"])
        # The key does only what its scopes say.
        RM.set_authorization_key(api_key=key2)
        RM.status()
        with pytest.raises(RM.HTTPClientError, match="401: Not enough permissions"):
            RM.history_get()

    with_client(library, gateway.url, test)


def test_an_admin_makes_a_key_for_another_user(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        resp = RM.login("bob", password="bob_password")
        token, refresh_token = resp["access_token"], resp["refresh_token"]
        RM.login("tom", password="tom_password")
        tom = RM.whoami()["uuid"]
        RM.set_authorization_key(token=token, refresh_token=refresh_token)
        api_key = RM.apikey_new(expires_in=900, principal_uid=tom)["secret"]
        assert RM.apikey_info(api_key=api_key)["scopes"] == ["inherit"]
        assert RM.whoami(api_key=api_key)["uuid"] == tom
        assert "admin:apikeys" in RM.api_scopes()["scopes"]
        assert "admin:apikeys" not in RM.api_scopes(api_key=api_key)["scopes"]

    with_client(library, gateway.url, test)


def test_a_deleted_key_is_invalid(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        token = RM.login("bob", password="bob_password")["access_token"]
        for how in (None, "token", "api_key"):
            api_key = RM.apikey_new(expires_in=900)["secret"]
            params = {"token": token} if how == "token" else {"api_key": api_key} if how else {}
            saved = RM.auth_key
            if params:
                RM.set_authorization_key()
            assert RM.apikey_delete(first_eight=api_key[:8], **params) == {
                "success": True,
                "msg": "",
            }
            with pytest.raises(RM.HTTPClientError, match="Invalid API key"):
                RM.apikey_info(api_key=api_key)
            RM.set_authorization_key(token=saved[0], refresh_token=saved[1])

    with_client(library, gateway.url, test)


def test_whoami_and_scopes_by_token_or_key(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        token = RM.login("bob", password="bob_password")["access_token"]
        api_key = RM.apikey_new(expires_in=900)["secret"]
        for params in ({}, {"token": token}, {"api_key": api_key}):
            who = RM.whoami(**params)
            assert [i["id"] for i in who["identities"]] == ["bob"]
            assert who["identities"][0]["provider"] == "toy"
            scopes = RM.api_scopes(**params)
            assert "admin" in scopes["roles"] and "admin:apikeys" in scopes["scopes"]

    with_client(library, gateway.url, test)


def test_logout_forgets_the_tokens_and_ends_the_session(gateway: Gateway, library: str) -> None:
    def test(RM: Any) -> None:
        resp = RM.login("bob", password="bob_password")
        assert RM.auth_key == (resp["access_token"], resp["refresh_token"])
        assert RM.auth_method == RM.AuthorizationMethods.TOKEN
        RM.logout()
        assert RM.auth_key is None and RM.auth_method == RM.AuthorizationMethods.NONE
        RM.set_authorization_key(token=resp["access_token"], refresh_token=resp["refresh_token"])
        with pytest.raises(RM.HTTPClientError, match="401: Session has expired"):
            RM.session_refresh()

    with_client(library, gateway.url, test)


async def test_principal_info_lists_the_logged_in_users(
    module_services: Services, tmp_path: Path, library: str
) -> None:
    # A gateway of its own prefix: a store where bob is the only principal.
    config = write_config(tmp_path, TOY)
    async with running_gateway(
        module_services.nats.url, unique_prefix(), tmp_path, "--http-config", str(config)
    ) as gw:

        def test(RM: Any) -> None:
            RM.login("bob", password="bob_password")
            who = RM.whoami()
            assert {"uuid", "identities", "sessions", "api_keys"} <= set(who)
            everyone = RM.principal_info()
            assert everyone == [who]
            assert RM.principal_info(principal_uid=who["uuid"]) == who

        await asyncio.to_thread(with_client, library, gw.url, test)


async def test_expired_access_tokens_are_refreshed_by_the_client(
    module_services: Services, tmp_path: Path, library: str
) -> None:
    config = write_config(tmp_path, short_tokens(2))
    async with gateway_for(module_services, "--http-config", str(config)) as gw:

        def test(RM: Any) -> None:
            RM.login("bob", password="bob_password")
            expired = 0
            for _ in range(8):
                try:
                    RM.send_request(method="status", auto_refresh_session=False)
                except RM.HTTPClientError as e:
                    assert "Access token has expired" in str(e)
                    expired += 1
                RM.status()  # refreshes the session by itself
                time.sleep(1)
            assert expired > 0

        await asyncio.to_thread(with_client, library, gw.url, test)


def test_the_system_info_monitor_authenticates_with_a_key_or_a_token(
    gateway: Gateway, library: str
) -> None:
    for option in ("APIKEY", "TOKEN"):
        if library == "ASYNC":
            # asyncio.run also cancels what the client leaves running (its status poller),
            # which a bare loop.close() would leave to be destroyed pending at exit.
            asyncio.run(async_monitor(gateway.url, option))
            continue

        def test(RM: Any, option: str = option) -> None:
            RM.login("bob", password="bob_password")
            if option == "APIKEY":
                RM.set_authorization_key(api_key=RM.apikey_new(expires_in=600)["secret"])
            keys_before = len(RM.whoami()["api_keys"])
            RM.system_info_monitor.enable()
            try:
                deadline = time.monotonic() + 30
                while True:
                    assert time.monotonic() < deadline, "no status from /api/info/ws"
                    try:
                        status = RM.system_info_monitor.next_msg(timeout=0.5)["msg"]["status"]
                        break
                    except RM.RequestTimeoutError:
                        continue
                assert status["manager_state"] in ("idle", "executing_queue", "paused")
                # With a token the monitor makes a short-lived key to connect, then deletes it.
                assert len(RM.whoami()["api_keys"]) == keys_before
            finally:
                RM.system_info_monitor.disable_wait(timeout=10)

        with_client(library, gateway.url, test)


async def async_monitor(url: str, option: str) -> None:
    RM = AsyncREManagerAPI(http_server_uri=url, http_auth_provider="/toy/token")
    try:
        await RM.login("bob", password="bob_password")
        if option == "APIKEY":
            RM.set_authorization_key(api_key=(await RM.apikey_new(expires_in=600))["secret"])
        keys_before = len((await RM.whoami())["api_keys"])
        RM.system_info_monitor.enable()
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "no status from /api/info/ws"
            try:
                msg = await RM.system_info_monitor.next_msg(timeout=0.5)
                break
            except RM.RequestTimeoutError:
                continue
        assert msg["msg"]["status"]["manager_state"] in ("idle", "executing_queue", "paused")
        assert len((await RM.whoami())["api_keys"]) == keys_before
    finally:
        await RM.system_info_monitor.disable_wait(timeout=10)
        await RM.close()


async def test_a_socket_stays_open_when_its_key_is_deleted_right_after_the_handshake(
    gateway: Gateway, library: str
) -> None:
    """The reference's monitor deletes its short-lived key as soon as the socket is open:
    the key must have been checked by then (a check after the handshake once lost the race,
    closed the socket with 4001, and the client looped making keys)."""
    if library == "ASYNC":
        pytest.skip("one run is enough: the client library plays no part")
    base = {"base_url": gateway.url, "timeout": 30}
    async with httpx.AsyncClient(**base) as http:
        r = await http.post("/api/auth/provider/toy/token", data=BOB)
        assert r.status_code == 200, r.text
        token = {"Authorization": f"Bearer {r.json()['access_token']}"}
        url = gateway.url.replace("http://", "ws://") + "/api/info/ws"
        for _ in range(10):
            r = await http.post("/api/auth/apikey", json={"expires_in": 60}, headers=token)
            assert r.status_code == 200, r.text
            key = r.json()
            async with connect(
                url, additional_headers={"Authorization": f"ApiKey {key['secret']}"}
            ) as ws:
                r = await http.delete(
                    "/api/auth/apikey", params={"first_eight": key["first_eight"]}, headers=token
                )
                assert r.status_code == 200, r.text
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert msg["msg"]["status"]["manager_state"] in (
                    "idle",
                    "executing_queue",
                    "paused",
                )

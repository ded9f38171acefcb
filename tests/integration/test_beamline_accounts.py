"""Two beamlines in two NATS accounts on one server: even with the same prefix, neither sees
the other's queue, and a user of one cannot log in to the other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest

from qserver.client import AccessDenied, Client
from qserver.connect import NatsAuth
from services.stack.nats_permissions import Beamline, render_beamlines
from services.stack.natsserver import NatsServer
from tests.conftest import USER, plan, unique_prefix
from tests.integration.nats_roles_support import RoleServices, new_passwords

PREFIX = unique_prefix()  # the same for both: the accounts keep them apart
ACCOUNTS = {"A": new_passwords(PREFIX), "B": new_passwords(PREFIX)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    d = tmp_path_factory.mktemp("accounts")
    beamlines = [
        Beamline(
            account=account,
            prefix=PREFIX,
            passwords={role: json.dumps(pw) for role, pw in passwords.items()},
            user_suffix=f"-{account.lower()}",
        )
        for account, passwords in ACCOUNTS.items()
    ]
    conf = d / "accounts.conf"
    conf.write_text(render_beamlines(beamlines))
    s = NatsServer(d, config_file=conf).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
async def beamlines(
    server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, RoleServices]]:
    started: dict[str, RoleServices] = {}
    try:
        for account, passwords in ACCOUNTS.items():
            svc = RoleServices(server, tmp_path_factory.mktemp(account), prefix=PREFIX)
            svc.passwords, svc.user_suffix = passwords, f"-{account.lower()}"
            svc.start("queue", "history")
            started[account] = svc
        for svc in started.values():
            await svc.wait_ready()
        yield started
    finally:
        for svc in started.values():
            svc.stop_all()


async def test_same_prefix_in_two_accounts_does_not_mix(
    beamlines: dict[str, RoleServices],
) -> None:
    a = await beamlines["A"].connect_as("operator")
    b = await beamlines["B"].connect_as("operator")
    try:
        r = await a.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
        assert r["success"], r
        assert r["item"]["item_uid"] in [
            i["item_uid"] for i in (await a.request("queue_get"))["items"]
        ]
        assert (await b.request("queue_get"))["items"] == []
        assert (await b.request("status"))["items_in_queue"] == 0
    finally:
        await a.close()
        await b.close()


async def test_a_user_of_one_account_is_unknown_to_the_other(
    beamlines: dict[str, RoleServices], server: NatsServer
) -> None:
    wrong = NatsAuth(user="operator-b", password=ACCOUNTS["A"]["operator"])
    with pytest.raises(AccessDenied, match="user 'operator-b'"):
        await Client.connect(server.url, PREFIX, auth=wrong)

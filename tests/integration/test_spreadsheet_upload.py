"""Spreadsheet upload (`POST /api/queue/upload/spreadsheet`, `qserver queue upload`) and
`GET /api/test/server/sleep`, against the real services behind the gateway."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
import yaml
from bluesky_queueserver_api.http.aio import REManagerAPI as AsyncREManagerAPI

from qserver.spreadsheet import MAX_FILE_BYTES
from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for, wait_status

KEY = "SpreadsheetKey123"
OBSERVER = "ObserverKey123"
STATUS_ONLY = "StatusOnlyKey123"
SINGLE_USER = "UNAUTHENTICATED_SINGLE_USER"
UPLOAD = "/api/queue/upload/spreadsheet"
HEADER = ["plan_name", "args", "num", "delay"]


@pytest.fixture(scope="module")
async def gateway(
    module_services: Services, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    config = tmp_path_factory.mktemp("gateway") / "gateway.yml"
    keys = [
        {"key": KEY, "user": "alice", "roles": ["user"]},
        {"key": OBSERVER, "user": "olga", "roles": ["observer"]},
        {"key": STATUS_ONLY, "user": "sam", "scopes": ["read:status"]},
    ]
    config.write_text(yaml.safe_dump({"api_keys": keys}))
    async with gateway_for(module_services, "--http-config", str(config)) as gw:
        yield gw


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"ApiKey {KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=60) as client:
        r = await client.post("/api/queue/clear")
        assert r.json()["success"], r.text
        yield client


def xlsx(rows: list[list[Any]]) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def csv_bytes(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in rows:
        writer.writerow(["" if c is None else c for c in row])
    return out.getvalue().encode()


async def upload(http: httpx.AsyncClient, data: bytes, name: str, **fields: str) -> httpx.Response:
    return await http.post(UPLOAD, files={"spreadsheet": (name, data)}, data=fields)


async def queue_items(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    reply = (await http.get("/api/queue/get")).json()
    assert reply["success"], reply
    items: list[dict[str, Any]] = reply["items"]
    return items


@pytest.mark.timeout(240)
async def test_an_uploaded_spreadsheet_goes_into_the_queue_and_runs(
    http: httpx.AsyncClient,
) -> None:
    rows = [HEADER, ["'count'", "['det1', 'det2']", 2, None], ["count", "['det1']", None, 0.1]]
    r = await upload(http, xlsx(rows), "plans.xlsx")
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["success"] is True and reply["msg"] == "", reply
    assert reply["results"] == [{"success": True, "msg": ""}] * 2
    expected = [
        ("count", [["det1", "det2"]], {"num": 2}),
        ("count", [["det1"]], {"delay": 0.1}),
    ]
    items = await queue_items(http)
    assert [(i["name"], i["args"], i["kwargs"]) for i in items] == expected
    assert [i["item_uid"] for i in items] == [i["item_uid"] for i in reply["items"]]
    # The gateway, not the file nor the client, says who added them.
    assert {(i["user"], i["user_group"]) for i in items} == {("alice", "primary")}

    assert (await http.post("/api/environment/open")).json()["success"]
    await wait_status(
        http, lambda s: s["worker_environment_exists"] and s["manager_state"] == "idle"
    )
    assert (await http.post("/api/queue/start")).json()["success"]
    await wait_status(http, lambda s: s["items_in_queue"] == 0 and s["manager_state"] == "idle")
    history = (await http.get("/api/history/get")).json()["items"]
    assert [h["item_uid"] for h in history[-2:]] == [i["item_uid"] for i in items]
    assert [h["result"]["exit_status"] for h in history[-2:]] == ["completed", "completed"]
    assert (await http.post("/api/environment/close")).json()["success"]
    await wait_status(http, lambda s: not s["worker_environment_exists"])


async def test_a_csv_file_and_data_type_are_taken(http: httpx.AsyncClient) -> None:
    rows = [HEADER, ["count", "['det1']", 3, None]]
    r = await upload(http, csv_bytes(rows), "plans.csv", data_type="anything")
    assert r.json()["success"] is True, r.text
    assert [(i["name"], i["kwargs"]) for i in await queue_items(http)] == [("count", {"num": 3})]


BAD_SPREADSHEETS = [
    pytest.param(
        # A value in a column whose header is missing.
        csv_bytes([HEADER, ["count", "['det1']", 2, None], ["count", "['det2']", 2, None, 7]]),
        "missing-header.csv",
        "row 3, column E: a value in a column that has no parameter name",
        id="missing column name",
    ),
    pytest.param(
        # No args column: `count` lacks its detectors (the plan's validation, by row).
        csv_bytes([["plan_name", "args", "num"], ["count", "['det1']", 1], ["count", "", 2]]),
        "missing-args.csv",
        "(nothing was added to the queue): row 3: ",
        id="missing column of a required argument",
    ),
    pytest.param(
        xlsx([HEADER, ["count", "['det1']", 1, None], ["no_such_plan", "['det1']", 1, None]]),
        "unknown.xlsx",
        "row 3: ",
        id="unknown plan",
    ),
    pytest.param(
        xlsx([HEADER, ["count", "['det1']", "'ten'", None], ["count", "['det1']", 1, None]]),
        "types.xlsx",
        "row 2: ",
        id="bad types",
    ),
    pytest.param(
        xlsx([HEADER, ["count", "['det1']", "ten", None]]),
        "unquoted.xlsx",
        "row 2, column C: 'ten' is not a Python literal",
        id="text that is no literal",
    ),
    pytest.param(b"", "empty.xlsx", "The spreadsheet 'empty.xlsx' is empty", id="empty file"),
    pytest.param(csv_bytes([HEADER]), "header.csv", "holds no plans", id="header only"),
    pytest.param(b"PK\x03\x04 junk", "broken.xlsx", "is not an Excel .xlsx workbook", id="junk"),
    pytest.param(csv_bytes([HEADER]), "plans.txt", "extension '.txt'", id="wrong extension"),
]


@pytest.mark.parametrize(("data", "name", "expected"), BAD_SPREADSHEETS)
async def test_a_bad_spreadsheet_adds_nothing_and_says_which_row_and_why(
    http: httpx.AsyncClient, data: bytes, name: str, expected: str
) -> None:
    first = await http.post(
        "/api/queue/item/add",
        json={"item": {"item_type": "plan", "name": "count", "args": [["det1"]]}},
    )
    assert first.json()["success"], first.text
    before = await queue_items(http)
    r = await upload(http, data, name)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["success"] is False, reply
    assert expected in reply["msg"], reply["msg"]
    assert await queue_items(http) == before  # all or nothing


async def test_refused_plans_are_named_by_row_with_the_services_reason(
    http: httpx.AsyncClient,
) -> None:
    rows = [HEADER, ["count", "['det1']", 1, None], ["no_such_plan", "", None, None]]
    rows += [["count", "['det1']", "'ten'", None]]
    reply = (await upload(http, xlsx(rows), "mixed.xlsx")).json()
    assert reply["success"] is False
    assert [r["success"] for r in reply["results"]] == [True, False, False]
    # The service's own reasons, each behind the row it concerns.
    for row, result in ((3, reply["results"][1]), (4, reply["results"][2])):
        assert f"row {row}: {result['msg']}" in reply["msg"], reply["msg"]
    assert "no_such_plan" in reply["results"][1]["msg"]
    assert "row 2:" not in reply["msg"]
    assert await queue_items(http) == []


async def test_an_oversize_upload_is_refused_before_it_is_read(http: httpx.AsyncClient) -> None:
    big = csv_bytes([HEADER]) + b"#" * (MAX_FILE_BYTES + 128 * 1024)
    r = await upload(http, big, "big.csv")
    assert r.status_code == 413, r.text
    assert "detail" in r.json()
    # Within the HTTP limit but more plans than one request may carry.
    rows = [HEADER] + [["count", "['det1', 'det2', 'det3', 'motor1', 'motor2']", 1, 0.5]] * 9000
    reply = (await upload(http, csv_bytes(rows), "many.csv")).json()
    assert reply["success"] is False and "split the spreadsheet" in reply["msg"], reply["msg"]
    assert reply["items"] == [] and reply["results"] == []
    assert await queue_items(http) == []


async def test_malformed_forms_and_missing_scopes_get_http_errors(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    r = await http.post(UPLOAD, json={"spreadsheet": "x"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]
    r = await http.post(UPLOAD, data={"data_type": "x"}, files={"other": ("a.csv", b"a")})
    assert r.status_code == 400 and "unknown form fields ['other']" in r.json()["detail"]
    r = await http.post(UPLOAD, files={"data_type": ("a.csv", b"x")})
    assert r.status_code == 400 and "one file in the field 'spreadsheet'" in r.json()["detail"]
    observer = {"Authorization": f"ApiKey {OBSERVER}"}
    r = await http.post(UPLOAD, files={"spreadsheet": ("a.csv", b"x")}, headers=observer)
    assert r.status_code == 401 and "write:queue:edit" in r.json()["detail"]  # as the reference
    r = await http.post(
        UPLOAD, files={"spreadsheet": ("a.csv", b"x")}, headers={"Authorization": ""}
    )
    assert r.status_code == 401
    assert await queue_items(http) == []


async def test_a_custom_module_converts_the_spreadsheets_it_takes(
    module_services: Services, http: httpx.AsyncClient
) -> None:
    env = {
        "QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY,
        "QSERVER_CUSTOM_MODULES": "no.such.module:tests.integration.spreadsheet_custom",
    }
    async with (
        gateway_for(module_services, env=env) as gw,
        httpx.AsyncClient(base_url=gw.url, headers=http.headers, timeout=60) as own,
    ):
        reply = (await upload(own, b"name,num\ncount,4\n", "custom.csv")).json()
        assert reply["success"] is True, reply
        assert reply["items"][0]["meta"] == {"by": SINGLE_USER}
        assert reply["items"][0]["kwargs"] == {"num": 4}
        reply = (await upload(own, b"name,num\n", "x.csv", data_type="unsupported")).json()
        assert reply == {
            "success": False,
            "msg": "Unsupported data type: 'unsupported'",
            "items": [],
            "results": [],
        }
        rows = csv_bytes([HEADER, ["count", "['det2']", 5, None]])
        reply = (await upload(own, rows, "d.csv", data_type="process_with_default_function")).json()
        assert reply["success"] is True and reply["items"][0]["args"] == [["det2"]], reply
        assert "cannot be imported" in gw.log() and "no.such.module" in gw.log()
    assert [i["kwargs"]["num"] for i in await queue_items(http)] == [4, 5]


async def run_cli(services: Services, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qserver.cli", "-a", services.nats.url, "--prefix", services.prefix,
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_qserver_queue_upload_adds_all_or_names_the_rows(
    module_services: Services, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    good = tmp_path / "good.xlsx"
    good.write_bytes(xlsx([HEADER, ["count", "['det1']", 2, None], ["count", "['det2']", 3, None]]))
    rc, out = await run_cli(module_services, "queue", "upload", str(good))
    assert rc == 0, out
    rc, out = await run_cli(module_services, "queue", "upload", str(good), "front")
    assert rc == 0, out
    assert [i["kwargs"]["num"] for i in await queue_items(http)] == [2, 3, 2, 3]
    assert {i["user"] for i in await queue_items(http)} == {"qserver-cli"}

    unreadable = tmp_path / "bad.csv"
    unreadable.write_bytes(csv_bytes([HEADER, ["count", "['det1']", "two", None]]))
    rc, out = await run_cli(module_services, "queue", "upload", str(unreadable))
    assert rc == 1, out
    assert "row 2, column C: 'two' is not a Python literal" in out
    refused = tmp_path / "refused.csv"
    refused.write_bytes(csv_bytes([HEADER, ["count", "['det1']", 1, None], ["nope", "", 1, None]]))
    rc, out = await run_cli(module_services, "queue", "upload", str(refused))
    assert rc == 2, out
    assert "row 3: " in out and "nope" in out
    assert len(await queue_items(http)) == 4


async def test_the_test_sleep_route_answers_after_the_time_asked(gateway: Gateway) -> None:
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"ApiKey {KEY}"}, timeout=60
    ) as http:
        t0 = time.monotonic()
        r = await http.request("GET", "/api/test/server/sleep", json={"time": 1.5})
        assert r.json() == {"success": True, "msg": ""}
        assert time.monotonic() - t0 >= 1.5
        r = await http.request("GET", "/api/test/server/sleep", json={})
        assert r.status_code == 400 and "missing required field `time`" in r.json()["detail"]
        for bad in ({"time": "x"}, {"time": 601}, {"time": 1, "extra": 1}):
            r = await http.request("GET", "/api/test/server/sleep", json=bad)
            assert r.status_code == 400, (bad, r.text)
        other = {"Authorization": f"ApiKey {STATUS_ONLY}"}
        r = await http.request("GET", "/api/test/server/sleep", json={"time": 0}, headers=other)
        assert r.status_code == 401 and "read:testing" in r.json()["detail"]  # as the reference

    # The reference client's own use of it: its timeouts fire, a short sleep answers.
    RM = AsyncREManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=KEY)
    try:
        route = ("GET", "/api/test/server/sleep")
        assert (await RM.send_request(method=route, params={"time": 1}))["success"] is True
        with pytest.raises(RM.RequestTimeoutError):
            await RM.send_request(method=route, params={"time": 3}, timeout=1)
    finally:
        await RM.close()

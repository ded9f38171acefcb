"""`--log-format json` / QSERVER_LOG_FORMAT=json: every service line is one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from services.stack.natsserver import NatsServer
from tests.conftest import Services, running_services
from tests.integration.gateway_support import gateway_for


async def test_services_write_one_json_object_per_line(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_services(
        nats_server, tmp_path, extra={"history": ["--log-format", "json"]},
        env={"QSERVER_LOG_FORMAT": "json"},
    ) as svc:  # fmt: skip
        names = list(svc.procs)
    for name in names:
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert lines, name
        records = [json.loads(line) for line in lines]  # fails on any non-JSON line
        for rec in records:
            assert {"time", "level", "logger", "message"} <= set(rec), rec
        ready = [r for r in records if "ready on" in r["message"]]
        assert ready and ready[0]["logger"] == f"services.{name}", records
        assert ready[0]["level"] == "INFO"


async def test_gateway_logs_json_too(services: Services) -> None:
    async with (
        gateway_for(services, "--no-auth", env={"QSERVER_LOG_FORMAT": "json"}) as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        assert (await http.get("/api/status")).status_code == 200
    lines = gw.proc.log_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "services.gateway" for r in records), records
    assert {"time", "level", "logger", "message"} <= set(records[-1])

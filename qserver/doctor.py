"""`qserver doctor`: check NATS, the services, the environment, Kafka and the catalog.

Each check says in plain words what it found; one that fails says what to look at.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

from qserver.client import AccessDenied, Client, NoAnswer
from qserver.connect import NatsAuth, NatsConfigError

# The nats.micro services (`add_service(name=...)`); the gateway is checked over HTTP.
MICRO_SERVICES = ("queue", "history", "worker")
PING_WAIT = 0.5  # seconds to collect the answers of every instance
Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True, kw_only=True)
class DoctorConfig:
    nats_url: str
    prefix: str
    auth: NatsAuth
    kafka_bootstrap: str | None = None
    kafka_topic: str | None = None
    tiled_url: str | None = None
    http_url: str | None = None
    timeout: float = 3.0


async def run_checks(cfg: DoctorConfig) -> list[Check]:
    """Every check, in order; services are skipped when NATS cannot be reached."""
    checks: list[Check] = []
    try:
        client = await Client.connect(cfg.nats_url, cfg.prefix, timeout=cfg.timeout, auth=cfg.auth)
    except (NoAnswer, AccessDenied, NatsConfigError) as e:
        checks.append(Check("NATS", "fail", str(e)))
        checks.append(Check("services", "skip", "not checked: NATS cannot be reached"))
    else:
        try:
            checks.append(check_connection(client, cfg))
            checks.append(await check_jetstream(client))
            for name in MICRO_SERVICES:
                checks.append(await check_service(client, name))
            checks.append(await check_environment(client))
        finally:
            await client.close()
    checks.append(await asyncio.to_thread(check_kafka, cfg))
    checks.append(await asyncio.to_thread(check_http, "catalog (Tiled)", cfg.tiled_url, "/healthz"))
    checks.append(await asyncio.to_thread(check_http, "HTTP gateway", cfg.http_url, "/docs"))
    return checks


def check_connection(client: Client, cfg: DoctorConfig) -> Check:
    nc = client.nc
    known = len(nc.servers)  # given and discovered: the cluster's nodes
    cluster = f"{known} servers known" if known > 1 else "a single server"
    return Check(
        "NATS",
        "ok",
        f"connected to {nc.connected_url.netloc if nc.connected_url else cfg.nats_url} as "
        f"{client.auth.method}, nats-server {nc.connected_server_version}, {cluster}",
    )


async def check_jetstream(client: Client) -> Check:
    try:
        msg = await client._request_watched("$JS.API.INFO", b"", client.timeout)
    except AccessDenied:
        return Check(
            "JetStream",
            "skip",
            f"not visible to {client.auth.method}: client users have no JetStream API; the "
            "services' checks below show whether it works for them",
        )
    except Exception as e:
        return Check("JetStream", "fail", f"no answer from the JetStream API ({e!r}): is it on?")
    info = json.loads(msg.data)
    if "error" in info:
        return Check("JetStream", "fail", f"not available: {info['error'].get('description')}")
    return Check("JetStream", "ok", f"enabled, {info.get('streams', 0)} streams in this account")


async def ping(client: Client, service: str, wait: float = PING_WAIT) -> list[dict[str, Any]]:
    """The `$SRV.PING` answers of every instance of `service` on this prefix."""
    nc = client.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    answers: list[dict[str, Any]] = []
    try:
        await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
        deadline = asyncio.get_running_loop().time() + wait
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # the timeout of next_msg: no more answers
                break
            if not msg.data:  # the server's "no responders" status: nobody is there
                break
            try:
                answer = json.loads(msg.data)
            except ValueError:
                continue
            if (answer.get("metadata") or {}).get("prefix") == client.subjects.prefix:
                answers.append(answer)
    finally:
        await sub.unsubscribe()
    return answers


async def check_service(client: Client, name: str) -> Check:
    service = f"qserver-{name}"
    answers = await ping(client, service)
    label = f"{name} service"
    if not answers:
        return Check(
            label,
            "fail",
            f"not running: no instance of {service} with prefix '{client.subjects.prefix}' "
            "answers $SRV.PING (start it, or check its log and its NATS credentials)",
        )
    ids = ", ".join(a.get("id", "?")[:8] for a in answers)
    version = answers[0].get("version", "?")
    count = f"{len(answers)} instances" if len(answers) > 1 else "1 instance"
    return Check(label, "ok", f"{count} ({ids}), version {version}")


async def check_environment(client: Client) -> Check:
    try:
        st = await client.request("status")
    except (NoAnswer, AccessDenied) as e:
        return Check("worker environment", "skip", f"no status: {e}")
    state = st.get("worker_environment_state")
    if not st.get("worker_environment_exists"):
        return Check("worker environment", "ok", "closed (open it with `qserver environment open`)")
    if state in ("failed", "error"):
        return Check("worker environment", "fail", f"in state '{state}': see the worker's log")
    detail = f"open, state '{state}', RunEngine '{st.get('re_state')}'"
    lost = [
        f"{st[key]} documents {what}"
        for key, what in (
            ("docs_failed", "could not be kept for the catalog and Kafka"),
            ("kafka_failed", "could not be delivered to Kafka"),
        )
        if st.get(key)
    ]
    if lost:
        return Check("worker environment", "warn", f"{detail}; {'; '.join(lost)}")
    return Check("worker environment", "ok", detail)


def check_kafka(cfg: DoctorConfig) -> Check:
    if not cfg.kafka_bootstrap:
        return Check("Kafka", "skip", "not configured (QSERVER_KAFKA_BOOTSTRAP, --kafka-bootstrap)")
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cfg.kafka_bootstrap, "log_level": 0})
    try:
        topics = admin.list_topics(timeout=cfg.timeout).topics
    except Exception as e:
        return Check("Kafka", "fail", f"no broker answers at {cfg.kafka_bootstrap} ({e})")
    if cfg.kafka_topic and cfg.kafka_topic not in topics:
        return Check(
            "Kafka",
            "fail",
            f"broker at {cfg.kafka_bootstrap} answers, but the topic '{cfg.kafka_topic}' does "
            "not exist (create it with one partition)",
        )
    return Check("Kafka", "ok", f"broker at {cfg.kafka_bootstrap}, topic '{cfg.kafka_topic}'")


def check_http(label: str, base: str | None, path: str, timeout: float = 3.0) -> Check:
    if not base:
        return Check(label, "skip", "not configured")
    url = base.rstrip("/") + path
    # No proxy: these servers are on the facility network, a proxy would answer for them.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return Check(label, "ok", f"{url} answers {r.status}")
    except urllib.error.HTTPError as e:
        return Check(label, "fail", f"{url} answers {e.code} {e.reason}")
    except OSError as e:
        reason = getattr(e, "reason", None) or e
        return Check(label, "fail", f"{url} does not answer ({reason})")


MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def report(checks: list[Check]) -> str:
    lines = [f"{MARKS[c.status]}  {c.name}: {c.detail}" for c in checks]
    failed = [c.name for c in checks if c.status == "fail"]
    lines.append(f"{len(failed)} problem(s): {', '.join(failed)}" if failed else "all good")
    return "\n".join(lines)


def healthy(checks: list[Check]) -> bool:
    return not any(c.status == "fail" for c in checks)

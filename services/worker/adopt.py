"""Finding the environment that a previous worker service left behind (ADR 12).

The record names it; on this host its process can be checked. It is asked over NATS
(`env.attach`) to be supervised by this worker: it accepts unless a living worker
supervises it. An environment on another host is only watched until it ends: this worker
can neither see nor kill its process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import EnvState
from services.runtime.service_base import encode
from services.worker.messages import AttachReply, AttachRequest, EnvRecord, EnvStatus
from services.worker.pids import is_env_process, on_this_host
from services.worker.results import report_death

logger = logging.getLogger(__name__)

ATTACH_TIMEOUT_S = 1.0
# A living environment here that has not answered for this long is hung: it is killed.
ANSWER_WAIT_S = 10.0
_reply_decoder = msgspec.json.Decoder(AttachReply)


@dataclass(frozen=True)
class Attached:
    """It accepted this worker as its supervisor."""

    state: EnvStatus
    previous: str  # its supervisor before


@dataclass(frozen=True)
class Busy:
    """It lives but this worker cannot supervise it (yet)."""

    why: str


@dataclass(frozen=True)
class Gone:
    """It does not answer; `alive`: its process still lives here (hung)."""

    alive: bool


async def find_env(
    nc: NATS, subjects: Subjects, rec: EnvRecord, worker: str
) -> Attached | Busy | Gone:
    local = on_this_host(rec.host)
    request = AttachRequest(env_uid=rec.env_uid, worker=worker, probe=not local)
    deadline = time.monotonic() + ANSWER_WAIT_S
    while True:
        # Pid 0: the worker died between recording the environment and starting it.
        if local and rec.pid and not is_env_process(rec.pid, rec.env_uid):
            return Gone(alive=False)
        try:
            msg = await nc.request(
                subjects.env_cmd("attach"), encode(request), timeout=ATTACH_TIMEOUT_S
            )
            reply = _reply_decoder.decode(msg.data)
        except (NatsError, TimeoutError, msgspec.DecodeError) as e:
            # Not subscribed yet (starting), reconnecting to NATS, or gone.
            if time.monotonic() >= deadline:
                logger.warning("environment %s does not answer (%r)", rec.env_uid, e)
                return Gone(alive=local and bool(rec.pid) and is_env_process(rec.pid, rec.env_uid))
            await asyncio.sleep(0.2)
            continue
        if not local:
            return Busy(
                f"environment {rec.env_uid} runs on host {rec.host}, "
                "where this worker can neither watch nor kill it"
            )
        if reply.success and reply.state is not None:
            return Attached(state=reply.state, previous=reply.previous)
        return Busy(reply.msg or f"environment {rec.env_uid} refused this worker")


async def fail_lost_item(js: JetStreamContext, subjects: Subjects, rec: EnvRecord) -> None:
    """Write the `failed` result of the item that a lost environment ran, if it ran one."""
    if not rec.running_item_uid:
        return
    last = EnvState(
        env_uid=rec.env_uid,
        pid=rec.pid,
        env_state="executing_plan",
        re_state=rec.re_state,
        running_item_uid=rec.running_item_uid,
        run_list=rec.run_list,
    )
    await report_death(
        js,
        subjects,
        rec.env_uid,
        last,
        "The environment process was lost with the worker service",
        rec.time_start or None,
    )

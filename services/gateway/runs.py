"""`GET /api/runs/{uid}/documents`: one run's documents from the document stream (ADR 10).

The web page plots a finished run from its history row with it (ADR 26): the stream keeps
every run's documents for `documents.max_age_days`, in order, so no catalog is needed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.handlers import BaseRouteHandler

from qserver.client import Client
from qserver.errors import NotFound
from services.gateway.errors import Unavailable

# A run larger than this is cut (the page plots, it does not archive): `truncated` says so.
MAX_DOCS = 20_000
READ_TIMEOUT_S = 20.0
SCOPE = "read:history"


def _plain(obj: Any) -> Any:
    """numpy arrays and scalars in documents (msgpack-numpy) as JSON lists and numbers."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_plain)


async def run_documents(client: Client, run_uid: str) -> dict[str, Any]:
    """`{run_uid, documents: [{name, doc}], truncated}`; NotFound for a run not kept."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import DeliverPolicy
    from nats.js.errors import NotFoundError

    from qserver.documents import Reassembler, decode, run_token

    js = client.nc.jetstream()
    s = client.subjects
    subject = s.run_docs(run_token(run_uid))
    try:
        last = await js.get_last_msg(s.docs_stream, subject)
        sub = await js.subscribe(
            subject, stream=s.docs_stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
    except NotFoundError:
        raise NotFound(f"No documents of run '{run_uid[:100]}' are kept") from None
    except (TimeoutError, NatsTimeout):
        # NATS answers nothing to a request this user may not send (the permissions of ADR
        # 25 let the gateway read the document stream), nor while JetStream is away.
        raise Unavailable(
            f"The document stream {s.docs_stream} did not answer the gateway "
            "(down, or not readable with the gateway's NATS permissions)"
        ) from None
    last_seq = last.seq or 0
    joiner, docs, truncated = Reassembler(), [], False
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async for msg in sub.messages:
                seq = msg.metadata.sequence.stream
                whole = joiner.add(seq, msg.subject, msg.headers, msg.data)
                if whole is not None:
                    name, doc = decode(whole.value)
                    docs.append({"name": name, "doc": doc})
                if len(docs) >= MAX_DOCS and seq < last_seq:
                    truncated = True
                    break
                if seq >= last_seq:
                    break
    except TimeoutError:
        raise Unavailable(
            f"The documents of run '{run_uid[:100]}' did not all come within {READ_TIMEOUT_S:.0f} s"
        ) from None
    finally:
        await sub.unsubscribe()
    return {"run_uid": run_uid, "documents": docs, "truncated": truncated}


def runs_handlers(gw: Any) -> list[BaseRouteHandler]:
    """`gw` is the app's `Gateway` (principal, bridge)."""

    @get("/api/runs/{uid:str}/documents", status_code=200)
    async def documents(request: Request[Any, Any, Any], uid: str) -> Response[bytes]:
        await gw.principal(request, SCOPE)
        body = await run_documents(gw.bridge.connected(), uid)
        return Response(_encoder.encode(body), media_type="application/json")

    return [documents]

"""Routes of bluesky-httpserver that the gateway serves itself: spreadsheet upload, test sleep.

`POST /api/queue/upload/spreadsheet` reads the plans of an uploaded spreadsheet here (with
a beamline's own conversion from `QSERVER_CUSTOM_MODULES` if one takes it, else the default
format of `qserver.spreadsheet`) and adds them with one `queue_item_add_batch`: all of them
or none. `GET /api/test/server/sleep` answers after `time` seconds (clients test their
timeouts with it).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException
from litestar.handlers import BaseRouteHandler

from qserver.errors import BadRequest
from qserver.protocol.api import MAX_REQUEST_BYTES
from qserver.protocol.http import ServerSleep
from qserver.spreadsheet import (
    MAX_FILE_BYTES,
    SpreadsheetError,
    explain_batch,
    items_of,
    read_plans,
)
from services.gateway.bodies import decode_body

logger = logging.getLogger(__name__)

UPLOAD_PATH = "/api/queue/upload/spreadsheet"
UPLOAD_SCOPE = "write:queue:edit"
SLEEP_PATH = "/api/test/server/sleep"
SLEEP_SCOPE = "read:testing"
CUSTOM_MODULES_ENV = "QSERVER_CUSTOM_MODULES"  # bluesky-httpserver's name
FORM_FIELDS = ("spreadsheet", "data_type")
# The form around the file: boundaries, headers, `data_type`.
FORM_OVERHEAD = 64 * 1024
_encoder = msgspec.json.Encoder()


def custom_modules(names: str | None = None) -> list[ModuleType]:
    """The modules of `QSERVER_CUSTOM_MODULES` (`a:b` or `a,b`); one that cannot be imported
    is logged and left out, as bluesky-httpserver does."""
    text = os.environ.get(CUSTOM_MODULES_ENV, "") if names is None else names
    modules = []
    for name in filter(None, (n.strip() for n in re.split("[:,]", text))):
        try:
            modules.append(importlib.import_module(name.replace("-", "_")))
            logger.info("custom module '%s' imported", name)
        except Exception as e:
            logger.error("custom module '%s' cannot be imported: %r", name, e)
    return modules


def convert(
    data: bytes,
    file_name: str,
    data_type: str | None,
    user: str,
    modules: Sequence[ModuleType],
) -> tuple[list[dict[str, Any]], list[int] | None]:
    """The items of the spreadsheet and the row of each (None from a custom conversion).

    The first module with a `spreadsheet_to_plan_list` converts it; if it returns None
    (not its kind of file), the default format is read.
    """
    for module in modules:
        func = getattr(module, "spreadsheet_to_plan_list", None)
        if func is None:
            continue
        logger.info("spreadsheet '%s': converted by %s", file_name, module.__name__)
        values = func(
            spreadsheet_file=io.BytesIO(data), file_name=file_name, data_type=data_type, user=user
        )
        if values is not None:
            return list(items_of(values)), None
        break
    plans = read_plans(data, file_name)
    return plans.items, plans.rows


async def read_form(request: Request[Any, Any, Any]) -> tuple[UploadFile, str | None]:
    """The uploaded file and `data_type`; BadRequest names what is wrong with the form."""
    content_type, _ = request.content_type
    if content_type != "multipart/form-data":
        raise BadRequest(
            f"Invalid request to '{UPLOAD_PATH}': send the spreadsheet as multipart/form-data "
            f"in the field 'spreadsheet' (not {content_type or 'no content type'})"
        )
    try:
        form = await request.form()
    except ClientException as e:
        if e.status_code == 413:
            raise
        raise BadRequest(f"Invalid request to '{UPLOAD_PATH}': {e.detail}") from None
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise BadRequest(
            f"Invalid request to '{UPLOAD_PATH}': unknown form fields {unknown} "
            f"(it takes {list(FORM_FIELDS)})"
        )
    files = form.getall("spreadsheet") if "spreadsheet" in form else []
    if len(files) != 1 or not isinstance(files[0], UploadFile):
        raise BadRequest(
            f"Invalid request to '{UPLOAD_PATH}': the form must carry one file in the field "
            "'spreadsheet'"
        )
    data_type = form.get("data_type")
    if data_type is not None and not isinstance(data_type, str):
        raise BadRequest(f"Invalid request to '{UPLOAD_PATH}': 'data_type' must be text")
    return files[0], data_type


def refused(msg: str) -> Response[bytes]:
    """bluesky-httpserver's answer to a spreadsheet it could not turn into items."""
    body = {"success": False, "msg": msg, "items": [], "results": []}
    return Response(_encoder.encode(body), media_type="application/json")


ReadBody = Callable[[Request[Any, Any, Any]], Awaitable[bytes]]


def upload_handlers(
    gw: Any, modules: Sequence[ModuleType], read_body: ReadBody
) -> list[BaseRouteHandler]:
    """The upload and sleep routes; `gw` is the app's `Gateway` (principal, bridge)."""

    @post(UPLOAD_PATH, status_code=200, request_max_body_size=MAX_FILE_BYTES + FORM_OVERHEAD)
    async def upload_spreadsheet(request: Request[Any, Any, Any]) -> Response[bytes]:
        principal = await gw.principal(request, UPLOAD_SCOPE)
        upload, data_type = await read_form(request)
        data = await upload.read()
        await upload.close()
        name = upload.filename or ""
        logger.info("spreadsheet '%s' (%d bytes) uploaded by %s", name, len(data), principal.name)
        try:
            items, rows = await asyncio.to_thread(
                convert, data, name, data_type, principal.name, modules
            )
        except Exception as e:  # a custom conversion may raise anything: its words go back
            if not isinstance(e, SpreadsheetError):
                logger.info("spreadsheet '%s' refused by the conversion: %r", name, e)
            return refused(str(e))
        params = {"items": items, "user": principal.name, "user_group": principal.user_group}
        body = _encoder.encode(params)
        if len(body) > MAX_REQUEST_BYTES:
            return refused(
                f"The {len(items)} plans of '{name}' make a request of {len(body)} bytes, more "
                f"than the {MAX_REQUEST_BYTES} one request may carry: split the spreadsheet"
            )
        reply = msgspec.json.decode(await gw.bridge.request("queue_item_add_batch", body))
        if isinstance(reply, dict):
            reply = explain_batch(reply, rows)
        return Response(_encoder.encode(reply), media_type="application/json")

    @get(SLEEP_PATH, status_code=200)
    async def server_sleep(request: Request[Any, Any, Any]) -> Response[bytes]:
        await gw.principal(request, SLEEP_SCOPE)
        body = decode_body(await read_body(request), ServerSleep, SLEEP_PATH)
        await asyncio.sleep(max(0.0, body.time))
        return Response(b'{"success":true,"msg":""}', media_type="application/json")

    return [upload_spreadsheet, server_sleep]


def upload_operation(op_id: str, error_responses: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI operation of the upload route (a multipart form, not a JSON body)."""
    return {
        "summary": "Add the plans of a spreadsheet (.xlsx, .xls, .csv): all of them or none",
        "operationId": op_id,
        "description": f"Needs scope `{UPLOAD_SCOPE}`. Row 1 names the columns: plan name, "
        "args, then one keyword argument each; every further row is a plan (docs/http.md).",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "spreadsheet": {"type": "string", "format": "binary"},
                            # A form field is text whatever it looks like: no type that a
                            # client could be told it broke.
                            "data_type": {"description": "passed to custom conversions"},
                        },
                        "required": ["spreadsheet"],
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "The reply of `queue_item_add_batch` (`success`, `msg` naming "
                "the row of each refused plan, `items`, `results`, `qsize`), or `success: false` "
                "with `items: []` when the spreadsheet cannot be read",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **error_responses,
        },
    }

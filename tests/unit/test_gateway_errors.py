"""A bug in a gateway handler is a 500 whose traceback is in the log, not a silent 500."""

from __future__ import annotations

import logging

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from services.gateway.accesslog import log_refusals
from services.gateway.app import on_internal_error


@get("/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("a bug")


def test_an_unexpected_error_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    app = Litestar(
        route_handlers=[boom],
        exception_handlers={500: on_internal_error},
        middleware=[log_refusals],
        logging_config=None,
    )
    with caplog.at_level(logging.INFO), TestClient(app) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal error in the gateway (RuntimeError); see its log"}
    failed = [rec for rec in caplog.records if rec.getMessage() == "GET '/boom' failed"]
    assert failed and failed[0].exc_info and "a bug" in str(failed[0].exc_info[1])
    assert any(
        "GET '/boom' from" in rec.getMessage() and " 500 " in rec.getMessage()
        for rec in caplog.records
    )

"""Which JetStream errors a starting service waits out, and which it reports (ADR 9)."""

from __future__ import annotations

import logging

import nats.errors
import pytest
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, ServiceUnavailableError

from qserver.jsutil import patiently, transient


@pytest.mark.parametrize(
    "error",
    [
        nats.errors.TimeoutError(),
        TimeoutError(),
        nats.errors.NoRespondersError(),
        NoStreamResponseError(),
        ServiceUnavailableError(code=503),
        ServiceUnavailableError(),  # as a pull request's 503 status raises it: no code
        APIError(code=500, err_code=10008, description="JetStream system temporarily unavailable"),
        APIError(code=500, err_code=10023, description="insufficient resources"),
        ConnectionRefusedError(),
    ],
)
def test_not_ready_yet_is_waited_out(error: Exception) -> None:
    assert transient(error)


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError(code=400, err_code=10058, description="stream name already in use"),
        nats.errors.ConnectionClosedError(),
        ValueError("a bug"),
    ],
)
def test_a_wrong_request_is_not(error: Exception) -> None:
    assert not transient(error)


async def test_patiently_retries_until_it_works_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = [NoStreamResponseError(), nats.errors.TimeoutError()]

    async def op() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    with caplog.at_level(logging.INFO, logger="qserver.jsutil"):
        assert await patiently("creating the stream S", op) == "ok"
    text = caplog.text
    assert "waiting for JetStream: creating the stream S failed" in text
    assert "creating the stream S: done after waiting" in text


async def test_patiently_raises_what_waiting_cannot_fix() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise BadRequestError(code=400, err_code=10058, description="stream name already in use")

    with pytest.raises(BadRequestError):
        await patiently("creating the stream S", op)
    assert calls == 1

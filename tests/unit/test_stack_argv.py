"""`qserver stack up` becomes `python -m services.stack.embedded`: its options survive the trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.stack.embedded import parser, stack_argv

DEFAULTS: dict[str, Any] = {
    "data_dir": None,
    "nats_port": 4222,
    "http_port": 60610,
    "nats_url": None,
    "prefix": "qs.default",
    "kafka": True,
    "kafka_port": 0,
    "kafka_max_mib": 1024,
    "http_auth": True,
    "catalog": True,
    "tiled_port": 0,
    "http_config": None,
    "ipython_kernel": None,
    "zmq": True,
    "zmq_port": 60615,
    "zmq_info_port": 60625,
}


@pytest.mark.parametrize(
    "changed",
    [
        {},
        {"data_dir": Path("/tmp/some dir"), "nats_port": 5000, "http_port": 6000},
        {"nats_url": "nats://a:1,nats://b:2", "prefix": "qs.beamline-2"},
        {"kafka": False, "kafka_port": 9, "catalog": False, "tiled_port": 7},
        {"kafka_max_mib": 0},
        {"kafka_max_mib": 64},
        {"http_auth": False, "zmq": False, "zmq_port": 5, "zmq_info_port": 6},
        {"http_config": Path("/etc/qserver/http.yml"), "ipython_kernel": True},
        {"ipython_kernel": False},
    ],
)
def test_every_option_of_stack_up_reaches_the_supervisor_unchanged(changed: dict[str, Any]) -> None:
    options = DEFAULTS | changed
    parsed = vars(parser().parse_args(stack_argv(**options)))
    del parsed["config"]  # the configuration file travels in the environment
    assert parsed == options


def test_the_parser_and_stack_argv_know_the_same_options() -> None:
    # A new option of the stack that `stack_argv` forgot would be lost when the CLI execs.
    parsed = vars(parser().parse_args([]))
    del parsed["config"]
    assert parsed.keys() == DEFAULTS.keys()


def test_a_negative_bound_for_the_kafka_brokers_memory_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--kafka-max-mib", "-1"])
    assert "must be 0 (no bound) or more, not -1" in capsys.readouterr().err

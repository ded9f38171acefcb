"""The reference tests' harness (tests/reference): how it reads the manager options the
reference's tests pass, and its list of known failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "reference"
sys.path.insert(0, str(HERE))

from reftests_plugin import _load_expected, parse_manager_options  # noqa: E402
from reftests_stack import StackOptions, ZmqFlags, bind_address  # noqa: E402


def test_zmq_options_become_bridge_settings_when_0mq_mode_is_on() -> None:
    opts = parse_manager_options(
        [
            "--zmq-publish-console",
            "ON",
            "--zmq-control-addr=tcp://*:60616",
            "--zmq-info-addr=tcp://*:60617",
            "--zmq-encoding=msgpack",
            "--verbose",
        ],
        {"QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER": "secret"},
        zmq=True,
    )
    assert opts == StackOptions(
        zmq=True,
        zmq_control=("127.0.0.1", 60616),
        zmq_info=("127.0.0.1", 60617),
        zmq_encoding="msgpack",
        zmq_private_key="secret",
    )
    flags = ZmqFlags({"--zmq-port", "--zmq-info-port", "--no-zmq"})
    assert flags.args(opts, ("127.0.0.1", 60616), ("127.0.0.1", 60617)) == [
        "--zmq-port",
        "60616",
        "--zmq-info-port",
        "60617",
    ]
    assert flags.env(opts)["QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"] == "secret"


def test_without_0mq_mode_its_options_keep_the_same_stack() -> None:
    plain = parse_manager_options([], {}, zmq=False)
    with_console = parse_manager_options(["--zmq-publish-console", "ON"], {}, zmq=False)
    assert plain == with_console == StackOptions()
    assert ZmqFlags({"--no-zmq"}).args(plain, ("127.0.0.1", 1), ("127.0.0.1", 2)) == ["--no-zmq"]


def test_kernel_mode_and_permissions_are_mapped() -> None:
    opts = parse_manager_options(
        ["--use-ipython-kernel=ON", "--user-group-permissions", "/p.yaml"], {}, zmq=False
    )
    assert opts.ipython_kernel and opts.permissions_file == "/p.yaml"


def test_an_option_without_an_equivalent_fails_the_case_saying_so() -> None:
    with pytest.raises(ValueError, match="--startup-profile"):
        parse_manager_options(["--startup-profile", "collection"], {}, zmq=False)


def test_0mq_mode_says_when_the_stack_has_no_bridge() -> None:
    with pytest.raises(RuntimeError, match="no 0MQ bridge"):
        ZmqFlags(set()).args(StackOptions(zmq=True), ("127.0.0.1", 1), ("127.0.0.1", 2))


def test_bind_addresses_of_the_reference_are_loopback_ports() -> None:
    assert bind_address("tcp://*:60615") == ("127.0.0.1", 60615)
    assert bind_address("tcp://localhost:60625") == ("127.0.0.1", 60625)


def test_the_known_failures_file_parses_and_prunes(tmp_path: Path) -> None:
    expected = tmp_path / "expected.txt"
    expected.write_text(
        "# comment\n"
        "test_api.py::test_a[HTTP-THREADS] | tasks | script_upload missing\n"
        "test_api.py::test_b[ZMQ-ASYNC] | console | a text\n"
    )
    assert _load_expected(str(expected)) == {
        "test_api.py::test_a[HTTP-THREADS]": ("tasks", "script_upload missing"),
        "test_api.py::test_b[ZMQ-ASYNC]": ("console", "a text"),
    }
    report = tmp_path / "report.jsonl"
    report.write_text(
        json.dumps({"nodeid": "test_api.py::test_b[ZMQ-ASYNC]", "outcome": "xpassed"}) + "\n"
    )
    subprocess.run(
        [sys.executable, str(HERE / "prune_expected.py"), str(report), str(expected)],
        check=True,
        capture_output=True,
    )
    assert list(_load_expected(str(expected))) == ["test_api.py::test_a[HTTP-THREADS]"]


def test_the_shipped_known_failures_name_an_owner_and_a_cause() -> None:
    for nodeid, (owner, cause) in _load_expected(str(HERE / "expected-failures.txt")).items():
        assert "::" in nodeid and owner and cause, nodeid

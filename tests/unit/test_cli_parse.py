"""The CLI's argument parsing and the v0.0.1 name mapping, without a server."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import click
import pytest

from qserver import cli
from qserver.cli.errors import BadParams
from qserver.cli.output import format_lists, format_table, plan_signature
from qserver.cli.runner import latest_window, with_lock_key
from qserver.cli.words import (
    batch_items,
    make_item,
    normalize_legacy_argv,
    parse_batch_move,
    parse_dest,
    parse_history_clear,
    parse_manager_stop,
    parse_mode,
    parse_move,
)
from qserver.legacy import LegacyError, legacy_request, parse_legacy_value, pos_or_uid
from tests.conftest import packages_loaded
from tests.unit.test_stack_argv import DEFAULTS as STACK_DEFAULTS

PLAN = '{"name":"count", "args":[["det1", "det2"]]}'
USER = {"user": "qserver-cli", "user_group": "primary"}


def test_import_does_not_load_nats_or_msgspec() -> None:
    assert packages_loaded("qserver.cli", ("nats", "msgspec")) == []


@pytest.mark.parametrize("module", ["qserver", "qserver.cli"])
def test_version_says_which_qserver_answers(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=True
    ).stdout
    import qserver

    assert out.startswith(f"qserver {qserver.__version__} (NATS queue server client, ")
    assert str(Path(qserver.__file__).resolve().parent) in out


def test_qserver_nats_is_installed_beside_qserver() -> None:
    # The alias is a script of its own, in the same place as `qserver`.
    script = Path(sys.executable).parent / "qserver-nats"
    out = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert "(NATS queue server client, package qserver at " in out


@pytest.mark.parametrize(
    ("total", "skip", "count", "window"),
    [
        (5, 0, 2, (3, 2)),
        (5, 1, 2, (2, 2)),
        (5, 0, 9, (0, 5)),
        (5, 0, 0, (5, 0)),
        (5, 3, None, (0, 2)),
        (5, 7, 2, (0, 0)),
        (0, 0, 3, (0, 0)),
    ],
)
def test_latest_window_counts_from_the_newest(
    total: int, skip: int, count: int | None, window: tuple[int, int]
) -> None:
    assert latest_window(total, skip, count) == window


def test_plan_signature_and_lists() -> None:
    def param(name: str, kind: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "kind": {"name": kind}, **extra}

    grid = {
        "parameters": [
            param("detectors", "POSITIONAL_OR_KEYWORD"),
            param("args", "VAR_POSITIONAL"),
            param("md", "KEYWORD_ONLY", default="None"),
        ]
    }
    count = {
        "parameters": [
            param("num", "POSITIONAL_OR_KEYWORD", default="1"),
            param("md", "KEYWORD_ONLY", default="None"),
            param("kw", "VAR_KEYWORD"),
        ]
    }
    assert plan_signature({"name": "grid", **grid}) == "grid(detectors, *args, md=None)"
    assert plan_signature({"name": "count", **count}) == "count(num=1, *, md=None, **kw)"
    reply = {"plans_allowed": {"grid": grid, "count": count}}
    assert format_lists(reply, "plans_allowed", names_only=True) == "count\ngrid"
    devices = {"devices_allowed": {"m": {"classname": "SynAxis", "is_movable": True}}}
    assert format_lists(devices, "devices_allowed", names_only=False) == "m  SynAxis  movable"


# ----- positions and destinations -----


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("front", {"pos": "front"}),
        ("back", {"pos": "back"}),
        ("3", {"pos": 3}),
        ("-2", {"pos": -2}),
        ("a1b2-uid", {"uid": "a1b2-uid"}),
    ],
)
def test_a_word_that_is_an_int_or_front_back_is_a_pos_else_a_uid(
    word: str, expected: dict[str, Any]
) -> None:
    assert pos_or_uid(word) == expected


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ((), {"pos": "back"}),
        (("front",), {"pos": "front"}),
        (("-1",), {"pos": -1}),
        (("before", "u1"), {"before_uid": "u1"}),
        (("after", "u1"), {"after_uid": "u1"}),
    ],
)
def test_add_destinations(words: tuple[str, ...], expected: dict[str, Any]) -> None:
    assert parse_dest(words) == expected


@pytest.mark.parametrize("words", [("middle",), ("before",), ("front", "back"), ("1.5",)])
def test_bad_destinations_are_parameter_errors(words: tuple[str, ...]) -> None:
    with pytest.raises((BadParams, LegacyError)):
        parse_dest(words)


def test_move_takes_a_source_and_a_destination() -> None:
    assert parse_move(["2", "front"]) == {"pos": 2, "pos_dest": "front"}
    assert parse_move(["u1", "-1"]) == {"uid": "u1", "pos_dest": -1}
    assert parse_move(["back", "before", "u2"]) == {"pos": "back", "before_uid": "u2"}
    assert parse_move(["u1", "after", "u2"]) == {"uid": "u1", "after_uid": "u2"}
    with pytest.raises(BadParams):
        parse_move(["u1"])


def test_batch_move_takes_uids_then_a_destination() -> None:
    assert parse_batch_move(["a", "b", "front"]) == {"uids": ["a", "b"], "pos_dest": "front"}
    assert parse_batch_move(["a", "before", "c"]) == {"uids": ["a"], "before_uid": "c"}
    for bad in (["a", "b"], ["front"], ["before", "c"]):
        with pytest.raises(BadParams):
            parse_batch_move(bad)


# ----- items and other keyword arguments -----


def test_items_get_the_type_of_the_keyword() -> None:
    assert make_item("plan", PLAN) == {
        "name": "count",
        "args": [["det1", "det2"]],
        "item_type": "plan",
    }
    stop = {"item_type": "instruction", "name": "queue_stop"}
    assert make_item("instruction", "queue-stop") == stop
    assert make_item("instruction", '{"name": "queue_stop"}') == stop
    assert batch_items('[{"name": "a"}, {"name": "b", "item_type": "instruction"}]') == [
        {"item_type": "plan", "name": "a"},
        {"item_type": "instruction", "name": "b"},
    ]


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", '"count"'])
def test_bad_item_json_is_a_one_line_parameter_error(text: str) -> None:
    with pytest.raises(BadParams) as e:
        make_item("plan", text)
    assert e.value.exit_code == 1
    assert "\n" not in e.value.message


def test_queue_mode_words() -> None:
    assert parse_mode(["loop", "True"]) == {"mode": {"loop": True}}
    assert parse_mode(["ignore_failures", "off", "loop", "1"]) == {
        "mode": {"ignore_failures": False, "loop": True}
    }
    assert parse_mode(["default"]) == {"mode": "default"}
    for bad in (["loop"], ["loop", "maybe"], ["speed", "True"], []):
        with pytest.raises(BadParams):
            parse_mode(bad)


def test_manager_stop_and_history_clear_words() -> None:
    assert parse_manager_stop([]) == {}
    assert parse_manager_stop(["safe", "off"]) == {"option": "safe_off"}
    assert parse_manager_stop(["safe_on"]) == {"option": "safe_on"}
    with pytest.raises(BadParams):
        parse_manager_stop(["unsafe"])
    assert parse_history_clear([]) == {}
    assert parse_history_clear(["10"]) == {"size": 10}
    assert parse_history_clear(["some-uid"]) == {"item_uid": "some-uid"}


def test_the_lock_key_goes_only_to_methods_that_take_it() -> None:
    assert with_lock_key("queue_clear", {}, "K") == {"lock_key": "K"}
    assert with_lock_key("queue_get", {}, "K") == {}
    assert with_lock_key("queue_clear", {}, None) == {}


def test_table_aligns_items_and_lists_other_keys() -> None:
    reply = {
        "success": True,
        "items": [
            {"item_uid": "u-1", "name": "count", "args": [["det1"]], "user": "me"},
            {
                "item_uid": "u-22",
                "name": "scan",
                "kwargs": {"num": 3},
                "user": "me",
                "result": {"exit_status": "completed"},
            },
        ],
        "plan_queue_uid": "q",
    }
    lines = format_table(reply).splitlines()
    assert lines[0].split() == ["pos", "uid", "name", "args", "kwargs", "user", "status"]
    assert lines[1].index("count") == lines[2].index("scan")
    assert lines[2].rstrip().endswith("completed")
    assert lines[-2:] == ["success: true", "plan_queue_uid: q"]


# ----- the v0.0.1 form -----


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["-c", "queue_plan_add", "-p", "front", PLAN],
            ["-c", "queue_plan_add", "-p", "front", "-p", PLAN],
        ),
        (["-c", "queue_plan_remove", "-p", "-2"], ["-c", "queue_plan_remove", "-p", "-2"]),
        (
            ["-a", "nats://h:1", "-c", "queue_plan_add", "-p", "-1", PLAN],
            ["-a", "nats://h:1", "-c", "queue_plan_add", "-p", "-1", "-p", PLAN],
        ),
        (
            ["-c", "ping", "-a", "tcp://localhost:5555"],
            ["-c", "ping", "-a", "tcp://localhost:5555"],
        ),
        (["queue", "add", "plan", "-1", PLAN], ["queue", "add", "plan", "-1", PLAN]),
        (["-k", "K", "lock", "queue", "-c"], ["-k", "K", "lock", "queue", "-c"]),
    ],
)
def test_legacy_argv_turns_bare_values_into_params(argv: list[str], expected: list[str]) -> None:
    assert normalize_legacy_argv(argv) == expected


def test_legacy_values_are_python_literals_json_or_strings() -> None:
    assert parse_legacy_value("-2") == -2
    assert parse_legacy_value("front") == "front"
    assert parse_legacy_value('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_legacy_value('{"flag": true, "x": null}') == {"flag": True, "x": None}
    assert parse_legacy_value("{'a': 1}") == {"a": 1}


def test_legacy_plan_add_maps_to_queue_item_add() -> None:
    plan = {"name": "count", "args": [["det1", "det2"]]}
    item = {**plan, "item_type": "plan"}
    assert legacy_request("queue_plan_add", [plan]) == ("queue_item_add", {"item": item, **USER})
    assert legacy_request("queue_plan_add", ["front", plan]) == (
        "queue_item_add",
        {"item": item, **USER, "pos": "front"},
    )
    assert legacy_request("queue_plan_add", [-1, plan])[1]["pos"] == -1
    for bad in ([], ["middle", plan], [plan, plan], ["not a plan"]):
        with pytest.raises(LegacyError):
            legacy_request("queue_plan_add", bad)


def test_legacy_names_map_to_todays_methods() -> None:
    assert legacy_request("queue_plan_get") == ("queue_item_get", {"pos": "back"})
    assert legacy_request("queue_plan_remove", ["front"]) == ("queue_item_remove", {"pos": "front"})
    assert legacy_request("queue_plan_remove", [-2]) == ("queue_item_remove", {"pos": -2})
    assert legacy_request("queue-clear") == ("queue_clear", {})
    assert legacy_request("test_manager_kill") == ("manager_kill", {})
    assert legacy_request("plans_allowed") == ("plans_allowed", {"user_group": "primary"})
    assert legacy_request("re_pause", ["immediate"]) == ("re_pause", {"option": "immediate"})
    assert legacy_request("manager_stop", ["safe_off"]) == ("manager_stop", {"option": "safe_off"})
    assert legacy_request("history_clear", [{"size": 2}]) == ("history_clear", {"size": 2})
    with pytest.raises(LegacyError):
        legacy_request("re_pause", ["soon"])
    with pytest.raises(LegacyError):
        legacy_request("queue_get", [1, 2])


# ----- the click tree, in process -----


def test_help_works_on_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["-h"],
        ["--help"],
        ["queue"],
        ["queue", "item", "move", "-h"],
        ["lock", "-h"],
        ["stack", "up", "--help"],
    ):
        assert cli.run(argv) == 0, argv
        assert "Usage: qserver" in capsys.readouterr().out, argv


@pytest.mark.parametrize(
    "argv",
    [
        ["queue", "add", "plan", "{bad"],
        ["queue", "add", "plan", "middle", PLAN],
        ["queue", "mode", "set", "loop", "maybe"],
        ["lock", "queue"],  # no key
        ["-c", "queue_plan_add", "-p", "x", PLAN],
        ["--prefix", "bad prefix", "status"],
        ["no-such-command"],
    ],
)
def test_bad_parameters_exit_1_before_any_request(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(["-a", "nats://127.0.0.1:1", *argv]) == 1
    assert "Error" in capsys.readouterr().err


def test_stack_commands_call_the_stack_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def exec_stack(**kwargs: Any) -> None:
        calls.append(kwargs)
        click.get_current_context().exit(7)  # the real one replaces the process

    fake = types.ModuleType("services.stack.embedded")
    fake.exec_stack = exec_stack  # type: ignore[attr-defined]
    fake.use_config = lambda path: None  # type: ignore[attr-defined]
    fake.read_stack_info = lambda data_dir: {"data_dir": data_dir}  # type: ignore[attr-defined]
    fake.StackNotRunning = type("StackNotRunning", (Exception,), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "services.stack.embedded", fake)
    monkeypatch.delenv("QSERVER_PREFIX", raising=False)

    assert cli.run(["stack", "up", "--nats-port", "5000"]) == 7
    # The stack's own defaults (`python -m services.stack.embedded`): the same in both.
    assert calls == [STACK_DEFAULTS | {"nats_port": 5000}]
    assert cli.run(["stack", "up", "--use-ipython-kernel"]) == 7
    assert calls[-1]["ipython_kernel"] is True
    assert cli.run(["stack", "up", "--use-ipython-kernel=OFF"]) == 7
    assert calls[-1]["ipython_kernel"] is False
    n = len(calls)
    assert cli.run(["stack", "up", "--use-ipython-kernel=maybe"]) != 7
    assert len(calls) == n  # refused before the stack starts
    assert cli.run(["stack", "up", "--no-kafka", "--kafka-port", "9"]) == 7
    assert (calls[-1]["kafka"], calls[-1]["kafka_port"]) == (False, 9)
    assert cli.run(["stack", "up", "--kafka-max-mib", "0"]) == 7
    assert calls[-1]["kafka_max_mib"] == 0
    n = len(calls)
    assert cli.run(["stack", "up", "--kafka-max-mib", "-5"]) != 7
    assert len(calls) == n
    assert cli.run(["stack", "up", "--no-zmq", "--zmq-port", "5", "--zmq-info-port", "6"]) == 7
    assert (calls[-1]["zmq"], calls[-1]["zmq_port"], calls[-1]["zmq_info_port"]) == (False, 5, 6)
    assert cli.run(["--prefix", "qs.b", "stack", "up", "--data-dir", "/tmp/x"]) == 7
    assert calls[-1]["prefix"] == "qs.b"
    assert str(calls[-1]["data_dir"]) == "/tmp/x"
    import qserver.localstack as localstack

    def find(data_dir: object, url: object) -> localstack.StackLookup:
        return localstack.StackLookup(info={"data_dir": data_dir, "url": url})

    monkeypatch.setattr(localstack, "find_stack", find)
    monkeypatch.setenv("QSERVER_NATS_URL", "nats://h:1")
    assert cli.run(["stack", "info"]) == 0
    out = capsys.readouterr().out
    assert '"data_dir": null' in out and '"url": "nats://h:1"' in out

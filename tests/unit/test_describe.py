"""Plan and device descriptions of the sim profile, in the reference server's format."""

from __future__ import annotations

from typing import Any

import pytest

import sim_profile
from qserver.plan_tools.describe import (
    describe_devices,
    describe_plans,
    is_device,
    is_plan,
    split_docstring,
)
from qserver.protocol.worker import StartupConfig
from services.worker.env.startup import load_startup


@pytest.fixture(scope="module")
def ns() -> dict[str, Any]:
    return load_startup(StartupConfig(startup_dir=str(sim_profile.STARTUP_DIR)))


@pytest.fixture(scope="module")
def plans(ns: dict[str, Any]) -> dict[str, Any]:
    return describe_plans(ns)


@pytest.fixture(scope="module")
def devices(ns: dict[str, Any]) -> dict[str, Any]:
    return describe_devices(ns)


def params(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in plan["parameters"]}


def test_count_is_described_as_the_reference_describes_it(plans: dict[str, Any]) -> None:
    count = plans["count"]
    assert list(count) == ["description", "module", "name", "parameters", "properties"]
    assert count["description"] == "Take one or more readings from detectors."
    assert (count["module"], count["name"]) == ("bluesky.plans", "count")
    assert count["properties"] == {"is_generator": True}
    p = params(count)
    assert list(p) == ["detectors", "num", "delay", "per_shot", "md"]
    assert p["detectors"] == {
        "annotation": {"type": "collections.abc.Sequence[__READABLE__]"},
        "convert_device_names": True,
        "description": "list of 'readable' objects",
        "kind": {"name": "POSITIONAL_OR_KEYWORD", "value": 1},
        "name": "detectors",
    }
    assert [p[n].get("default") for n in p] == [None, "1", "0.0", "None", "None"]
    assert p["num"]["annotation"] == {"type": "int | None"}
    assert p["num"]["description"] == (
        "number of readings to take; default is 1\n\nIf None, capture data until canceled"
    )
    assert p["delay"]["annotation"] == {"type": "float | collections.abc.Iterable[float]"}
    assert p["md"]["annotation"] == {"type": "dict[str, typing.Any] | None"}
    assert p["md"]["kind"] == {"name": "KEYWORD_ONLY", "value": 3}
    # A type variable in the hint cannot be read back: the reference leaves it out.
    assert "annotation" not in p["per_shot"]
    assert p["per_shot"]["description"].startswith("hook for customizing action")
    assert "\n   def f(detectors" in p["per_shot"]["description"]


def test_device_protocols_become_placeholders(plans: dict[str, Any]) -> None:
    args = params(plans["scan"])["args"]
    assert args["kind"] == {"name": "VAR_POSITIONAL", "value": 2}
    assert args["annotation"] == {"type": "__MOVABLE__ | typing.Any"}
    assert args["convert_device_names"] is True
    assert params(plans["adaptive_scan"])["motor"]["annotation"] == {"type": "__MOVABLE__"}
    assert params(plans["fly"])["flyers"]["annotation"] == {"type": "list[__FLYABLE__]"}
    marked = params(plans["marked_up_count"])
    assert marked["detectors"]["annotation"] == {"type": "collections.abc.Sequence[__READABLE__]"}
    assert marked["detectors"]["convert_device_names"] is True
    assert "convert_device_names" not in marked["num"]


def test_a_var_positional_group_is_described_as_the_flat_form_takes_it(
    plans: dict[str, Any],
) -> None:
    """bluesky 1.15: `list_scan(detectors, *args: tuple[Movable | Any, list[Any]], ...)`."""
    args = params(plans["list_scan"])["args"]
    assert args["annotation"] == {"type": "tuple[__MOVABLE__, list[float]]"}
    assert args["convert_device_names"] is True
    # Not groups: each value of `*args` is checked alone, as bluesky wrote it.
    assert params(plans["list_grid_scan"])["args"]["annotation"] == {
        "type": "__MOVABLE__ | typing.Any"
    }


def test_any_var_positional_group_with_a_device_is_tightened_alike() -> None:
    src = (
        "from typing import Any\n"
        "from collections.abc import Sequence\n"
        "from bluesky.protocols import Movable, Readable\n"
        "def triples(*args: tuple[Movable | Any, Any, Sequence[Any] | None]):\n"
        "    yield None\n"
        "def plain(*args: tuple[int, str]):\n"
        "    yield None\n"
        "def variadic(*args: tuple[Movable, ...]):\n"
        "    yield None\n"
        "def single(x: tuple[Movable | Any, list[Any]]):\n"
        "    yield None\n"
    )
    ns: dict[str, Any] = {}
    exec(src, ns)
    described = describe_plans(ns)

    def annotation(name: str, param: str = "args") -> str:
        return params(described[name])[param]["annotation"]["type"]  # type: ignore[no-any-return]

    assert annotation("triples") == (
        "tuple[__MOVABLE__, float, collections.abc.Sequence[float] | None]"
    )
    assert annotation("plain") == "tuple[int, str]"
    assert annotation("variadic") == "tuple[__MOVABLE__, ...]"
    # Only `*args` is read in groups; a parameter that takes one tuple keeps its annotation.
    assert annotation("single", "x") == "tuple[__MOVABLE__ | typing.Any, list[typing.Any]]"


def test_plan_stubs_and_profile_plans_are_plans(plans: dict[str, Any]) -> None:
    expected = {
        "count", "scan", "rel_scan", "list_scan", "rel_list_scan", "grid_scan", "rel_grid_scan",
        "scan_nd", "spiral", "spiral_fermat", "adaptive_scan", "rel_adaptive_scan",
        "tune_centroid", "log_scan", "rel_log_scan", "x2x_scan", "ramp_plan", "fly",
        "mv", "mvr", "sleep", "long_count", "sim_fail", "marked_up_count",
    }  # fmt: skip
    assert expected <= set(plans)
    assert plans["mv"]["module"] == "bluesky.plan_stubs"
    assert params(plans["mv"])["kwargs"]["kind"] == {"name": "VAR_KEYWORD", "value": 4}
    assert params(plans["sleep"])["time"]["annotation"] == {"type": "float"}
    assert params(plans["sim_fail"])["msg"]["default"] == "'Simulated plan failure'"
    assert list(plans) == sorted(plans)


def test_functions_classes_and_modules_are_not_plans(ns: dict[str, Any]) -> None:
    assert not is_plan(ns["function_sleep"])
    assert not is_plan(ns["RE"])
    assert not is_plan(type(ns["det1"]))
    assert is_plan(ns["mv"]) and is_plan(ns["count"])


def test_det1_and_motor_are_described_as_the_reference_describes_them(
    devices: dict[str, Any],
) -> None:
    signal = {"classname": "Signal", "is_flyable": False, "is_movable": True,
              "is_readable": True, "module": "ophyd.signal"}  # fmt: skip
    assert devices["det1"] == {
        "classname": "SynGauss",
        "components": {
            "Imax": signal,
            "center": signal,
            "noise": {**signal, "classname": "EnumSignal", "module": "ophyd.sim"},
            "noise_multiplier": signal,
            "sigma": signal,
            "val": {**signal, "classname": "SynSignal", "module": "ophyd.sim"},
        },
        "is_flyable": False,
        "is_movable": False,
        "is_readable": True,
        "module": "ophyd.sim",
    }
    motor = devices["motor"]
    assert (motor["classname"], motor["is_movable"], motor["is_readable"]) == (
        "SynAxis",
        True,
        True,
    )
    assert list(motor["components"]) == [
        "acceleration",
        "readback",
        "setpoint",
        "unused",
        "velocity",
    ]
    assert motor["components"]["readback"]["classname"] == "_ReadbackSignal"


def test_devices_cover_the_profile_and_nothing_else(devices: dict[str, Any]) -> None:
    assert {"det", "det1", "det2", "motor", "motor1", "noisy_det", "img", "sig"} <= set(devices)
    assert devices["flyer1"]["is_flyable"] is True
    assert not {"RE", "count", "bps", "Readable", "Sequence"} & set(devices)
    assert list(devices) == sorted(devices)


def test_max_depth_limits_components(ns: dict[str, Any]) -> None:
    assert "components" not in describe_devices(ns, max_depth=1)["det1"]
    deep = describe_devices({"p": ns["pseudo3x3"]}, max_depth=2)["p"]
    assert "components" in deep and all("components" not in c for c in deep["components"].values())


def test_private_names_are_listed_and_non_devices_skipped(ns: dict[str, Any]) -> None:
    """As the reference does: the `root` group's `:^_` rules keep `_` names out of use."""
    devices = describe_devices({"_hidden": ns["det1"], "n": 5, "cls": type(ns["det1"])})
    assert list(devices) == ["_hidden"]
    assert list(describe_plans({"_p": ns["count"], "__p": ns["count"]})) == ["_p"]
    assert is_device(ns["det1"]) and not is_device(ns["count"])


def test_string_annotations_are_converted() -> None:
    src = (
        "from __future__ import annotations\n"
        "from bluesky.protocols import Readable, Movable\n"
        "def p(dets: list[Readable], m: Movable, n: int = 3):\n"
        "    yield None\n"
        "def q(x: NotDefinedAnywhere):\n"
        "    yield None\n"
    )
    ns: dict[str, Any] = {}
    exec(src, ns)
    p = params(describe_plans(ns)["p"])
    assert p["dets"]["annotation"] == {"type": "list[__READABLE__]"}
    assert p["m"]["annotation"] == {"type": "__MOVABLE__"}
    assert p["n"] == {
        "annotation": {"type": "int"},
        "default": "3",
        "kind": {"name": "POSITIONAL_OR_KEYWORD", "value": 1},
        "name": "n",
    }
    assert "annotation" not in params(describe_plans(ns)["q"])["x"]


def test_docstring_sections_and_shared_parameter_entries() -> None:
    doc = """Summary line.

    More text.

    Parameters
    ----------
    a, b : float
        the limits
    *args :
        the rest

    Returns
    -------
    nothing
    """
    summary, ps = split_docstring(doc)
    assert summary == "Summary line.\n\nMore text."
    assert ps == {"a": "the limits", "b": "the limits", "args": "the rest"}
    assert split_docstring(None) == ("", {})


def test_the_shipped_lists_file_is_up_to_date() -> None:
    """The queue service validates against this file before an environment was opened."""
    from services.worker.listgen import SIM_LISTS_FILE, existing_lists, render

    fresh = render(existing_lists(StartupConfig(startup_dir=str(sim_profile.STARTUP_DIR))))
    assert SIM_LISTS_FILE.read_text() == fresh, (
        "stale: run `python -m services.worker.listgen` to regenerate it"
    )

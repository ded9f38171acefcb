"""The simulated beamline has the reference profile's plans, devices and functions, and they run."""

from __future__ import annotations

from typing import Any

import pytest
from bluesky import RunEngine

import sim_profile
from qserver.plan_tools.permissions import allowed_lists, function_allowed, load_permissions_file
from qserver.protocol.worker import StartupConfig
from services.worker.env.startup import load_startup
from services.worker.listgen import SIM_LISTS_FILE, SIM_PROFILE

# What bluesky-queueserver 0.0.25's `profile_collection_sim` defines (its names).
REFERENCE_PLANS = {
    "_sim_plan_inner", "adaptive_scan", "count", "count_bundle_test", "fly", "grid_scan",
    "inner_product_scan", "list_grid_scan", "list_scan", "log_scan", "marked_up_count",
    "move_then_count", "mv", "mvr", "null", "plan_test_progress_bars", "ramp_plan",
    "rel_adaptive_scan", "rel_grid_scan", "rel_list_grid_scan", "rel_list_scan",
    "rel_log_scan", "rel_scan", "rel_spiral", "rel_spiral_fermat", "rel_spiral_square",
    "relative_inner_product_scan", "scan", "scan_nd", "sim_multirun_plan_nested", "spiral",
    "spiral_fermat", "spiral_square", "tune_centroid", "tweak", "x2x_scan",
}  # fmt: skip
REFERENCE_DEVICES = {
    "ab_det", "bool_sig", "custom_test_device", "custom_test_flyer", "custom_test_signal",
    "det", "det1", "det2", "det3", "det4", "det5", "det_with_conf", "det_with_count_time",
    "direct_img", "direct_img_list", "flyer1", "flyer2", "identical_det", "img", "invariant1",
    "invariant2", "jittery_motor1", "jittery_motor2", "motor", "motor1", "motor2", "motor3",
    "motor_empty_hints1", "motor_empty_hints2", "motor_no_hints1", "motor_no_hints2",
    "motor_no_pos", "new_trivial_flyer", "noisy_det", "pseudo1x3", "pseudo3x3", "rand",
    "rand2", "sig", "signal", "sim_bundle_A", "sim_bundle_B", "trivial_flyer",
}  # fmt: skip
REFERENCE_FUNCTIONS = ("function_sleep", "push_buffer_element", "pop_buffer_element")
REFERENCE_FUNCTIONS += ("clear_buffer",)


@pytest.fixture(scope="module")
def ns() -> dict[str, Any]:
    return load_startup(StartupConfig(startup_dir=str(sim_profile.STARTUP_DIR)))


@pytest.fixture(scope="module")
def lists() -> dict[str, Any]:
    import json

    return json.loads(SIM_LISTS_FILE.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def RE() -> RunEngine:
    return RunEngine(context_managers=[])


def test_the_shipped_lists_hold_every_plan_and_device_of_the_reference(
    lists: dict[str, Any],
) -> None:
    # Ours beside them: plans for pause and failure tests.
    extra = {"long_count", "sim_fail", "sim_fail_large", "sleep"}
    assert set(lists["plans_existing"]) == REFERENCE_PLANS | extra
    # A motor with soft limits, for dry runs (ADR 31).
    assert set(lists["devices_existing"]) == REFERENCE_DEVICES | {"motor_limited"}
    bundle = lists["devices_existing"]["sim_bundle_A"]
    assert set(bundle["components"]) == {"dets", "mtrs"}
    assert set(bundle["components"]["mtrs"]["components"]) == {"x", "y", "z"}
    assert set(bundle["components"]["dets"]["components"]) == {"det_A", "det_B"}


def test_private_plans_exist_but_no_group_may_use_them(lists: dict[str, Any]) -> None:
    permissions = load_permissions_file(SIM_PROFILE / "user_group_permissions.yaml")
    groups = allowed_lists(lists["plans_existing"], lists["devices_existing"], permissions)
    assert "_sim_plan_inner" in lists["plans_existing"]
    for plans, _ in groups.values():
        assert not any(name.startswith("_") for name in plans)
    assert "sim_multirun_plan_nested" in groups["primary"][0]
    # test_user: the reference's subset, sim_bundle_A (not B) included.
    test_user_devices = groups["test_user"][1]
    assert "sim_bundle_A" in test_user_devices and "sim_bundle_B" not in test_user_devices


def test_the_functions_are_defined_and_allowed_as_in_the_reference(ns: dict[str, Any]) -> None:
    permissions = load_permissions_file(SIM_PROFILE / "user_group_permissions.yaml")
    assert all(callable(ns[name]) for name in REFERENCE_FUNCTIONS)
    assert function_allowed("function_sleep", "primary", permissions)
    assert not function_allowed("push_buffer_element", "primary", permissions)
    assert function_allowed("push_buffer_element", "test_user", permissions)
    assert function_allowed("clear_buffer", "test_user", permissions)
    assert not function_allowed("_fifo_buffer", "test_user", permissions)


def test_scripts_find_the_modules_the_reference_profile_imports(ns: dict[str, Any]) -> None:
    """bluesky-queueserver-api's console tests upload a script that calls `ttime.sleep`."""
    import time

    assert ns["ttime"] is time


def test_the_buffer_functions_keep_order_and_pop_fails_when_empty(ns: dict[str, Any]) -> None:
    assert ns["function_sleep"](0) == {"success": True, "time": 0}
    ns["clear_buffer"]()
    ns["push_buffer_element"]("a")
    ns["push_buffer_element"]({"b": 1})
    assert ns["pop_buffer_element"]() == "a"
    assert ns["pop_buffer_element"]() == {"b": 1}
    with pytest.raises(IndexError):
        ns["pop_buffer_element"]()


def test_move_then_count_moves_each_motor_then_counts(ns: dict[str, Any], RE: RunEngine) -> None:
    docs: list[tuple[str, dict[str, Any]]] = []
    RE(
        ns["move_then_count"]([ns["motor1"], ns["motor2"]], None, [1.5, -2.0]),
        lambda name, doc: docs.append((name, doc)),
    )
    assert (ns["motor1"].position, ns["motor2"].position) == (1.5, -2.0)
    [start] = [doc for name, doc in docs if name == "start"]
    assert start["detectors"] == ["det1", "det2"]
    with pytest.raises(ValueError, match="one position per motor"):
        RE(ns["move_then_count"]([ns["motor1"]], [ns["det1"]], [1.0, 2.0]))


def test_the_nested_plan_makes_an_outer_and_an_inner_run(ns: dict[str, Any], RE: RunEngine) -> None:
    events: dict[str, int] = {}
    starts: list[str] = []

    def collect(name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            starts.append(doc["uid"])
        if name == "stop":
            events[doc["run_start"]] = sum(doc["num_events"].values())

    uids = RE(ns["sim_multirun_plan_nested"](3, delay=0), collect)
    assert len(uids) == 2 and starts == list(uids)
    assert [events[uid] for uid in starts] == [3, 4]  # npts, then npts + 1 inside


def test_bundle_parts_count_by_their_own_names(ns: dict[str, Any], RE: RunEngine) -> None:
    bundle = ns["sim_bundle_A"]
    assert bundle.mtrs.set(1, 2, 3).wait(timeout=5) is None
    assert (bundle.mtrs.x.position, bundle.mtrs.z.position) == (1, 3)
    docs: list[tuple[str, dict[str, Any]]] = []
    RE(
        ns["count_bundle_test"]([bundle.dets.det_A, ns["sim_bundle_B"].dets.det_B]),
        lambda name, doc: docs.append((name, doc)),
    )
    [event] = [doc for name, doc in docs if name == "event"]
    assert set(event["data"]) == {"sim_bundle_A_dets_det_A", "sim_bundle_B_dets_det_B"}


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("null", ()),
        ("inner_product_scan", ("dets", 3, "motor1", 0, 1, "motor2", 1, 2)),
        ("spiral_square", ("dets", "motor1", "motor2", 0, 0, 1, 1, 3, 3)),
    ],
)
def test_the_added_bluesky_plans_run(
    ns: dict[str, Any], RE: RunEngine, name: str, args: tuple[Any, ...]
) -> None:
    values = [
        [ns["det1"]] if a == "dets" else ns.get(a, a) if isinstance(a, str) else a for a in args
    ]
    RE(ns[name](*values))

"""Name resolution takes objects from the allowed list only and never evaluates anything."""

from __future__ import annotations

from types import SimpleNamespace

from qserver.plan_tools.resolve import resolve_args

det1 = SimpleNamespace(name="det1", val=SimpleNamespace(name="det1_val"))
motor = SimpleNamespace(name="motor")
NS = {"det1": det1, "motor": motor, "secret": object(), "os": __import__("os")}


def test_allowed_names_become_objects_in_nested_lists_and_dicts() -> None:
    args, kwargs = resolve_args(
        [["det1", "motor"], "motor", 1, "text"], {"md": {"d": "det1"}}, NS, {"det1", "motor"}
    )
    assert args == [[det1, motor], motor, 1, "text"]
    assert kwargs["md"]["d"] is det1


def test_dotted_names_resolve_attributes_of_allowed_objects() -> None:
    args, _ = resolve_args(["det1.val", "det1.missing", "det1._private"], {}, NS, {"det1"})
    assert args == [det1.val, "det1.missing", "det1._private"]


def test_names_outside_the_allowed_list_stay_strings() -> None:
    args, _ = resolve_args(["secret", "os.system", "__import__('os')"], {}, NS, {"det1"})
    assert args == ["secret", "os.system", "__import__('os')"]

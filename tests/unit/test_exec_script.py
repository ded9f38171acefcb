"""Scripts executed in a namespace as the reference does (`services/worker/env/tasks.py`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from services.worker.env.tasks import TaskError, exec_script


def test_a_script_defines_names_but_keeps_re_and_db_unless_asked() -> None:
    ns: dict[str, Any] = {"RE": "old RE", "db": "old db"}
    exec_script(ns, "x = 1\nRE = 'new RE'\ndb = None\n", "t-1", None, keep_re=True)
    assert (ns["x"], ns["RE"], ns["db"]) == (1, "old RE", "old db")
    exec_script(ns, "RE = 'new RE'\n", "t-2", None, keep_re=False)
    assert ns["RE"] == "new RE"
    assert ns["__name__"] == "__main__"


def test_a_failing_script_raises_with_its_own_lines_in_the_traceback() -> None:
    ns: dict[str, Any] = {}
    script = "a = 1\n\ndef f():\n    raise KeyError('missing beam')\n\nf()\n"
    with pytest.raises(TaskError) as err:
        exec_script(ns, script, "abcd-1", None, keep_re=True)
    tb = err.value.tb
    assert tb.startswith("Traceback") and "KeyError: 'missing beam'" in tb
    assert "raise KeyError('missing beam')" in tb and "<script abcd>" in tb
    assert "missing beam" in str(err.value)
    # What ran before the failure stays, as in IPython.
    assert ns["a"] == 1


def test_local_modules_are_imported_again_by_the_next_script(tmp_path: Path) -> None:
    (tmp_path / "local_mod_for_test.py").write_text("VALUE = 1\n")
    ns: dict[str, Any] = {}
    script = "from local_mod_for_test import VALUE\n"
    try:
        exec_script(ns, script, "t-1", str(tmp_path), keep_re=True)
        assert ns["VALUE"] == 1
        assert "local_mod_for_test" not in sys.modules
        # Another size: a cached .pyc of the same second and size would be taken as current.
        (tmp_path / "local_mod_for_test.py").write_text("VALUE = 22\n")
        exec_script(ns, script, "t-2", str(tmp_path), keep_re=True)
        assert ns["VALUE"] == 22
    finally:
        sys.path.remove(str(tmp_path))

# The RunEngine. `context_managers=[]`: no SIGINT handler, the environment drives pauses.
import os

from bluesky import RunEngine

# `metadata_key` as the reference's simulated profile has it (its clients' tests read it back).
RE = RunEngine({"metadata_key": "metadata_value"}, context_managers=[])

# Table output is off by default: bluesky's table callback sleeps 0.1 s per run.
if os.environ.get("QSERVER_SIM_TABLE", "") not in ("", "0"):
    from bluesky.callbacks.best_effort import BestEffortCallback

    _bec = BestEffortCallback()
    _bec.disable_plots()
    RE.subscribe(_bec)

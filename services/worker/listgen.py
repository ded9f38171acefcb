"""Write the existing plans and devices of some startup code to a JSON file.

`python -m services.worker.listgen [--startup-dir DIR] -o FILE`: the queue service reads
such a file to validate items before any environment was opened (the reference ships
`existing_plans_and_devices.yaml` with each profile for the same reason). The simulated
beamline's file is committed; a test checks that it is current.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from qserver.protocol.worker import StartupConfig

SIM_PROFILE = Path(__file__).resolve().parents[2] / "sim_profile"
SIM_LISTS_FILE = SIM_PROFILE / "existing_plans_and_devices.json"


def existing_lists(config: StartupConfig) -> dict[str, Any]:
    """Run the startup code and describe what it defines, with a uid derived from the content."""
    from qserver.plan_tools.describe import describe_devices, describe_plans
    from services.worker.env.startup import load_startup

    ns = load_startup(config)
    lists: dict[str, Any] = {
        "plans_existing": describe_plans(ns),
        "devices_existing": describe_devices(ns),
    }
    text = json.dumps(lists, sort_keys=True)
    lists["uid"] = hashlib.sha256(text.encode()).hexdigest()[:32]
    return lists


def render(lists: dict[str, Any]) -> str:
    return json.dumps(lists, indent=1, sort_keys=True) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m services.worker.listgen", description=__doc__)
    p.add_argument("--startup-dir", default=str(SIM_PROFILE))
    p.add_argument("--startup-module")
    p.add_argument("--startup-script")
    p.add_argument("-o", "--output", default=str(SIM_LISTS_FILE))
    args = p.parse_args()
    config = StartupConfig(
        startup_dir=None if args.startup_module or args.startup_script else args.startup_dir,
        startup_module=args.startup_module,
        startup_script=args.startup_script,
    )
    Path(args.output).write_text(render(existing_lists(config)))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

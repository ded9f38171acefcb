"""Where the core's memory goes: our default stack's RSS by process after each workload phase.

The phases are `make bench-compare`'s (bench/compare_workloads.py: `requests` fills the
queue to 10,000 items and clears it, `environment` opens one, `execution` runs 100 plans),
on the same stack (`make run`'s, in a temporary data dir); after each, RSS and CPU time by
process, one JSON line per phase. Ours only: the reference's figure is bench-compare's.
Used for ADR 34 (try a setting by putting it in the environment, e.g. GOMEMLIMIT=20MiB).

    .venv/bin/python -m bench.bench_memory [--phases requests,environment,execution]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import bench_compare as bc

PHASES = "requests,environment,execution"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_memory", description=__doc__)
    p.add_argument("--phases", default=PHASES, help=f"comma-separated ({PHASES})")
    p.add_argument("--settle", type=float, default=5.0, help="quiet seconds before each reading")
    args = p.parse_args()
    python = Path(sys.executable)
    with bc.ours_system() as side:
        for phase in ["start", *args.phases.split(",")]:
            if phase != "start":
                bc.workloads(python, side, phase, quick=False)
            bc.quiesce(side, args.settle)
            mem = bc.memory(side)
            pids = side["processes"]()
            cpu = bc._by_role(pids, bc._cpu(pids))
            line = {
                "after": phase,
                "rss_core_mib": round(mem["rss_core_mib"], 1),
                "rss_by_process_mib": mem["rss_by_process_mib"],
                "cpu_s_by_process": cpu,
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

"""The simulated beamline: the default startup code (a directory of files run in order)."""

from pathlib import Path

STARTUP_DIR = Path(__file__).parent

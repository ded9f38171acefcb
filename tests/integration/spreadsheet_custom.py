"""A beamline's own spreadsheet conversion, as QSERVER_CUSTOM_MODULES names one (for tests).

Rows `name,num` of `count` plans on det1; `data_type` "unsupported" is refused and
"process_with_default_function" hands the file to the default conversion, as in
bluesky-queueserver's test module.
"""

from __future__ import annotations

import csv
import io
from typing import Any


def spreadsheet_to_plan_list(
    *, spreadsheet_file: Any, file_name: str, data_type: str | None, user: str, **kwargs: Any
) -> list[dict[str, Any]] | None:
    if data_type == "unsupported":
        raise ValueError(f"Unsupported data type: '{data_type}'")
    if data_type == "process_with_default_function":
        return None
    rows = list(csv.DictReader(io.StringIO(spreadsheet_file.read().decode())))
    return [
        {
            "name": r["name"],
            "args": [["det1"]],
            "kwargs": {"num": int(r["num"])},
            "meta": {"by": user},
        }
        for r in rows
    ]

"""Reading plans from spreadsheets: the reference's default format, every row checked."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from qserver.spreadsheet import (
    MAX_FILE_BYTES,
    MAX_PLANS,
    SpreadsheetError,
    column_letter,
    explain_batch,
    read_plans,
)

DATA = Path(__file__).parent / "data"

# The reference's sample (bluesky-queueserver's plan_list_sample), as its test helper writes
# it: names and strings quoted, args without the outer brackets, an empty row.
HEADER = ["plan_name", "args", "num", "delay", "detectors"]
ROWS: list[list[Any]] = [
    ["'count'", "['det1', 'det2']", 10, None, None],
    ["'count'", "['det1']", None, 0.5, None],
    ["'count'", None, None, 0.5, "['det1']"],
    [None, None, None, None, None],
    ["'scan'", "['det1', 'det2'], 'motor', -1, 1", 10, None, None],
    ["'scan'", "['det1', 'det2'], 'motor', -1, 1, 10", None, None, None],
    ["'count'", "['det2']", 2, 0.7, None],
]
EXPECTED = [
    {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 10}},
    {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"delay": 0.5}},
    {"item_type": "plan", "name": "count", "kwargs": {"delay": 0.5, "detectors": ["det1"]}},
    {
        "item_type": "plan",
        "name": "scan",
        "args": [["det1", "det2"], "motor", -1, 1],
        "kwargs": {"num": 10},
    },
    {"item_type": "plan", "name": "scan", "args": [["det1", "det2"], "motor", -1, 1, 10]},
    {"item_type": "plan", "name": "count", "args": [["det2"]], "kwargs": {"num": 2, "delay": 0.7}},
]


def xlsx(rows: list[list[Any]]) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def csv_text(rows: list[list[Any]]) -> bytes:
    import csv

    out = io.StringIO()
    w = csv.writer(out)
    for row in rows:
        w.writerow(["" if c is None else c for c in row])
    return out.getvalue().encode()


def errors_of(data: bytes, name: str) -> str:
    with pytest.raises(SpreadsheetError) as e:
        read_plans(data, name)
    return str(e.value)


@pytest.mark.parametrize("ext", [".xlsx", ".csv"])
def test_the_reference_sample_reads_back_with_its_rows(ext: str) -> None:
    data = xlsx([HEADER, *ROWS]) if ext == ".xlsx" else csv_text([HEADER, *ROWS])
    plans = read_plans(data, f"plans{ext}")
    assert plans.items == EXPECTED
    assert plans.rows == [2, 3, 4, 6, 7, 8]  # row 5 is empty


def test_an_xls_workbook_reads_like_the_others() -> None:
    # Written by xlwt (the reference's sample with an empty row); no writer of .xls is kept here.
    plans = read_plans((DATA / "plans.xls").read_bytes(), "plans.xls")
    assert plans.items == EXPECTED
    assert plans.rows == [2, 3, 4, 6, 7, 8]


def test_values_of_every_kind_keep_their_types() -> None:
    header = ["name", "args", "p"]
    cells = ["50", "'some_str'", "50.256", "None", "''", "[10, 20, 30]", "{'p1': 10, 'p2': '10'}"]
    cells += ["True", "(1, 2)"]
    got = read_plans(xlsx([header, *[["count", "['det2']", c] for c in cells]]), "a.xlsx")
    values = [i["kwargs"]["p"] for i in got.items]
    assert values == [
        50,
        "some_str",
        50.256,
        None,
        "",
        [10, 20, 30],
        {"p1": 10, "p2": "10"},
        True,
        [1, 2],  # a tuple goes as a list, as JSON carries it
    ]
    # Numbers typed as numbers: a float that is whole was an integer in the cell.
    got = read_plans(xlsx([header, ["count", None, 10.0], ["count", None, 2.5]]), "a.xlsx")
    assert [i["kwargs"]["p"] for i in got.items] == [10, 2.5]
    assert isinstance(got.items[0]["kwargs"]["p"], int)
    got = read_plans(csv_text([header, ["count", "5", "10.0"], ["count", "", "true"]]), "a.csv")
    assert got.items[0] == {"item_type": "plan", "name": "count", "args": [5], "kwargs": {"p": 10}}
    assert got.items[1]["kwargs"] == {"p": True}  # as Excel writes TRUE to CSV


def test_nothing_is_evaluated_as_code() -> None:
    text = errors_of(csv_text([["name", "args", "p"], ["count", "", "__import__('os')"]]), "a.csv")
    assert "row 2, column C" in text and "not a Python literal" in text


def test_every_bad_row_is_named_with_its_problem() -> None:
    rows = [
        ["plan", "args", "num", "delay"],
        ["count", "['det1']", "det1", None],  # unquoted name
        [None, None, 5, None],  # no plan name
        ["count", None, None, None, 7],  # a column without a header
        [10, None, None, None],  # a number for a plan name
        ["co unt", None, None, None],
        ["count", "['det1'", None, None],  # unbalanced
        ["count", None, None, "1e999"],
    ]
    text = errors_of(csv_text(rows), "bad.csv")
    assert text.startswith("The spreadsheet 'bad.csv' has errors (nothing was added to the queue)")
    for expected in (
        "row 2, column C: 'det1' is not a Python literal (names of devices and plans go in quotes",
        "row 3: no plan name in column A",
        "row 4, column E: a value in a column that has no parameter name",
        "row 5, column A: the plan name 10 is not text",
        "row 6, column A: 'co unt' is not a valid plan name",
        "row 7, column B",
        "row 8, column D: inf is not a finite number",
    ):
        assert expected in text, text


def test_header_problems_are_named() -> None:
    text = errors_of(csv_text([["plan", "args", "num", "NUM"], ["count", "", "1", "2"]]), "a.csv")
    assert "row 1, column D: the parameter 'NUM' has a column already (column C)" in text
    # A sheet without its header row: the first plan is taken for names and refused.
    text = errors_of(csv_text([["count", "['det1']", "5"], ["count", "['det1']", "6"]]), "a.csv")
    assert "row 1, column C: 5 is not a parameter name" in text


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (b"", "empty.xlsx", "The spreadsheet 'empty.xlsx' is empty (0 bytes)"),
        (b"", "empty.csv", "is empty (0 bytes)"),
        (b"\n\n,,\n", "blank.csv", "has no cells filled: row 1 must name the columns"),
        (b"plan,args,num\n,,\n", "header.csv", "holds no plans: only its header row (row 1)"),
        (b"not a zip", "fake.xlsx", "'fake.xlsx' is not an Excel .xlsx workbook"),
        (b"not an xls", "fake.xls", "The workbook 'fake.xls' cannot be read"),
        (b"a,b\n", "plans.txt", "extension '.txt') is not supported"),
        (b"\xff\xfe\x00\x81\x8d\x8f\x90\x9d", "bin.csv", "is not text"),
    ],
)
def test_files_that_are_no_spreadsheet_of_plans_are_refused(
    data: bytes, name: str, expected: str
) -> None:
    assert expected in errors_of(data, name)


def test_oversize_files_sheets_and_zip_bombs_are_refused() -> None:
    assert "more than the" in errors_of(b"x" * (MAX_FILE_BYTES + 1), "big.csv")
    rows = "plan,args\n" + "count,\"['det1']\"\n" * (MAX_PLANS + 1)
    assert f"more than {MAX_PLANS} plans" in errors_of(rows.encode(), "long.csv")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/worksheets/sheet1.xml", b"\0" * (65 * 1024 * 1024))
    assert len(bomb.getvalue()) < MAX_FILE_BYTES
    assert "unpacks to" in errors_of(bomb.getvalue(), "bomb.xlsx")


def test_only_the_first_sheet_is_read() -> None:
    wb = openpyxl.Workbook()
    first = wb.active
    assert first is not None
    first.append(["plan", "args"])
    first.append(["count", "['det1']"])
    second = wb.create_sheet("other")
    second.append(["plan", "args"])
    second.append(["scan", "['det1'], 'motor', 1, 2, 3"])
    wb.active = 1
    out = io.BytesIO()
    wb.save(out)
    assert [i["name"] for i in read_plans(out.getvalue(), "two.xlsx").items] == ["count"]


def test_refused_items_of_a_batch_are_named_by_their_rows() -> None:
    reply = {
        "success": False,
        "msg": "Failed to add items: 1 of 2 items are invalid",
        "items": [{}, {}],
        "results": [{"success": True, "msg": ""}, {"success": False, "msg": "no such plan"}],
    }
    out = explain_batch(reply, [2, 5])
    assert out["msg"] == (
        "Failed to add items: 1 of 2 items are invalid (nothing was added to the queue): "
        "row 5: no such plan"
    )
    assert out["results"] == reply["results"]
    assert explain_batch(reply, None)["msg"].endswith("item 2: no such plan")
    ok = {"success": True, "msg": "", "results": [{"success": True}]}
    assert explain_batch(ok, [2]) == ok


def test_column_letters() -> None:
    assert [column_letter(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "A",
        "B",
        "Z",
        "AA",
        "AB",
        "ZZ",
        "AAA",
    ]

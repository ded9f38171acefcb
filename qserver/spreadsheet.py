"""Queue items from a spreadsheet (.xlsx, .xls, .csv), in bluesky-httpserver's default format.

Row 1 names the columns: the first holds plan names, the second the plans' positional
arguments, each further one a keyword argument (its name is the parameter's). Every other
row is one plan; a row with no cell filled is skipped. Cells hold Python literals, as in the
reference: `'det1'`, `10`, `[1, 2]`, `{'a': 1}`; the args cell is a comma-separated list of
them (`['det1', 'det2'], 'motor', -1, 1, 10`); a plan name may go without quotes. Unlike
the reference, a cell is read with `ast.literal_eval`, never evaluated as code.

Every row is checked before anything is sent, and all the problems found are reported,
each naming its row (as the spreadsheet program numbers it: row 1 is the header) and
column. `explain_batch` names the rows of the items the queue service refused.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import math
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_UNZIPPED_BYTES = 64 * 1024 * 1024  # an .xlsx is a zip: no bombs
MAX_PLANS = 10_000
MAX_CELL_CHARS = 64 * 1024
MAX_ERRORS_SHOWN = 20
EXTENSIONS = (".xlsx", ".xls", ".csv")
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)
Cell = Any  # str, int, float, bool, None, or a date of a spreadsheet program


class SpreadsheetError(ValueError):
    """The spreadsheet cannot be read, or some of its rows are wrong: the message says where."""


@dataclass(frozen=True)
class Plans:
    """The items read, and the spreadsheet row of each (for messages)."""

    items: list[dict[str, Any]]
    rows: list[int]


def read_plans(data: bytes, file_name: str) -> Plans:
    """The plans of the first sheet of `data`; `file_name`'s extension says the format."""
    ext = os.path.splitext(file_name)[1].lower()
    if ext not in EXTENSIONS:
        raise SpreadsheetError(
            f"File '{file_name}' (extension '{ext}') is not supported: "
            f"supported extensions {EXTENSIONS}"
        )
    if not data:
        raise SpreadsheetError(f"The spreadsheet '{file_name}' is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise SpreadsheetError(
            f"The spreadsheet '{file_name}' is {len(data)} bytes, more than the "
            f"{MAX_FILE_BYTES} allowed: split it into several files"
        )
    if ext == ".csv":
        rows = _csv_rows(data, file_name)
    elif ext == ".xlsx":
        rows = _xlsx_rows(data, file_name)
    else:
        rows = _xls_rows(data, file_name)
    return _plans(rows, file_name)


# ----- reading the cells -----


def _csv_rows(data: bytes, file_name: str) -> list[list[Cell]]:
    for encoding in ("utf-8-sig", "cp1252"):  # Excel writes either
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise SpreadsheetError(f"The file '{file_name}' is not text (UTF-8 or Windows-1252)")
    try:
        return _bounded([_csv_cell(c) for c in row] for row in csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise SpreadsheetError(f"The file '{file_name}' is not CSV: {e}") from None


def _csv_cell(text: str) -> Cell:
    """A number or TRUE/FALSE written bare is such a cell (as a spreadsheet program reads it)."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    try:
        value = ast.literal_eval(stripped)
    except _LITERAL_ERRORS:
        return text
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return text


def _xlsx_rows(data: bytes, file_name: str) -> list[list[Cell]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            unzipped = sum(i.file_size for i in z.infolist())
    except zipfile.BadZipFile:
        raise SpreadsheetError(f"The file '{file_name}' is not an Excel .xlsx workbook") from None
    if unzipped > MAX_UNZIPPED_BYTES:
        raise SpreadsheetError(
            f"The workbook '{file_name}' unpacks to {unzipped} bytes, more than the "
            f"{MAX_UNZIPPED_BYTES} allowed"
        )
    import openpyxl  # only where a spreadsheet is read: the gateway starts without it

    try:
        with warnings.catch_warnings():
            # openpyxl warns about styles and extensions it does not read; values are intact.
            warnings.simplefilter("ignore")
            wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            try:
                if not wb.worksheets:
                    return []
                return _bounded(list(r) for r in wb.worksheets[0].iter_rows(values_only=True))
            finally:
                wb.close()
    except SpreadsheetError:
        raise
    except Exception as e:  # a damaged workbook: openpyxl raises many kinds
        raise SpreadsheetError(f"The workbook '{file_name}' cannot be read: {e}") from None


def _xls_rows(data: bytes, file_name: str) -> list[list[Cell]]:
    import xlrd

    try:
        book = xlrd.open_workbook(file_contents=data, on_demand=True)
        try:
            if book.nsheets == 0:
                return []
            sheet = book.sheet_by_index(0)
            return _bounded(
                [_xls_cell(sheet.cell(r, c), book.datemode) for c in range(sheet.ncols)]
                for r in range(sheet.nrows)
            )
        finally:
            book.release_resources()
    except SpreadsheetError:
        raise
    except Exception as e:  # xlrd.XLRDError and what a damaged file raises
        raise SpreadsheetError(f"The workbook '{file_name}' cannot be read: {e}") from None


def _xls_cell(cell: Any, datemode: int) -> Cell:
    import xlrd

    if cell.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
        return None
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(cell.value)
    if cell.ctype == xlrd.XL_CELL_DATE:
        return xlrd.xldate.xldate_as_datetime(cell.value, datemode)
    if cell.ctype == xlrd.XL_CELL_ERROR:
        return _ErrorCell(xlrd.error_text_from_code.get(cell.value, "#ERROR"))
    return cell.value


@dataclass(frozen=True)
class _ErrorCell:
    text: str


def _bounded(rows: Iterable[list[Cell]]) -> list[list[Cell]]:
    """The rows, refusing a sheet with more plan rows than `MAX_PLANS` before reading it all."""
    out: list[list[Cell]] = []
    filled = 0
    for row in rows:
        out.append(row)
        if any(not _empty(c) for c in row):
            filled += 1
            if filled > MAX_PLANS + 1:  # the header is a filled row too
                raise SpreadsheetError(
                    f"The spreadsheet has more than {MAX_PLANS} plans: split it into several files"
                )
    return out


# ----- from cells to items -----


def _empty(cell: Cell) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: as spreadsheet programs name columns."""
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("A") + rem) + name
    return name


def _plans(rows: list[list[Cell]], file_name: str) -> Plans:
    header_at = next((i for i, row in enumerate(rows) if any(not _empty(c) for c in row)), None)
    if header_at is None:
        raise SpreadsheetError(
            f"The spreadsheet '{file_name}' has no cells filled: row 1 must name the columns "
            "(plan name, args, then one keyword argument each) and each row below is a plan"
        )
    header = rows[header_at]
    errors: list[str] = []
    kwarg_names = _kwarg_names(header, header_at + 1, errors)
    items: list[dict[str, Any]] = []
    item_rows: list[int] = []
    for index in range(header_at + 1, len(rows)):
        row = rows[index]
        if all(_empty(c) for c in row):
            continue
        row_no = index + 1
        item = _item(row, row_no, kwarg_names, errors)
        if item is not None:
            items.append(item)
            item_rows.append(row_no)
    if errors:
        raise SpreadsheetError(_listing(f"The spreadsheet '{file_name}' has errors", errors))
    if not items:
        raise SpreadsheetError(
            f"The spreadsheet '{file_name}' holds no plans: only its header row "
            f"(row {header_at + 1}) is filled"
        )
    return Plans(items=items, rows=item_rows)


def _kwarg_names(header: Sequence[Cell], row_no: int, errors: list[str]) -> dict[int, str]:
    """Column index -> keyword name, for columns 3 on; problems go to `errors`."""
    names: dict[int, str] = {}
    seen: dict[str, str] = {}
    for col in range(2, len(header)):
        cell = header[col]
        if _empty(cell):
            continue  # a column without a name: an error only if a row fills it
        where = f"row {row_no}, column {column_letter(col)}"
        name = cell.strip() if isinstance(cell, str) else cell
        if not isinstance(name, str) or not name.isidentifier():
            errors.append(
                f"{where}: {cell!r} is not a parameter name (row {row_no} names the columns: "
                "plan name, args, then one keyword argument each)"
            )
            continue
        key = name.lower()
        if key in seen:
            errors.append(f"{where}: the parameter '{name}' has a column already ({seen[key]})")
            continue
        seen[key] = f"column {column_letter(col)}"
        names[col] = name
    return names


def _item(
    row: Sequence[Cell], row_no: int, kwarg_names: dict[int, str], errors: list[str]
) -> dict[str, Any] | None:
    before = len(errors)
    name_cell = row[0] if row else None
    if _empty(name_cell):
        errors.append(f"row {row_no}: no plan name in column A, but other cells are filled")
        return None
    name = _plan_name(name_cell, row_no, errors)
    args: list[Any] = []
    if len(row) > 1 and not _empty(row[1]):
        value = _value(row[1], row_no, 1, errors, as_args=True)
        if isinstance(value, list):
            args = value
    kwargs: dict[str, Any] = {}
    for col in range(2, len(row)):
        if _empty(row[col]):
            continue
        if col not in kwarg_names:
            errors.append(
                f"row {row_no}, column {column_letter(col)}: a value in a column that has no "
                "parameter name in the header row"
            )
            continue
        value = _value(row[col], row_no, col, errors)
        if value is not _BAD:
            kwargs[kwarg_names[col]] = value
    if len(errors) > before or name is None:
        return None
    item: dict[str, Any] = {"item_type": "plan", "name": name}
    if args:
        item["args"] = args
    if kwargs:
        item["kwargs"] = kwargs
    return item


def _plan_name(cell: Cell, row_no: int, errors: list[str]) -> str | None:
    name = cell
    if isinstance(cell, str):
        name = cell.strip()
        # Quoted ('count') or not (count), as the reference allows.
        with contextlib.suppress(*_LITERAL_ERRORS):
            name = ast.literal_eval(name)
    if not isinstance(name, str):
        errors.append(f"row {row_no}, column A: the plan name {cell!r} is not text")
        return None
    if not name.isidentifier():
        errors.append(f"row {row_no}, column A: {name!r} is not a valid plan name")
        return None
    return name


_BAD = object()


def _value(cell: Cell, row_no: int, col: int, errors: list[str], *, as_args: bool = False) -> Any:
    where = f"row {row_no}, column {column_letter(col)}"
    if isinstance(cell, _ErrorCell):
        errors.append(f"{where}: the cell holds the error {cell.text}")
        return _BAD
    if isinstance(cell, bool):
        value: Any = cell
    elif isinstance(cell, int | float):
        if not math.isfinite(cell):
            errors.append(f"{where}: {cell!r} is not a finite number")
            return _BAD
        # Spreadsheet programs keep every number as a float: 10.0 is the 10 that was typed.
        value = int(cell) if isinstance(cell, float) and cell.is_integer() else cell
    elif isinstance(cell, str):
        text = cell.strip()
        if len(text) > MAX_CELL_CHARS:
            errors.append(f"{where}: the cell holds {len(text)} characters, over {MAX_CELL_CHARS}")
            return _BAD
        try:
            value = ast.literal_eval(f"[{text}]" if as_args else text)
        except _LITERAL_ERRORS:
            hint = (
                " (names of devices and plans go in quotes: 'det1')"
                if text.replace(".", "_").isidentifier()
                else ""
            )
            errors.append(f"{where}: {_short(text)} is not a Python literal{hint}")
            return _BAD
    else:
        errors.append(
            f"{where}: a cell of type {type(cell).__name__} ({_short(str(cell))}); only "
            "numbers, true/false and text (Python literals) are understood"
        )
        return _BAD
    if as_args and not isinstance(value, list):
        value = [value]
    problem = _not_json(value)
    if problem:
        errors.append(f"{where}: {_short(str(cell))} {problem}")
        return _BAD
    return _lists(value)


def _not_json(value: Any) -> str | None:
    """Why `value` cannot be sent as JSON, or None."""
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds a number that is not finite"
    if isinstance(value, list | tuple):
        return next((p for p in map(_not_json, value) if p), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "holds a dictionary whose keys are not all text"
        return next((p for p in map(_not_json, value.values()) if p), None)
    return f"holds a {type(value).__name__}, which cannot be sent (JSON has no such type)"


def _lists(value: Any) -> Any:
    """Tuples as lists, as JSON carries them."""
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _listing(head: str, problems: Sequence[str]) -> str:
    shown = list(problems[:MAX_ERRORS_SHOWN])
    if len(problems) > MAX_ERRORS_SHOWN:
        shown.append(f"... and {len(problems) - MAX_ERRORS_SHOWN} more")
    return f"{head} (nothing was added to the queue): " + "; ".join(shown)


# ----- after the queue service answered -----


def explain_batch(reply: dict[str, Any], rows: Sequence[int] | None) -> dict[str, Any]:
    """The batch reply with its `msg` naming the row (or item) of every refused item."""
    results = reply.get("results")
    if reply.get("success") or not isinstance(results, list):
        return reply
    problems = [
        f"{f'row {rows[i]}' if rows is not None and i < len(rows) else f'item {i + 1}'}: "
        f"{r.get('msg', '')}"
        for i, r in enumerate(results)
        if isinstance(r, dict) and not r.get("success", False)
    ]
    if not problems:
        return reply
    return {**reply, "msg": _listing(str(reply.get("msg", "")), problems)}


def items_of(values: Any) -> Iterator[dict[str, Any]]:
    """The items a custom conversion returned, each a dict (a plan unless it says otherwise)."""
    if not isinstance(values, list | tuple):
        raise SpreadsheetError(
            f"Spreadsheet processing function returned value of '{type(values)}' "
            "type instead of 'list' or 'tuple'"
        )
    for i, item in enumerate(values):
        if not isinstance(item, dict):
            raise SpreadsheetError(
                f"Spreadsheet processing function returned a {type(item).__name__} as item "
                f"{i + 1}, not a dictionary"
            )
        yield {"item_type": "plan", **item}

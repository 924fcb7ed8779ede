"""Reading the CSV files of a dataset (UDIVA's parts and sessions, PerFeX's long CSV and ratings,
an OpenFace labels CSV) as tables of text cells, with the checks every adapter wants: a clear
error naming the file for a missing one, one that does not parse, a repeated or missing column,
and a hint when Excel saved it with another separator.

    from personality.csv_tables import read_table
    df = read_table(Path("parts_train.csv"), ["ID"])      # (rows, columns), every cell a str
    for line, row in df.iterrows(): ...                   # index: the row's line in the file

Messages name a row by its line in the file (1-based, the header's line 1), the number an
editor shows: pandas skips blank lines, and reading its row count as the line (i + 2) named
the wrong row after one.

Used by personality/datasets.py and personality/datasets_au.py (and the folder source's header
check in stages/ingest.py), and by personality/openface.py (check_cells, row_lines). A header
over MAX_COLUMNS is refused before parsing (personality.common.check_width, which the OpenFace
reader shares), and so is a cell over MAX_CELL_CHARS or a row over MAX_ROW_CHARS (CellLimitError):
rows are not counted.
"""
from __future__ import annotations

import collections
import csv
import functools
import mmap
import warnings
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from personality.common import (MAX_CELL_CHARS, MAX_ROW_CHARS, StageInputError, check_width,
                                get_logger)

log = get_logger("ingest")

LABELS_WIDTH = "(a labels CSV has tens, PerFeX's AU CSV under a hundred); not read"


class CellLimitError(StageInputError):
    """A cell over MAX_CELL_CHARS or a row over MAX_ROW_CHARS: the file is refused, where another
    record the csv module cannot read is left for pandas to judge (_csv_layout)."""


def repeated_columns(header: list[str]) -> list[str]:
    """The names `header` gives more than once, sorted ("" left out: trailing commas). Counted
    once: `header.count(c)` per column was quadratic, 205 s for 10,000 pandas columns."""
    return sorted(c for c, n in collections.Counter(header).items() if c and n > 1)


def read_table(path: Path, required: list[str], *, any_case: tuple = ()) -> pd.DataFrame:
    """A CSV as text cells, indexed by each row's line in the file (`line`, as _csv_layout counts them);
    `any_case`: columns taken in any case (`Subject` is `subject`)."""
    check_table_file(path)
    # one pass of the csv module, before pandas: it refuses an oversized cell (CellLimitError)
    header, lines = _csv_layout(path)
    kw = dict(dtype=str, keep_default_na=False, skipinitialspace=True)
    try:
        with warnings.catch_warnings():
            # index_col=False: a first row with more fields than the header is an error, not
            # every row's index (pandas shifted every column one to the left)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False, **kw)
    except pd.errors.ParserWarning:
        df = pd.read_csv(path, nrows=0, **kw)  # the header: saved with `;`? (separator_hint)
        if not separator_hint(list(df.columns)):
            raise StageInputError(f"{path}: not a readable CSV: its first row has more fields "
                                  "than its header (a stray comma?)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise StageInputError(f"{path}: not a readable CSV: {exc}") from None
    df.columns = columns_any_case([c.strip() for c in df.columns], any_case)
    # pandas renames an exact repeat (`ID,ID` -> ID, ID.1): the file's own header says it
    if repeated := repeated_columns(list(df.columns)) or repeated_columns(
            columns_any_case(header, any_case)):
        raise StageInputError(f"{path}: column(s) {', '.join(repeated)} given twice")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StageInputError(f"{path}: missing column(s) {', '.join(missing)}"
                              + separator_hint(list(df.columns)))
    df.index = _line_index(path, lines, len(df))
    return df


def check_table_file(path: Path, not_found: str = "not found") -> None:
    """StageInputError naming `path` when it is missing, unreadable or wider than a labels or AU
    table can be (check_width reads its first line only)."""
    if not path.exists():
        raise StageInputError(f"{path}: {not_found}")
    try:
        check_width(path, LABELS_WIDTH)
    except OSError as exc:
        raise StageInputError(f"{path}: cannot be read: {exc.strerror}") from None


def csv_records(path: Path, *, strict: bool = False) -> Iterator[tuple[int, list[str], str]]:
    """(line, fields, text) of each record of a CSV, blank ones too: `line` the 1-based line of
    the file it starts on, `fields` as the csv module splits it (skipinitialspace, as the
    readers here), `text` its raw lines (a quoted field may span several). A BOM is no part of
    the first field. StageInputError naming the file (and the line, for a record the csv module
    refuses: an unclosed quote under `strict`) when unreadable; CellLimitError naming the line
    and the limit for a cell over MAX_CELL_CHARS or a record over MAX_ROW_CHARS (its last
    line's \\n, \\r\\n or \\r not counted), whose text is never read whole (a line is read
    MAX_ROW_CHARS + 2 characters at most)."""
    raw: list[str] = []  # the lines of the record being read
    size = 0  # their characters

    def lines(f) -> Iterator[str]:
        nonlocal size
        # + 2: a row at the limit and its \r\n in one read (a split one is over it anyway)
        for line in iter(functools.partial(f.readline, MAX_ROW_CHARS + 2), ""):
            size = size + len(line) if raw else len(line)
            # the terminator ends the row, no part of it (as the last line without one)
            if size - (len(line) - len(line.rstrip("\r\n"))) > MAX_ROW_CHARS:
                raise _limit(path, end + 1, f"a row over {MAX_ROW_CHARS:,}")
            raw.append(line)
            yield line

    end = 0  # the last line of the record before
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(lines(f), skipinitialspace=True, strict=strict)
            for fields in reader:
                text = "".join(raw)
                # a cell is no longer than its record: most records need no look at each cell
                if len(text) > MAX_CELL_CHARS and max(map(len, fields), default=0) > MAX_CELL_CHARS:
                    raise _limit(path, end + 1, f"a cell over {MAX_CELL_CHARS:,}")
                yield end + 1, fields, text
                raw.clear()
                end = reader.line_num
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):  # its own limit (128 Ki) is over ours
            raise _limit(path, end + 1, f"a cell over {MAX_CELL_CHARS:,}") from None
        raise StageInputError(f"{path}: not a readable CSV: line {end + 1}: {exc}") from None
    except UnicodeDecodeError as exc:  # read in blocks: the line is unknown, the byte is not
        raise StageInputError(f"{path}: not a readable CSV: {exc}") from None


def _limit(path: Path, line: int, what: str) -> CellLimitError:
    return CellLimitError(f"{path}: line {line}: {what} characters (a CSV here holds ids, paths "
                          f"and numbers: a cell at most {MAX_CELL_CHARS:,} characters, a row "
                          f"{MAX_ROW_CHARS:,}); not read")


def check_cells(path: Path) -> None:
    """CellLimitError naming `path`, the line and the limit for a cell over MAX_CELL_CHARS or a
    row over MAX_ROW_CHARS, for a reader that gives the file to pandas without a csv pass of its
    own (OpenFace CSVs). A file with no `"` and no line over MAX_CELL_CHARS bytes holds no such
    cell (an unquoted cell lies within a line): every OpenFace CSV passes on that look at its
    bytes (0.2 ms for 300 frames of 714 columns; the csv module would take 15 ms, 40% of the
    read). Another file goes through csv_records, whose other complaints are left to pandas.
    OSError when it cannot be opened."""
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                if view.find(b'"') < 0 and _short_lines(view):
                    return
        except ValueError:  # an empty file cannot be mapped: pandas says what is wrong with it
            return
    _csv_layout(path)


def _short_lines(view: mmap.mmap) -> bool:
    """Whether no line of `view` is over MAX_CELL_CHARS bytes (\\r\\n counts the \\r). Looked at
    as the last newline of each window of MAX_CELL_CHARS + 1 bytes, a window starting after the
    newline before: a C search over the file, not a Python step per line."""
    start = 0
    while len(view) - start > MAX_CELL_CHARS:
        end = view.rfind(b"\n", start, start + MAX_CELL_CHARS + 1)
        if end < 0:
            return False
        start = end + 1
    return True


def _csv_layout(path: Path) -> tuple[list[str], Sequence[int]]:
    """What pandas reads as the header (the first record that is not blank, its names stripped)
    and the line each of its data rows starts on (1-based). pandas leaves out a line of spaces
    and tabs only; a line `""` or `,` is a row of empty cells to it, and is one here. ([], [])
    when the csv module cannot read the file (pandas judges it: _line_index then says so);
    CellLimitError for a cell or row over the limits. The lines as 8-byte ints: read_table holds
    them while pandas parses (a list took 36 MB more at that peak for a million rows)."""
    header: list[str] | None = None
    lines = array("q")
    try:
        for line, fields, text in csv_records(path):
            if not text.strip(" \t\r\n"):
                continue
            if header is None:
                header = [f.strip() for f in fields]
            else:
                lines.append(line)
    except CellLimitError:
        raise
    except (StageInputError, OSError):
        return [], array("q")
    return header or [], lines


def row_lines(path: Path, n_rows: int) -> pd.Index:
    """The line each of the `n_rows` rows pandas read from `path` (its defaults for blank lines)
    starts on, as read_table's index: for a reader without a csv pass of its own to name a row
    in a message (a pass of the csv module: ~40% of an OpenFace CSV's read, so only then)."""
    return _line_index(path, _csv_layout(path)[1], n_rows)


def _line_index(path: Path, lines: Sequence[int], n_rows: int) -> pd.Index:
    """read_table's index: each row's line (`lines`, _csv_layout's). Should the csv module split
    the file into another number of rows than pandas (none found so far), the rows are numbered
    as pandas counts them (row i at line i + 2), with a warning that the numbers are off after a
    blank line."""
    if len(lines) != n_rows:
        log.warning("%s: %d rows to pandas, %d to the csv module: row numbers in messages count "
                    "the rows and are off after a blank line", path, n_rows, len(lines))
        lines = list(range(2, n_rows + 2))
    return pd.Index(np.asarray(lines, dtype=np.int64), name="line")  # an array: no loop


def columns_any_case(header: list[str], names: tuple[str, ...]) -> list[str]:
    """`header` with each column that is one of `names` in another case (`Subject`, `SPLIT`, `o`)
    spelled as `names` spells it: an optional `Subject` column was ignored without a word."""
    spelled = {n.casefold(): n for n in names}
    return [spelled.get(c.casefold(), c) for c in header]


def separator_hint(header: list[str]) -> str:
    """A CSV header read as one column that holds `;`, a tab or `|`: the file was saved with
    another separator (Excel does `;` with decimal commas in many European locales). '' else."""
    if len(header) != 1:
        return ""
    found = next((sep for sep in (";", "\t", "|") if sep in str(header[0])), None)
    if found is None:
        return ""
    shown = {"\t": "tab"}.get(found, repr(found))
    return (f"; its header is one column split by {shown}: save it as comma-separated CSV, "
            "with decimal points (Excel in some locales writes ';' and decimal commas)")

"""Reading the CSV files of a dataset (UDIVA's parts and sessions, PerFeX's long CSV and ratings,
an OpenFace labels CSV) as tables of text cells, with the checks every adapter wants: a clear
error naming the file for a missing one, one that does not parse, a repeated or missing column,
and a hint when Excel saved it with another separator.

    from personality.csv_tables import read_table
    df = read_table(Path("parts_train.csv"), ["ID"])      # (rows, columns), every cell a str

Used by personality/datasets.py and personality/datasets_au.py (and the folder source's header
check in stages/ingest.py).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from personality.common import StageInputError


def read_table(path: Path, required: list[str], *, any_case: tuple = ()) -> pd.DataFrame:
    """A CSV as text cells; `any_case`: columns taken in any case (`Subject` is `subject`)."""
    if not path.exists():
        raise StageInputError(f"{path}: not found")
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
    if repeated := sorted({c for c in df.columns if list(df.columns).count(c) > 1}):
        raise StageInputError(f"{path}: column(s) {', '.join(repeated)} given twice")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StageInputError(f"{path}: missing column(s) {', '.join(missing)}"
                              + separator_hint(list(df.columns)))
    return df


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

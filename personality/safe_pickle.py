"""Pickles of plain data only: ChaLearn's annotation files (and any other label pickle) are
untrusted input, so they are never given to pickle.load. The unpickler here refuses every global
(a class, a function such as os.system) but numpy's numeric scalars, which it rebuilds as Python
numbers by functions of its own.

    from personality.safe_pickle import load_data_pickle
    labels = load_data_pickle(Path("annotation_training.pkl"))   # dict of dicts of floats

tests/test_datasets.py feeds it hostile pickles (os.system, a REDUCE of a class, truncated
files) and pickles built like the official ChaLearn files (Python 2, numpy.float64 values).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from personality.common import StageInputError

__all__ = ["RestrictedUnpickler", "load_data_pickle"]


# numpy's numeric scalar types by dtype code: ChaLearn's official annotation pickles hold
# numpy.float64 values (pickled as numpy.core.multiarray.scalar(dtype('f8'), <8 bytes>))
_NUMERIC_DTYPES = {f"{kind}{size}" for kind, sizes in (("f", (2, 4, 8)), ("i", (1, 2, 4, 8)),
                                                       ("u", (1, 2, 4, 8))) for size in sizes}
_NUMERIC_DTYPES.add("b1")


def _numpy_dtype(spec, align=False, copy=False):
    """numpy.dtype as a pickle may call it, for a plain numeric dtype only (no object dtype)."""
    if not isinstance(spec, str) or spec.lstrip("<>=|") not in _NUMERIC_DTYPES:
        raise pickle.UnpicklingError(f"numpy.dtype({spec!r}) is not a plain numeric dtype")
    return np.dtype(spec, bool(align), bool(copy))


def _numpy_scalar(dtype, data=None):
    """numpy's scalar reconstructor, for numeric dtypes: a Python number, never an object."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "fiub":
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {dtype!r}: not a number")
    raw = data.encode("latin1") if isinstance(data, str) else data  # Python 2 str -> bytes
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a numpy {dtype} scalar of {len(raw or b'')} bytes")
    return np.frombuffer(raw, dtype=dtype)[0].item()


# the only globals a label pickle may name: numpy's numeric scalars (numpy 1 and 2 spellings)
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "scalar"): _numpy_scalar,
                    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
                    ("numpy", "dtype"): _numpy_dtype}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle plain data only. Any global (a class, a function such as os.system) is refused,
    but for numpy's numeric scalars, rebuilt here as Python numbers by functions of our own
    (numpy's reconstructors are never called): containers, strings and numbers need no other,
    so a label pickle never has a reason to ask."""

    def __init__(self, file, *, source: str):
        super().__init__(file, encoding="latin1")  # Python 2 `str` arrives as latin-1 text
        self._source = source

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        raise StageInputError(f"{self._source}: refused to load: the pickle asks for "
                              f"{module}.{name}; only dicts, lists, strings and numbers "
                              "(numpy's numeric scalars included) are accepted (is this file "
                              "what it claims to be?)")


def load_data_pickle(path: Path) -> object:
    """Load a pickle of plain data (dict / list / tuple / str / bytes / int / float / bool / None)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StageInputError(f"{path}: cannot read: {exc}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=str(path)).load()
    except StageInputError:
        raise
    except Exception as exc:  # truncated / not a pickle / unsupported opcode
        raise StageInputError(f"{path}: not a readable pickle: {type(exc).__name__}: {exc}") \
            from None

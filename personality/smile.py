"""openSMILE feature sets (eGeMAPSv02, ComParE_2016) as per-video functionals of a decoded wave.

    from personality import smile
    exs = smile.extractors(["egemaps"])          # once per process: openSMILE's configuration
    smile.all_functionals(y, 16000, exs)         # y (n,) float32 -> {"egemaps_<official name>": v}
    python -m personality.smile                  # prints each set's column count and first names

The `opensmile` wheel (pinned in requirements.txt) ships the native library and the official
configuration files, so nothing is downloaded. Each set runs at feature level Functionals on the
signal the audio stage already decoded (`Smile.process_signal`: no second decode, no file) and
gives one row of floats, stored under openSMILE's official names behind a prefix: `egemaps_` for
eGeMAPSv02's 88 (Eyben et al. 2016, the names in personality/schemas.py: EGEMAPS_V02) and
`compare_` for ComParE_2016's 6373 (the INTERSPEECH 2016 challenge set, the feature family of the
ChaLearn 2016 audio baselines).

Errors: a wave openSMILE cannot take (non-finite samples; a failure of the native library) raises
`SmileError` with a one-line message; the audio stage adds the video's path and marks the row.
A wave shorter than openSMILE's first frame gives NaN (openSMILE's own "segment too short" case).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

from personality.schemas import AUDIO_FUNCTIONAL_PREFIXES, EGEMAPS_V02

# set name in params (audio.feature_sets) -> (opensmile.FeatureSet member, column prefix)
SETS = {"egemaps": ("eGeMAPSv02", AUDIO_FUNCTIONAL_PREFIXES["egemaps"]),
        "compare": ("ComParE_2016", AUDIO_FUNCTIONAL_PREFIXES["compare"])}
PREFIXES = tuple(prefix for _, prefix in SETS.values())


class SmileError(ValueError):
    """openSMILE could not process a wave; the message is one line."""


def extractor(name: str) -> Any:
    """An `opensmile.Smile` for set `name` (a key of SETS) at feature level Functionals, mono,
    one thread. Building one parses the configuration (~0.1 s): make it once per process."""
    import opensmile

    if name not in SETS:
        raise ValueError(f"unknown openSMILE feature set {name!r}; known: {sorted(SETS)}")
    member, _ = SETS[name]
    ex = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, member),
                         feature_level=opensmile.FeatureLevel.Functionals,
                         loglevel=1, num_workers=1)
    if name == "egemaps" and tuple(ex.feature_names) != EGEMAPS_V02:
        # the schema declares these names: a different openSMILE must not rename columns silently
        raise SmileError(f"opensmile {opensmile.__version__}: eGeMAPSv02 names differ from "
                         "personality/schemas.py EGEMAPS_V02")
    return ex


_EXTRACTORS: dict[str, Any] = {}  # set -> its Smile, built once per process


def extractors(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """{set: extractor} for the sets `names`, built on first use and kept for the process."""
    for name in names:
        if name not in _EXTRACTORS:
            _EXTRACTORS[name] = extractor(name)
    return {name: _EXTRACTORS[name] for name in names}


def column_names(name: str, ex: Any) -> list[str]:
    """The columns set `name` writes, in openSMILE's order: prefix + official feature name."""
    return [SETS[name][1] + f for f in ex.feature_names]


def nan_functionals(exs: dict[str, Any]) -> dict[str, float]:
    """The columns of every set of `exs`, all NaN: a video without usable audio."""
    return {c: math.nan for name, ex in exs.items() for c in column_names(name, ex)}


def functionals(y: np.ndarray, sr: int, ex: Any, name: str) -> dict[str, float]:
    """Set `name`'s functionals of the mono wave y (n,) float in [-1, 1] at `sr` Hz, computed by
    the extractor `ex` (from `extractor(name)`). Raises SmileError (one line) when openSMILE fails."""
    y = np.asarray(y, np.float32)
    if not np.isfinite(y).all():
        raise SmileError(f"openSMILE {SETS[name][0]}: the wave has non-finite samples")
    # opensmile multiplies by 32768 and casts to int16 without clipping: +1.0 would wrap to -32768
    y = np.clip(y, -1.0, 32767 / 32768)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Segment too short": NaN, as wanted
            table = ex.process_signal(y, sr)  # (1, F) DataFrame indexed by (start, end)
    except Exception as exc:  # the native library raises its own kinds, often multi-line
        what = " ".join(str(exc).split())[:300]
        raise SmileError(f"openSMILE {SETS[name][0]} failed: {type(exc).__name__}: {what}"
                         ) from None
    values = table.to_numpy(np.float64).reshape(-1)  # (F,)
    return dict(zip(column_names(name, ex), values.tolist()))


def all_functionals(y: np.ndarray, sr: int, exs: dict[str, Any],
                    timings: dict[str, float] | None = None) -> dict[str, float]:
    """Every set of `exs` (from `extractors`) on the wave y (n,): their columns in order; the
    seconds each set took into `timings`. Raises SmileError (one line) when openSMILE fails."""
    out: dict[str, float] = {}
    for name, ex in exs.items():
        t0 = time.perf_counter()
        out.update(functionals(y, sr, ex, name))
        if timings is not None:
            timings[name] = time.perf_counter() - t0
    return out


def main() -> None:
    for name in SETS:
        names = column_names(name, extractor(name))
        print(f"{name}: {len(names)} columns, e.g. {', '.join(names[:3])}")


if __name__ == "__main__":
    main()

"""PNG figures of the evaluate stage, logged to MLflow (DVC gets CSVs: see stages/evaluate.py).

    from personality.plots import scatter_grid, ccc_bars

    scatter_grid(y_true, y_pred, path="scatter.png", title="resnet18_face: test")  # (n, 5) arrays
    ccc_bars({"a": 0.31, "b": 0.12}, baseline_ccc=0.0, path="ccc.png",
             acc={"a": 0.90, "b": 0.89}, baseline_acc=0.88)

matplotlib is imported inside the functions with the Agg backend (no screen needed), so importing
this module costs nothing. Text that comes from a user (a clip's file name, a warning naming it)
goes through `plain_text` first: drawn as written, in whatever installed font has its characters.
"""
from __future__ import annotations

import functools
import math
import os
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from personality.schemas import TRAIT_NAMES, TRAITS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


UNDRAWABLE = "\N{REPLACEMENT CHARACTER}"  # stands for a character no installed font draws


def plain_text(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(texts, families): `texts` ready to draw as written, and the font families to draw them in.

    A '$' is escaped (matplotlib would read "clip_$5_$6.mp4" as mathematics: an error, or a
    wrong name in italics). A character the default font lacks (a clip named in Chinese) is
    drawn from an installed font that has it: `families` is matplotlib's default family followed
    by such fonts, those with more of the missing characters first, for matplotlib's glyph-by-glyph
    fallback (`fontfamily=families` on the text). A character no installed font has, or a control
    character, becomes U+FFFD: a visible mark instead of an empty box and a warning per glyph."""
    from matplotlib import font_manager, rcParams

    families = list(rcParams["font.family"])
    wanted = set("".join(texts)) - {"\n"}  # line breaks are layout, not glyphs
    control = {c for c in wanted if unicodedata.category(c).startswith("C")}
    missing = {ord(c) for c in wanted - control}
    missing -= _glyphs(font_manager.findfont(font_manager.FontProperties()))
    # matplotlib's own Last Resort font "has" every character, as a box: not a drawing of it
    fonts = {f.name: f.fname for f in font_manager.fontManager.ttflist
             if not f.name.startswith("Last Resort")}
    while missing and fonts:
        best = max(sorted(fonts), key=lambda name: len(missing & _glyphs(fonts[name])))
        found = missing & _glyphs(fonts.pop(best))
        if not found:
            break
        families.append(best)
        missing -= found
    dropped = control | {chr(c) for c in missing}
    drawn = ["".join(UNDRAWABLE if c in dropped else c for c in text).replace("$", r"\$")
             for text in texts]
    return drawn, families


@functools.lru_cache(maxsize=None)
def _glyphs(font_path: str) -> frozenset[int]:
    """The code points a font file maps to a glyph (read once per process: a CJK font's table
    takes ~0.1 s)."""
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(font_path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a font file matplotlib cannot open
        return frozenset()


def scatter_grid(y_true: np.ndarray, y_pred: np.ndarray, *, path: str | os.PathLike,
                 title: str = "", ccc: Mapping[str, float] | None = None,
                 traits: Sequence[str] = TRAITS, unit_scale: bool = True, dpi: int = 80,
                 ccc_ci: Mapping[str, Sequence[float]] | None = None) -> Path:
    """One predicted-vs-true panel per trait, identity line, CCC in each panel's title (with its
    [lo, hi] interval where `ccc_ci` gives one).

    y_true, y_pred: (n_videos, len(traits)); rows with a NaN target are left out of that panel.
    unit_scale: fix both axes to [0, 1] (label_scale "unit"); else fit them to the data (z-scores).
    """
    plt = _pyplot()
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    fig, axes = plt.subplots(1, len(traits), figsize=(2.6 * len(traits), 3.3), squeeze=False)
    for j, (trait, ax) in enumerate(zip(traits, axes[0])):
        keep = ~np.isnan(y_true[:, j])
        t, p = y_true[keep, j], y_pred[keep, j]
        ax.scatter(t, p, s=10, alpha=0.7)
        if unit_scale:
            lo, hi = 0.0, 1.0
        else:
            both = np.concatenate([t, p]) if t.size else np.array([-1.0, 1.0])
            lo, hi = float(np.min(both)), float(np.max(both))
            pad = 0.05 * (hi - lo or 1.0)
            lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(f"{TRAIT_NAMES.get(trait, trait)}\nCCC "
                     f"{_value_text((ccc or {}).get(trait), (ccc_ci or {}).get(trait))}",
                     fontsize=9)
        ax.set_xlabel("true", fontsize=8)
        if j == 0:
            ax.set_ylabel("predicted", fontsize=8)
        ax.tick_params(labelsize=7)
    return _save(fig, path, title=title, dpi=dpi)


def ccc_bars(ccc: Mapping[str, float], *, path: str | os.PathLike, baseline_ccc: float = 0.0,
             acc: Mapping[str, float] | None = None, baseline_acc: float | None = None,
             title: str = "", dpi: int = 80,
             ccc_ci: Mapping[str, Sequence[float]] | None = None,
             acc_ci: Mapping[str, Sequence[float]] | None = None, level: float = 0.95) -> Path:
    """Bar chart of each model's mean CCC (left) and mean ACC (right, when given), each with its
    [lo, hi] interval (coverage `level`) as an error bar where `ccc_ci` / `acc_ci` give one, the
    train-mean baseline drawn as a dashed line on both. A missing (None / NaN) value draws no
    bar."""
    plt = _pyplot()
    names = list(ccc)
    panels = [("mean CCC", ccc, baseline_ccc, ccc_ci)]
    if acc is not None:
        panels.append(("mean ACC (1 - MAE)", acc, baseline_acc, acc_ci))
    width = max(4.0, 0.55 * len(names) + 2.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
    x = np.arange(len(names))
    for ax, (label, values, base, intervals) in zip(axes[0], panels):
        heights = [_finite_or_nan(values.get(n)) for n in names]
        yerr = _error_bars(heights, [(intervals or {}).get(n) for n in names])
        if yerr is not None:
            ax.set_title(f"bars: {100 * level:g}% bootstrap interval over subjects", fontsize=7)
        ax.bar(x, np.nan_to_num(heights, nan=0.0), color="tab:blue", yerr=yerr, capsize=3)
        if base is not None and math.isfinite(base):
            shown = round(base, 6) + 0.0  # no "-0.000" for a rounding-level negative
            ax.axhline(base, color="tab:red", ls="--", lw=1.0,
                       label=f"train-mean baseline {shown:.3f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel(label, fontsize=8)
        finite = [h for h in heights if math.isfinite(h)] + (
            [base] if base is not None and math.isfinite(base) else [])
        if label.startswith("mean ACC") and finite:
            low = [h - d for h, d in zip(heights, yerr[0])] if yerr is not None else []
            high = [h + d for h, d in zip(heights, yerr[1])] if yerr is not None else []
            shown = [v for v in [*finite, *low, *high] if math.isfinite(v)]
            ax.set_ylim(max(0.0, min(shown) - 0.02), min(1.0, max(shown) + 0.02))
    return _save(fig, path, title=title, dpi=dpi)


def delta_matrix(names: Sequence[str], delta: np.ndarray, holds: np.ndarray, *,
                 path: str | os.PathLike, title: str = "", dpi: int = 100,
                 level: float = 0.95) -> Path:
    """Heat map of paired differences: cell (i, j) is row model i minus column model j (delta
    (k, k), NaN where not compared), annotated, with a "*" where its `level` interval excludes 0
    (holds (k, k) bool)."""
    plt = _pyplot()
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * k, 0.8 + 0.5 * k))
    lim = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1.0
    ax.imshow(delta, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(k):
        for j in range(k):
            if np.isfinite(delta[i, j]):
                ax.text(j, i, f"{delta[i, j]:+.2f}" + ("*" if holds[i, j] else ""),
                        ha="center", va="center", fontsize=6)
    ax.set_xticks(range(k), names, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_title(f"row minus column, mean CCC; *: its {100 * level:g}% interval excludes 0",
                 fontsize=7)
    return _save(fig, path, title=title, dpi=dpi)


def _error_bars(heights: Sequence[float], intervals: Sequence) -> np.ndarray | None:
    """(2, n_models) distances below and above each bar to its interval's ends (0 where a bar
    has none); None when no bar has one."""
    ends = np.array([[_finite_or_nan(v) for v in (pair or (None, None))] for pair in intervals],
                    np.float64).reshape(-1, 2)  # (n_models, 2)
    if not np.isfinite(ends).any():
        return None
    below, above = np.asarray(heights) - ends[:, 0], ends[:, 1] - np.asarray(heights)
    return np.nan_to_num(np.stack([below, above]), nan=0.0)


def _value_text(value, pair) -> str:
    """"0.611 [0.365, 0.834]", "0.611" without a finite interval, "n/a" without a value."""
    if not math.isfinite(_finite_or_nan(value)):
        return "n/a"
    ends = [_finite_or_nan(v) for v in (pair or (None, None))]
    return f"{value:.3f}" + (f" [{ends[0]:.3f}, {ends[1]:.3f}]"
                             if all(map(math.isfinite, ends)) else "")


def _finite_or_nan(value) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


def _save(fig, path: str | Path, *, title: str | None, dpi: int) -> Path:
    """Title, lay out, write the PNG (folders made) and free the figure."""
    import matplotlib.pyplot as plt

    if title:  # wrapped to the figure's width: a two-panel heat map's title ran off both edges
        fig.suptitle(title, fontsize=10, wrap=True)
    # laid out at the resolution it is written at: text does not scale exactly with the dpi
    # (glyphs snap to whole pixels), so a layout made at 100 dpi and written at 90 cut the first
    # characters off long feature names at the left edge
    fig.set_dpi(dpi)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

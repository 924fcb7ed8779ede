"""Figures of explanations: predict's report rows (models/explain.py) and the explain stage's
feature x trait heat maps (stages/explain.py).

    from personality.explain_plots import draw_gradcam, draw_occlusion, draw_contributions
    draw_occlusion(ax, explanation["audio_occlusion"]["logmel"], trait_names, title="...")
    heatmap_png({"r with prediction": r, "importance": imp}, features, path="x.png", title="...")

Callers own the figure (predict's report) or get a PNG (heatmap_png). matplotlib is imported
inside the functions with the Agg backend, so importing this module costs nothing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from personality.plots import _save
from personality.schemas import TRAITS


def _upsample(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a (h0, w0) map to (h, w) (pixel centres aligned)."""
    a = np.asarray(a, np.float64)
    ys = np.clip((np.arange(h) + 0.5) * a.shape[0] / h - 0.5, 0, a.shape[0] - 1)
    xs = np.clip((np.arange(w) + 0.5) * a.shape[1] / w - 0.5, 0, a.shape[1] - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, a.shape[0] - 1), np.minimum(x0 + 1, a.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx  # (h, w)
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def draw_gradcam(fig: Any, cell: Any, maps: Sequence, image: np.ndarray | None,
                 trait_names: Sequence[str], *, title: str = "") -> None:
    """Five overlays in grid cell `cell`: each trait's map (normalised to its own maximum) over
    `image` (uint8 (H, W, 3), the model's input crop); a map that is zero everywhere says the
    trait's score does not rise with any region at that layer. A class activation map (a
    model's own `cam`: logits, negative where a region lowers the score) is stretched from its
    minimum instead: one below zero everywhere (a trait scored under 0.5) still has a peak."""
    sub = cell.subgridspec(1, len(trait_names))
    maps = np.nan_to_num(np.asarray(maps, np.float64))  # (5, h, w)
    for k, name in enumerate(trait_names):
        ax = fig.add_subplot(sub[0, k])
        ax.axis("off")
        h, w = image.shape[:2] if image is not None else (64, 64)
        m = _upsample(maps[k], h, w)
        low = min(float(m.min()), 0.0)  # 0 for Grad-CAM's ReLU'd maps: m / max as before
        span = m.max() - low
        if image is not None:
            ax.imshow(image)
        ax.imshow((m - low) / span if span > 0 else np.zeros_like(m), cmap="jet", alpha=0.45,
                  vmin=0, vmax=1, extent=(0, w, h, 0))
        ax.set_title(name + ("" if span > 0 else " (flat)"), fontsize=9)
        if k == 0 and title:
            ax.text(0, -0.25 * h, title, fontsize=9, ha="left", va="bottom")


def draw_occlusion(ax: Any, part: Mapping, trait_names: Sequence[str], *, title: str = "") -> None:
    """A trait x second strip of `delta` (score minus score with that second muted) on a
    diverging scale centred on 0; seconds the model does not see are grey. Each window is drawn
    from its start in `seconds` (0, window_s, ... when not given: predict puts them on the
    frames' clock, where an audio track that starts late begins after 0) to the next one's, the
    last to where the audio ends (`audio_s` after the first start; a whole window when not
    given), so a 0.11 s clip's strip is 0.11 s wide, not a second."""
    import matplotlib

    delta = np.asarray([[np.nan if v is None else v for v in row] for row in part["delta"]],
                       np.float64)  # (5, n)
    lim = float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#CCCCCC")
    rows = np.arange(len(trait_names) + 1) - 0.5  # (6,) row edges
    im = ax.pcolormesh(occlusion_edges(part, delta.shape[1]), rows, np.ma.masked_invalid(delta),
                       cmap=cmap, vmin=-lim or -1, vmax=lim or 1)
    ax.set_ylim(rows[-1], rows[0])  # the first trait on top
    ax.set_yticks(range(len(trait_names)), trait_names, fontsize=8)
    unheard = bool(np.isnan(delta).all(axis=0).any())  # e.g. logmel's centre 3 s of a longer clip
    ax.set_xlabel("time (s)" + ("; grey: seconds outside the model's view" if unheard else ""))
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="score change")


def occlusion_edges(part: Mapping, n: int) -> np.ndarray:
    """(n + 1,) time edges of an occlusion part's n windows: their starts (`seconds`), then the
    audio's end, the first start + `audio_s` (older results without it: a whole window on)."""
    window = float(part.get("window_s") or 1.0)
    given = part.get("seconds")
    starts = np.asarray(given if given is not None and len(given) else np.arange(n) * window,
                        np.float64)[:n]  # (n,)
    length = part.get("audio_s")
    end = starts[0] + float(length) if length else starts[-1] + window
    return np.append(starts, max(end, starts[-1]))


def top_features(values: np.ndarray, names: Sequence[str], k: int) -> list[int]:
    """Row indices of the union of each column's k largest |values|, in first-seen order; rows
    of exact zeros are never shown (a score clipped at 0 or 1 that nothing single moves)."""
    rows: list[int] = []
    for j in range(values.shape[1]):
        column = np.abs(np.nan_to_num(values[:, j]))
        for i in np.argsort(-column, kind="stable")[:k]:
            if int(i) not in rows and column[i] > 0:
                rows.append(int(i))
    rows = rows or [0]
    return rows


# characters of a 9 pt title line over the report's full-width panel (~8.6 in)
TITLE_LINE_CHARS = 120


def draw_contributions(ax: Any, part: Mapping, trait_names: Sequence[str], *, title: str = "",
                       k: int = 4) -> None:
    """The top-k features of each trait (union), as a feature x trait grid of contributions
    with their values written in; red raises the score, blue lowers it."""
    values = np.asarray([[np.nan if v is None else v for v in row] for row in part["values"]],
                        np.float64)  # (F, 5)
    names = list(part["features"])
    rows = top_features(values, names, k)
    shown = values[rows]  # (r, 5)
    lim = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
    ax.imshow(shown.T, aspect="auto", cmap="RdBu_r", vmin=-(lim or 1), vmax=lim or 1)
    for (j, i), v in np.ndenumerate(shown.T):
        if np.isfinite(v):
            ax.text(i, j, f"{v:+.3f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 0.6 * (lim or 1) else "black")  # dark cells
    ax.set_yticks(range(len(trait_names)), trait_names, fontsize=8)
    ax.set_xticks(range(len(rows)), [names[i] for i in rows], rotation=35, ha="right",
                  fontsize=7)
    head = f"{title} [{part.get('units', 'score')}]"
    note = _unaccounted(part, values, trait_names)
    if note and len(head.rsplit("\n", 1)[-1] + note) > TITLE_LINE_CHARS:  # ran off the page
        note = "\n" + note.removeprefix("; ")
    ax.set_title(head + note, fontsize=9)


# of score(x) - score(0) left out by a clip's contributions: from here the report's panel says so,
# and predict shows occlusion in place of integrated gradients (models/contributions.py)
UNACCOUNTED_SHARE = 0.1


def _gap_change(values: Sequence, gap: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(gap (5,), score(x) - score(0) (5,)) of contributions `values` (F, 5) whose sum is `gap`
    short of that change; None is NaN."""
    values = np.asarray([[np.nan if v is None else v for v in row] for row in values], np.float64)
    gap = np.asarray([np.nan if v is None else v for v in gap], np.float64)  # (5,)
    return gap, np.nansum(values, axis=0) + gap


def unaccounted_share(values: Sequence, gap: Sequence) -> np.ndarray:
    """Per trait, the share of score(x) - score(0) that contributions `values` (F, 5) leave out,
    `gap` (5,) = score(x) - score(0) - their sum: |gap| / |change|, against 0.01 where the change
    is smaller (a clip scored as the baseline has nothing to share out): (5,)."""
    gap, change = _gap_change(values, gap)
    return np.abs(gap) / np.maximum(np.abs(change), 0.01)


def _unaccounted(part: Mapping, values: np.ndarray, trait_names: Sequence[str]) -> str:
    """How much of score(x) - score(0) the contributions leave out when it is a sizeable share
    (integrated gradients of a model whose path from 0 does not move a part of its input;
    occlusion of features that act only together), for the trait it is largest in; ''
    otherwise."""
    if part.get("completeness_gap") is None:
        return ""
    share = unaccounted_share(values, part["completeness_gap"])  # (5,)
    if not np.isfinite(share).any() or np.nanmax(share) < UNACCOUNTED_SHARE:
        return ""
    gap, change = _gap_change(values, part["completeness_gap"])
    k = int(np.nanargmax(share))
    return (f"; {trait_names[k]}: {gap[k]:+.3f} of the score change {change[k]:+.3f} not "
            "accounted for")


def heatmap_png(panels: Mapping[str, np.ndarray], features: Sequence[str], *,
                path: str | os.PathLike, title: str = "", traits: Sequence[str] = TRAITS,
                row_notes: Sequence[str] | None = None, dpi: int = 90) -> Path:
    """One PNG: a features x traits heat map per panel (same rows in every panel), each on its
    own symmetric scale, values written in. `row_notes`: one mark per row (e.g. the cue a
    feature measures), shown beside the feature names."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n_rows = len(features)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 2.5,
                                                      1.2 + 0.28 * n_rows), squeeze=False)
    for p, (ax, (name, values)) in enumerate(zip(axes[0], panels.items())):
        values = np.asarray(values, np.float64)  # (n_rows, 5)
        lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-(lim or 1), vmax=lim or 1)
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(traits)), list(traits))
        labels = [f"{f} ({c})" if c else f
                  for f, c in zip(features, row_notes or [""] * n_rows)] if p == 0 else []
        if not labels:
            labels = [""] * n_rows
        ax.set_yticks(range(n_rows), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
    return _save(fig, path, title=title, dpi=dpi)

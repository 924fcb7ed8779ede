"""predict's report: one PNG per scored clip, drawn from a `stages.predict.predict_video` result.

    write_report(result, Path("out/report.png"))

Trait bars with the model's test error band, the clip's warnings in red, a face thumbnail, an AU
timeline, and one row per explanation kind (Grad-CAM, audio occlusion, feature contributions:
personality/explain_plots.py). `report_data` reads what the report draws from predict's temporary
work folder before it goes. A module of its own so that stages/predict.py stays one screenful of
logic per function and under the file-size limit; it imports no other stage (tests/test_layering.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from personality import schemas
from personality.common import atomic_file, read_artifact, sweep_stale_temps
from personality.schemas import TRAITS

__all__ = ["report_data", "write_report", "draw_report", "on_frames_clock"]


def report_data(work: Path, vid: str) -> dict:
    """What the report draws, read before the temporary folder goes: AU curves and one crop."""
    data: dict = {}
    aus_path = work / "data" / "aus"
    if aus_path.exists():
        table = read_artifact("aus", path=aus_path)
        table = table[table["video_id"] == vid].sort_values("t")
        data["t"] = table["t"].to_numpy()
        data["aus"] = {a: table[a].to_numpy() for a in ("AU01_r", "AU04_r", "AU06_r", "AU12_r",
                                                        "AU25_r", "AU45_r") if a in table}
    faces_path = work / "data" / "faces"
    if faces_path.exists():
        faces = read_artifact("faces", path=faces_path, columns=["video_id", "face_found", "crop"])
        found = faces[faces["face_found"]]
        if len(found):
            data["crop"] = found["crop"].iloc[len(found) // 2]
    return data


def on_frames_clock(explanation: dict | None, offset_s: float | None, *, aligned: bool
                    ) -> dict | None:
    """`explanation` with its audio occlusion windows on the frames' clock, the AU timeline's.
    Each part's `seconds` (window starts, counted by models/explain.py from the features' second
    0) stay as they are when the features were `aligned` (the audio stage put them on the
    frames' clock: their second 0 is the first frame's), else are shifted by `offset_s` (the
    clip's audio_offset_s: personality/clip_clock.py; None, unknown: 0). The part keeps both as
    `audio_offset_s` and `audio_aligned`. In place; returns it."""
    shift = 0.0 if aligned else (offset_s or 0.0)
    for part in ((explanation or {}).get("audio_occlusion") or {}).values():
        part["seconds"] = [round(float(s) + shift, 6) for s in part["seconds"]]
        part["audio_offset_s"], part["audio_aligned"] = offset_s, aligned
    return explanation


# from this offset between the audio and the video on, the occlusion strip's title says it (an
# MP4's priming is cut by its edit list: 0; a phone's or webcam's late audio: 0.1-0.5 s)
OFFSET_NOTE_S = 0.05


def write_report(result: dict, path: Path) -> Path:
    """The report PNG at `path`, written atomically: drawn into a temp file beside it, then
    renamed in, so that a failure or a kill never leaves half a PNG (nor replaces a good one)."""
    sweep_stale_temps(path)  # the temp of a worker killed while drawing this report
    with atomic_file(path) as tmp:
        draw_report(result, tmp)
    return path


def draw_report(result: dict, path: Path) -> Path:
    """Draw the report PNG into `path` (any name: the format is given): trait bars with the test
    error band, an AU timeline, a face thumbnail, what drove the scores. The clip's name and its
    warnings are drawn as written (personality.plots.plain_text: '$', non-Latin scripts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from personality.plots import plain_text

    (name, *warnings), families = plain_text([Path(result["video"]).name,
                                              *_warning_lines(result.get("warnings") or [])])
    fig = _report_figure(result, name, warnings, families)
    try:
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


# characters of a warning line: the page is 10 in wide, a line of 9 pt text holds ~140 Latin ones
WARNING_LINE_CHARS = 110


def _warning_lines(warnings: list[str]) -> list[str]:
    """Each warning as lines that fit the page (a long one, a passed-over checkpoint's error or
    the extrapolation warning, ran off its right edge), its continuation lines indented."""
    import textwrap

    return [line for w in warnings for line in textwrap.wrap(
        "warning: " + w, WARNING_LINE_CHARS, subsequent_indent="    ")]


def _height_share(fig, note) -> float:
    """The share of `fig`'s height that the warnings text `note` (None: none) takes from its
    bottom, with a 0.1 in margin: the rest is the panels'. A share per line (0.04) left an inch
    of blank page above four lines of a 9 in figure and too little for one line of a short one."""
    if note is None:
        return 0.0
    height = note.get_window_extent(fig.canvas.get_renderer()).y1 / fig.dpi  # inches
    return min(0.5, (height + 0.1) / fig.get_figheight())


def _report_figure(result: dict, name: str, warnings: list[str], families: list[str]):
    """The report's figure; `name` and `warnings` (the clip's, as lines: `_warning_lines`) are
    ready to draw in `families`."""
    import cv2
    import matplotlib.pyplot as plt

    data = result.get("_report", {})
    rows = _explanation_rows(result.get("explanation"))
    fig = plt.figure(figsize=(10, 6.5 + 2.3 * len(rows)))
    grid = fig.add_gridspec(2 + len(rows), 3, height_ratios=[1.2, 1, *[1] * len(rows)])
    ax = fig.add_subplot(grid[0, :2])
    scores = [result[t] for t in TRAITS]
    err = result.get("test_error")
    ax.bar(range(5), scores, color="#4C72B0",
           yerr=[err[t] for t in TRAITS] if err else None, capsize=6,
           error_kw={"ecolor": "#333333", "label": "test MAE"})
    ax.set_xticks(range(5), _trait_labels(err, result.get("test_error_ci")), fontsize=8.5)
    if result.get("label_scale", "unit") == "unit":
        top = max(s + (err[t] if err else 0.0) for s, t in zip(scores, TRAITS))
        ax.set_ylim(0, max(1.05, top + 0.03))  # a whisker above 1 is drawn whole
    _label_bars(ax, scores, [err[t] for t in TRAITS] if err else [0.0] * 5)
    _draw_intervals(ax, result.get("prediction_interval"))
    if err:
        ax.set_ylabel("score (whisker: test MAE)" if not result.get("test_error_ci") else
                      "score (whisker: test MAE;\nticks: MAE [95% interval])", fontsize=9)
    ax.set_title(f"{name}: {result['model']}", fontfamily=families)
    note = fig.text(0.01, 0.005, "\n".join(warnings), color="#B22222", fontsize=9,
                    va="bottom", fontfamily=families) if warnings else None
    ax_face = fig.add_subplot(grid[0, 2])
    ax_face.axis("off")
    crop = data.get("crop")
    if crop is not None:
        img = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)
        ax_face.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        ax_face.set_title("aligned face")
    else:
        ax_face.text(0.5, 0.5, "no face crop", ha="center", va="center")
    ax_au = fig.add_subplot(grid[1, :])
    _draw_aus(ax_au, data, result.get("ends_at_s") or result.get("duration_s"))
    ax_seconds = _draw_explanation(fig, grid, rows, result)
    fig.tight_layout(rect=(0, _height_share(fig, note), 1, 1))
    if _any_au(data) and ax_seconds is not None:
        _align_time_axes(ax_au, ax_seconds)
    return fig


def _draw_aus(ax, data: dict, clip_s: float | None = None) -> None:
    """The AU timeline: six AU intensities against the clip's time, from 0 to the last sampled
    frame, or to the clip's end `clip_s` (seconds) when that frame is the first (a clip shorter
    than the sampling interval: a 0.12 s clip at 8 fps has one frame, at 0). The front-end
    computes AUs for every model (stages/predict_frontend.py), so only a clip without a face in
    any sampled frame has no timeline."""
    if not _any_au(data):  # every AU NaN: an empty panel with a legend read as a failed drawing
        ax.axis("off")
        ax.text(0.5, 0.5, "no AU timeline: " + ("no face in any sampled frame" if len(
            data.get("t", ())) else "no AUs for this clip"), ha="center", va="center")
        return
    t = np.asarray(data["t"], np.float64)
    for name, values in data["aus"].items():
        values = np.asarray(values, np.float64)
        # a value between frames without a face (or a clip's only frame) is no line: a dot
        dots = _isolated(values)  # clip_on off: a dot at t = 0 is drawn whole, not halved
        ax.plot(t, values, label=name, marker="o" if dots else None, markersize=3,
                clip_on=not dots)
    # the clip's sampled span: frames without a face are NaN, which autoscaling skips, so a
    # face that leaves (or enters late) made the axis end (or start) where it did
    end = float(np.nanmax(t)) if np.isfinite(t).any() else 0.0
    end = end if end > 0 else float(clip_s or 0.0)
    if end > 0:
        ax.set_xlim(0.0, end)
    ax.set_ylim(-0.1, 5.1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("intensity (0-5)")
    ax.legend(ncol=6, fontsize=8, loc="upper right")
    ax.set_title("Action Units")


def _isolated(values: np.ndarray) -> bool:
    """Whether some finite value of (T,) `values` has no finite neighbour (a line skips it)."""
    ok = np.isfinite(values)
    before, after = np.r_[False, ok[:-1]], np.r_[ok[1:], False]
    return bool((ok & ~before & ~after).any())


def _any_au(data: dict) -> bool:
    """Whether some AU of the timeline has a value (a frame with a face)."""
    values = (data.get("aus") or {}).values()
    return any(np.isfinite(np.asarray(v, np.float64)).any() for v in values)


def _align_time_axes(ax_au, ax_seconds) -> None:
    """The audio strip under the AU timeline reads second by second against it: the same time
    span, at the same place on the page (the strip's colour bar narrows both a little)."""
    # the clip's last sampled frame (_draw_aus), else the AUs' last one; no margin. An audio
    # track that starts before the video and was not aligned (on_frames_clock) begins left of 0
    au_end = ax_au.dataLim.x1 if ax_au.get_autoscalex_on() else ax_au.get_xlim()[1]
    heard = ax_seconds.get_xlim()
    span = (min(0.0, heard[0]), max(au_end, heard[1]))
    au, strip = ax_au.get_position(), ax_seconds.get_position()
    x0, x1 = max(au.x0, strip.x0), min(au.x1, strip.x1)
    for ax, box in ((ax_au, au), (ax_seconds, strip)):
        ax.set_xlim(*span)
        ax.set_position([x0, box.y0, x1 - x0, box.height])


def _trait_labels(err: dict | None, interval: dict | None) -> list[str]:
    """Tick labels: the trait, and under it the model's test MAE with its 95% interval over test
    subjects (metrics/evaluate.json) when evaluate measured this very checkpoint."""
    labels = []
    for t in TRAITS:
        label = schemas.TRAIT_NAMES[t]
        if err:
            label += f"\nMAE {err[t]:.2f}"
            if interval:
                label += f"\n[{interval[t][0]:.2f}, {interval[t][1]:.2f}]"
        labels.append(label)
    return labels


def _draw_intervals(ax, interval: dict | None) -> None:
    """Each trait's prediction interval (predict's `prediction_interval`: the range holding the
    clip's true score with probability `level`) as an orange line beside its bar, with a legend;
    nothing without one."""
    pairs = [(i, (interval or {}).get(t)) for i, t in enumerate(TRAITS)]
    pairs = [(i, pair) for i, pair in pairs if pair]
    if not pairs:
        return
    xs = [i + 0.3 for i, _ in pairs]
    ax.vlines(xs, [p[0] for _, p in pairs], [p[1] for _, p in pairs], color="#DD8452", lw=3,
              label=f"{100 * interval['level']:g}% prediction interval")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.22 * (high - low))  # headroom: the legend covers no bar
    ax.legend(loc="upper center", fontsize=7, ncol=2, framealpha=0.8)


def _label_bars(ax, scores: list[float], errors: list[float]) -> None:
    """Each bar's value, where neither the error whisker nor the title covers it: white at the
    foot of a bar tall enough to hold it above its whisker's lower end, else just above the
    whisker's top."""
    for i, (score, error) in enumerate(zip(scores, errors)):
        if score - error >= 0.12:
            ax.text(i, 0.02, f"{score:.2f}", ha="center", va="bottom", color="white",
                    fontweight="bold")
        else:
            ax.text(i, max(score, 0.0) + error + 0.02, f"{score:.2f}", ha="center", va="bottom")


def _explanation_rows(explanation: dict | None) -> list[str]:
    """The report's extra rows, in drawing order: audio occlusion (under the AU timeline), then
    Grad-CAM, then feature contributions."""
    kinds = (explanation or {}).get("kinds") or []
    return [k for k in ("audio_occlusion", "gradcam", "contributions") if k in kinds]


def _draw_explanation(fig, grid, rows: list[str], result: dict):
    """One row per explanation kind (the first input key of each kind); returns the audio
    occlusion strip's axes (a time axis), or None."""
    from personality.explain_plots import draw_contributions, draw_gradcam, draw_occlusion

    explanation = result["explanation"] if rows else {}
    images = result.get("_report", {}).get("explain_images") or {}
    names = [schemas.TRAIT_NAMES[t] for t in TRAITS]
    seconds = None
    for i, kind in enumerate(rows):
        key, part = next(iter(explanation[kind].items()))
        if kind == "gradcam":
            draw_gradcam(fig, grid[2 + i, :], part["maps"], images.get(key), names,
                         title=f"Grad-CAM per trait ({key}, layer {part['layer']})")
        elif kind == "audio_occlusion":
            seconds = fig.add_subplot(grid[2 + i, :])
            draw_occlusion(seconds, part, names, title=f"audio occlusion ({key}): score minus "
                           f"score with {_muted_words(part)} muted{_offset_note(part)}")
        else:
            draw_contributions(fig.add_subplot(grid[2 + i, :]), part, names,
                               title=_contributions_title(key, part))
    return seconds


def _muted_words(part: dict) -> str:
    """What each column of the occlusion strip mutes: "that second" (or "that 0.5 s window"),
    and the last window's own length when the audio's end makes it another (a 2.4 s track's
    third window is 0.40 s; a tail under a tenth of a window joins the last one)."""
    from personality.explain_plots import occlusion_edges

    window = float(part.get("window_s") or 1.0)
    words = "that second" if abs(window - 1.0) < 1e-6 else f"that {window:g} s window"
    last = float(np.diff(occlusion_edges(part, len(part["delta"][0])))[-1])
    if abs(last - window) >= 0.005:
        words += f" (the last one {last:.2f} s)"
    return words


def _offset_note(part: dict) -> str:
    """The occlusion strip's second title line when the audio starts apart from the video: what
    the features did with it (aligned: leading silence, or the start before the video left out;
    else each stream from its own start, the strip drawn where the audio plays)."""
    offset = part.get("audio_offset_s") or 0.0
    if abs(offset) < OFFSET_NOTE_S:
        return ""
    note = (f"\nthe audio starts {abs(offset):.2f} s {'after' if offset > 0 else 'before'} the "
            "video: ")
    if not part.get("audio_aligned"):  # a result from before, or audio.align_to_frames off
        return note + "drawn where it plays (the model's features take each stream from its start)"
    return note + ("the features (and this strip) start with that much silence" if offset > 0
                   else "the features leave that much out (before the first frame)")


def _contributions_title(key: str, part: dict) -> str:
    """The contributions panel's title: the method that gave the numbers, and for occlusion what
    it measures and why it stands in for integrated gradients (`why`, models/contributions.py)."""
    if part["method"] != "occlusion":
        return f"feature contributions ({key}, {part['method'].replace('_', ' ')})"
    title = f"feature contributions ({key}, occlusion: score minus score with that feature at 0)"
    if part.get("why"):
        title += f"\nin place of integrated gradients: {part['why']}"
    return title

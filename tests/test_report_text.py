"""A clip's name is drawn in its report as written (personality.plots.plain_text): a '$' is a
dollar, not mathematics that fails the report; a non-Latin name is drawn from an installed font
that has its characters; a character no font has is a visible U+FFFD, never a box and a warning
per glyph. The installed font is a tiny one built here (fontTools), so the test runs anywhere."""
from __future__ import annotations

import warnings

import matplotlib
import pytest
from matplotlib import font_manager, rcParams

from personality.plots import UNDRAWABLE, plain_text
from stages.predict_report import draw_report

CJK_NAME = "面试_01.mp4"


def _result(video: str, warning: str = "") -> dict:
    return {**{t: 0.5 for t in "OCEAN"}, "model": "perfex_cnn", "video": video,
            "warnings": [warning] if warning else [], "_report": {}}


def _tiny_font(path, family: str, chars: str):
    """A TrueType font named `family` whose only glyphs are squares for `chars`."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    names = [".notdef"] + [f"uni{ord(c):04X}" for c in chars]
    pen = TTGlyphPen(None)
    for x, y in ((100, 0), (100, 700), (800, 700), (800, 0)):
        (pen.lineTo if x != 100 or y != 0 else pen.moveTo)((x, y))
    pen.closePath()
    square = pen.glyph()
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({ord(c): n for c, n in zip(chars, names[1:])})
    fb.setupGlyf({n: square for n in names})
    fb.setupHorizontalMetrics({n: (1000, 100) for n in names})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": family, "styleName": "Regular"})
    fb.setupOS2()
    fb.setupPost()
    fb.save(str(path))
    return path


@pytest.fixture
def only_default_fonts(monkeypatch):
    """The font list as on a machine with no CJK font: matplotlib's own fonts only (DejaVu, STIX,
    Computer Modern, and Last Resort, which "has" every character as a box)."""
    bundled = [f for f in font_manager.fontManager.ttflist
               if f.fname.startswith(matplotlib.get_data_path())]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", bundled)
    return bundled


def _drawn_without_glyph_warnings(result: dict, path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph .* missing")
        draw_report(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dollar_in_a_clip_name_is_a_dollar(tmp_path):
    """Before: "price_$5_and_$6.mp4" was read as mathematics and cost the clip its report."""
    name = "price_$5_and_$6 a$\\foo$b.mp4"
    assert plain_text([name])[0] == [name.replace("$", r"\$")]
    _drawn_without_glyph_warnings(_result(name, warning=f"{name}: audio cut short"),
                                  tmp_path / "report.png")


def test_a_name_no_font_draws_gets_a_visible_mark(tmp_path, only_default_fonts):
    (drawn,), families = plain_text([CJK_NAME + "\x1b"])
    assert drawn == UNDRAWABLE * 2 + "_01.mp4" + UNDRAWABLE  # the escape byte too
    assert families == list(rcParams["font.family"])  # no fallback font added
    _drawn_without_glyph_warnings(_result(CJK_NAME), tmp_path / "report.png")


def test_a_non_latin_name_is_drawn_from_an_installed_font(tmp_path, only_default_fonts):
    font = _tiny_font(tmp_path / "tiny_cjk.ttf", "Tiny CJK Test", "面试")
    font_manager.fontManager.ttflist.append(font_manager.FontEntry(
        fname=str(font), name="Tiny CJK Test"))
    (drawn,), families = plain_text([CJK_NAME])
    assert drawn == CJK_NAME and families[-1] == "Tiny CJK Test"
    _drawn_without_glyph_warnings(_result(CJK_NAME, warning=f"{CJK_NAME}: no audio"),
                                  tmp_path / "report.png")


def test_a_long_warning_is_drawn_whole_inside_the_page(tmp_path, monkeypatch):
    """Warnings were drawn one line each: a long one (a better checkpoint passed over with its
    error, the extrapolation warning naming an eGeMAPS feature, several faces) ran off the
    page's right edge, its end lost. Now wrapped: every line inside the page, no word lost."""
    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    long = ("the checkpoint of bimodal_resnet, better on validation, is unreadable, so it was "
            "passed over: EngineError: /home/me/personality/data/models/bimodal_resnet/best.pt: "
            "not a usable checkpoint: training did not finish (no 'finished' flag); retrain it")
    short = "no audio track: scores can come from the face alone"
    draw_report({**_result("clip.mp4"), "warnings": [long, short]},
                tmp_path / "report.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figures[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    [text] = [t for t in fig.texts if t.get_text().startswith("warning: ")]
    assert text.get_window_extent(renderer).x1 <= fig.bbox.x1
    lines = text.get_text().split("\n")
    assert len(lines) > 2 and lines[-1] == "warning: " + short
    assert " ".join(line.strip() for line in lines[:-1]) == "warning: " + long


@pytest.mark.parametrize("lines", [1, 4, 9])
def test_the_warnings_sit_just_under_the_panels(tmp_path, monkeypatch, lines):
    """The panels kept 4% of the page's height per warning line, which is not a line's height:
    four lines under a contributions heat map left an inch of blank page above them. Now the
    space is the text's own: no panel (tick labels included) reaches into it, and the gap
    between the lowest panel and the first warning line is under 0.35 in."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    t = np.round(np.arange(18) / 7.5, 3)
    contributions = {"functionals": {"features": [f"AU{k:02d}_r_mean" for k in range(8)],
                                     "values": np.zeros((5, 8)).tolist(), "method": "linear"}}
    result = {**_result("clip.mp4"), "warnings": [f"warning {k}" for k in range(lines)],
              "_report": {"t": t, "aus": {"AU12_r": np.ones_like(t)}},
              "explanation": {"kinds": ["contributions"], "contributions": contributions}}
    draw_report(result, tmp_path / "report.png")
    fig = figures[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    [text] = [t for t in fig.texts if t.get_text().startswith("warning: ")]
    top = text.get_window_extent(renderer).y1
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes if ax.get_visible())
    assert lowest >= top, (lowest, top)
    assert (lowest - top) / fig.dpi < 0.35, (lowest - top) / fig.dpi


def test_the_au_timeline_spans_the_clip_when_the_face_leaves(tmp_path, monkeypatch):
    """A face in the first 0.5 s of a 2.3 s clip: the frames after it are NaN AUs, which
    matplotlib's autoscaling skipped, so the timeline ended at 0.5 s and read as the whole
    clip. Now it spans every sampled frame's time."""
    import numpy as np

    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    t = np.round(np.arange(18) / 7.5, 3)  # 8 fps-ish samples over 2.27 s
    au = np.where(t <= 0.5, 1.0, np.nan)
    result = {**_result("leaving.mp4"), "_report": {"t": t, "aus": {"AU12_r": au}}}
    draw_report(result, tmp_path / "report.png")
    [timeline] = [ax for ax in figures[0].axes if ax.get_title() == "Action Units"]
    assert timeline.get_xlim() == (0.0, float(t[-1]))


def test_the_au_timeline_of_a_clip_with_no_face_says_so(tmp_path, monkeypatch):
    """A clip with no face in any sampled frame (tests/fixtures/no_face.mp4, scored by the
    default functionals model or an audio model) has every AU NaN: the report drew an empty
    "Action Units" panel with a legend of six AUs and no line, as if they were all zero or the
    drawing failed. Now the panel says that no frame had a face."""
    import numpy as np

    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    t = np.round(np.arange(32) / 8, 3)
    nan = np.full(len(t), np.nan)
    result = {**_result("no_face.mp4"),
              "_report": {"t": t, "aus": {"AU01_r": nan, "AU12_r": nan.copy()}}}
    draw_report(result, tmp_path / "report.png")
    fig = figures[0]
    assert not [ax for ax in fig.axes if ax.get_title() == "Action Units" and ax.lines]
    assert any("no face" in text.get_text() for ax in fig.axes for text in ax.texts)


def test_the_report_draws_each_score_s_prediction_interval(tmp_path, monkeypatch):
    """prediction.json carried each score's prediction interval but the report drew only the
    test MAE: now an orange line beside each bar spans it, with a legend naming its level; a
    trait without one (too few val clips) and a result without any draw none."""
    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    interval = {"level": 0.8, "O": [0.2, 0.77], "C": [0.0, 0.35], "E": None, "A": [0.77, 1.0],
                "N": [0.59, 0.97]}
    draw_report({**_result("clip.mp4"), "prediction_interval": interval}, tmp_path / "r.png")
    draw_report(_result("clip.mp4"), tmp_path / "s.png")
    bars = figures[0].axes[0]
    [lines] = [c for c in bars.collections if c.get_label() == "80% prediction interval"]
    spans = sorted((round(seg[0][0], 2), seg[0][1], seg[1][1]) for seg in lines.get_segments())
    assert spans == [(0.3, 0.2, 0.77), (1.3, 0.0, 0.35), (3.3, 0.77, 1.0), (4.3, 0.59, 0.97)]
    assert not [c for c in figures[1].axes[0].collections if "prediction" in c.get_label()]

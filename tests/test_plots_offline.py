"""scripts/plots.py: DVC's plot specs and the test-CCC bars rendered to one page that needs no
network (inline SVG, no script, no external file); with a headless Chromium on the machine, a
screenshot of the page taken offline shows the charts."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import plots  # noqa: E402  (scripts/plots.py)

SCATTER = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
           "data": {"values": [{"true": str(t), "pred": str(1 - t), "rev": "workspace"}
                               for t in np.linspace(0, 1, 12).round(3)]},
           "mark": "point", "title": "x",
           "encoding": {"x": {"field": "true", "type": "quantitative"},
                        "y": {"field": "pred", "type": "quantitative"}}}
CURVE = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
         "data": {"values": [{"epoch": str(e), "val_ccc": str(e / 10)} for e in range(5)]},
         "mark": "line",
         "encoding": {"x": {"field": "epoch", "type": "quantitative"},
                      "y": {"field": "val_ccc", "type": "quantitative"}}}
SUMMARY = {"model_a": {"ccc": 0.3, "ccc_lo": 0.2, "ccc_hi": 0.4},
           "model_b": {"ccc": 0.1, "ccc_lo": -0.05, "ccc_hi": 0.22},
           "baseline": {"ccc": 0.0}}


def test_bar_spec_has_intervals_and_the_baseline():
    spec = plots.ccc_bar_spec(SUMMARY)
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["bar", "rule", "rule"]
    assert [r["model"] for r in spec["data"]["values"]] == ["model_a", "model_b"]
    assert spec["layer"][0]["encoding"]["x"]["sort"] == ["model_a", "model_b"]  # best first
    no_ci = plots.ccc_bar_spec({"m": {"ccc": 0.2}})
    assert [layer["mark"]["type"] for layer in no_ci["layer"]] == ["bar"]
    assert plots.ccc_bar_spec({}) is None


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plots")
    specs = {"metrics/plots/scatter_model_a.csv": [SCATTER],
             "metrics/train/model_a_history.csv": [CURVE]}
    return plots.render_page(specs, SUMMARY, out, png=True)


def test_the_ceiling_is_a_rule_not_a_bar():
    """summary.json's ceiling (the synthetic labels without their noise) is no model: a green
    dashed rule beside the baseline's red one, not a bar."""
    spec = plots.ccc_bar_spec({**SUMMARY, "ceiling": {"ccc": 0.86, "ccc_lo": 0.8, "ccc_hi": 0.9}})
    assert [r["model"] for r in spec["data"]["values"]] == ["model_a", "model_b"]
    rules = {layer["mark"]["color"]: layer["data"]["values"][0] for layer in spec["layer"]
             if "data" in layer}
    assert rules == {"#B22222": {"baseline": 0.0}, "#2E8B57": {"ceiling": 0.86}}
    assert "green: the ceiling, the labels' law without its noise" in spec["title"]


def test_page_is_self_contained(page):
    text = page.read_text()
    assert text.count("<svg") == 3  # bars, one scatter, one curve
    assert "<script" not in text and "src=" not in text and "<link" not in text
    assert "model_a: test set, predicted vs true" in text
    assert "model_a: validation CCC per epoch" in text
    for name in ("test_ccc_per_model", "scatter_model_a", "model_a_history"):
        assert (page.parent / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_offline_screenshot_shows_the_charts(page, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    import cv2

    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--proxy-server=127.0.0.1:9",
                    f"--screenshot={shot}", "--window-size=1200,900",
                    "--virtual-time-budget=5000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = cv2.imread(str(shot))  # BGR
    blue = (img[..., 0] > 150) & (img[..., 1] < 140) & (img[..., 2] < 110)  # the bars, #4C72B0
    assert blue.sum() > 2000
    assert (img.min(axis=2) < 100).mean() > 0.005  # text, axes, points


def test_a_closed_form_fit_gets_a_line_not_an_empty_curve(tmp_path):
    """functionals_ridge and functionals_gbt are fitted once: their history has one row, and the
    page drew a chart with a lone dot whose only y tick read "1" (ridge, val CCC 0.642) or "0"
    (trees, 0.484), as if the fit had scored 1 or 0. Now a line names them with their val CCC."""
    one = {**CURVE, "data": {"values": [{"epoch": "1", "val_ccc": "0.641881",
                                         "rev": "workspace"}]}}
    specs = {"metrics/train/model_a_history.csv": [CURVE],
             "metrics/train/functionals_ridge_history.csv": [one]}
    text = plots.render_page(specs, SUMMARY, tmp_path).read_text()
    assert "functionals_ridge: validation CCC per epoch" not in text
    assert "functionals_ridge (val CCC 0.642)" in text
    assert "model_a: validation CCC per epoch" in text

"""The pipeline's plots as one self-contained page that renders with no network.

    python scripts/plots.py [--out dvc_plots/offline] [--png]      # or: make plots

`dvc plots show` writes an index.html that loads Vega from a CDN: offline it is blank. This script
asks DVC for the same plot specs with their data (`dvc plots show --json`: the test-set scatter of
every model, the per-epoch validation curves of every trained model), adds a bar chart of test
CCC per model with its 95% interval over subjects (metrics/summary.json: ccc, ccc_lo, ccc_hi; the
train-mean baseline as a rule), and renders each Vega-Lite spec to SVG with `vl-convert-python`,
which bundles Vega. The page (OUT/index.html) holds the SVGs inline: no script, no external file.
`--png` also writes one PNG per chart beside it.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = Path("metrics/summary.json")


def dvc_plot_specs(root: Path) -> dict[str, list[dict]]:
    """{plot id: [Vega-Lite spec, ...]} from `dvc plots show --json` run in `root`."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    out = subprocess.run([dvc, "plots", "show", "--json"], cwd=root, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"dvc plots show --json failed:\n{out.stderr.strip()}")
    data = json.loads(out.stdout).get("data") or {}
    return {pid: [entry["content"] for entry in entries if entry.get("type") == "vega"]
            for pid, entries in data.items()}


def ccc_bar_spec(summary: dict) -> dict | None:
    """Vega-Lite: test CCC per model (bars, best first) with its interval (ccc_lo..ccc_hi) and
    the train-mean baseline's CCC as a dashed rule; None when the summary holds no model."""
    rows = [{"model": name, "ccc": entry["ccc"], "lo": entry.get("ccc_lo"),
             "hi": entry.get("ccc_hi")}
            for name, entry in summary.items()
            if name not in ("baseline", "ceiling") and isinstance(entry, dict)
            and isinstance(entry.get("ccc"), (int, float))]
    if not rows:
        return None
    order = [r["model"] for r in sorted(rows, key=lambda r: -r["ccc"])]
    x = {"field": "model", "type": "nominal", "sort": order, "title": None,
         "axis": {"labelAngle": -30}}
    layers = [{"mark": {"type": "bar", "color": "#4C72B0"},
               "encoding": {"x": x, "y": {"field": "ccc", "type": "quantitative",
                                          "title": "test CCC (mean over traits)"},
                            "tooltip": [{"field": "model"}, {"field": "ccc", "format": ".3f"},
                                        {"field": "lo", "format": ".3f"},
                                        {"field": "hi", "format": ".3f"}]}}]
    if all(isinstance(r["lo"], (int, float)) and isinstance(r["hi"], (int, float)) for r in rows):
        layers.append({"mark": {"type": "rule", "color": "#222222", "strokeWidth": 1.5},
                       "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative"},
                                    "y2": {"field": "hi"}}})
    for name, color in (("baseline", "#B22222"), ("ceiling", "#2E8B57")):
        value = (summary.get(name) or {}).get("ccc")
        if isinstance(value, (int, float)):
            layers.append({"data": {"values": [{name: value}]},
                           "mark": {"type": "rule", "color": color, "strokeDash": [6, 4]},
                           "encoding": {"y": {"field": name, "type": "quantitative"}}})
    ceiling = "green: the ceiling, the labels' law without its noise; "
    legend = (ceiling if "ceiling" in summary else "") + "red: train-mean baseline"
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "title": f"test CCC per model, 95% interval over subjects ({legend})",
            "width": 60 * len(rows), "height": 260, "data": {"values": rows}, "layer": layers}


def _single_fit(spec: dict) -> float | None:
    """The val CCC of a training-curve spec with a single epoch (a closed-form fit), else None."""
    rows = (spec.get("data") or {}).get("values") or []
    if len({r.get("epoch") for r in rows}) != 1 or "val_ccc" not in rows[0]:
        return None
    return float(rows[0]["val_ccc"])


def _section(title: str, charts: list[tuple[str, str]]) -> str:
    figures = "".join(f'<figure id="{html.escape(cid)}">{svg}</figure>' for cid, svg in charts)
    return f"<h2>{html.escape(title)}</h2>\n<div class='grid'>{figures}</div>\n"


def render_page(specs: dict[str, list[dict]], summary: dict, out: Path, *,
                png: bool = False) -> Path:
    """out/index.html with every chart inline as SVG (and out/<chart>.png with `png`)."""
    import vl_convert as vlc

    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[tuple[str, dict]]] = {"bars": [], "scatter": [], "curves": []}
    bars = ccc_bar_spec(summary)
    if bars is not None:
        groups["bars"].append(("test_ccc_per_model", bars))
    fits = []  # one-row histories (closed-form models): a lone dot whose axis read "1" or "0"
    for pid, entries in specs.items():
        kind = "curves" if pid.endswith("_history.csv") else "scatter"
        model = re.sub(r"^scatter_|_history$", "", Path(pid).stem)
        for k, spec in enumerate(entries):
            if kind == "curves" and _single_fit(spec) is not None:
                fits.append(f"{model} (val CCC {_single_fit(spec):.3f})")
                continue
            title = (f"{model}: validation CCC per epoch" if kind == "curves"
                     else f"{model}: test set, predicted vs true")
            groups[kind].append((re.sub(r"[^A-Za-z0-9_.+-]+", "_", Path(pid).stem)
                                 + (f"_{k}" if k else ""), {**spec, "title": title}))
    titles = {"bars": "Test CCC per model",
              "scatter": "Test set: predicted vs true score (all five traits), per model",
              "curves": "Training curves: validation CCC per epoch"}
    body = ""
    for kind, charts in groups.items():
        rendered = []
        for cid, spec in charts:
            rendered.append((cid, vlc.vegalite_to_svg(spec)))
            if png:
                (out / f"{cid}.png").write_bytes(vlc.vegalite_to_png(spec, scale=1.5))
        if rendered:
            body += _section(titles[kind], rendered)
    if fits:
        body += (f"<p>No curve for models fitted once, without epochs: "
                 f"{html.escape(', '.join(fits))}.</p>\n")
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>personality pipeline: "
            "plots</title><style>body{font-family:sans-serif;margin:1.5em}"
            ".grid{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}</style></head><body>\n"
            "<h1>personality pipeline: plots</h1>\n<p>Rendered offline from <code>dvc plots show "
            "--json</code> and <code>metrics/summary.json</code> (scripts/plots.py).</p>\n"
            + body + "</body></html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the DVC project")
    parser.add_argument("--out", type=Path, default=Path("dvc_plots/offline"))
    parser.add_argument("--png", action="store_true", help="also one PNG per chart")
    parser.add_argument("--summary", type=Path, default=None, help="test CCC per model "
                        "(default: ROOT/metrics/summary.json)")
    args = parser.parse_args(argv)
    summary_path = args.summary or args.root / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    out = args.out if args.out.is_absolute() else args.root / args.out
    path = render_page(dvc_plot_specs(args.root), summary, out, png=args.png)
    print(f"wrote {path} (no network needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

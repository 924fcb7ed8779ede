"""Train the default models (params.yaml:train.models) on one device and time each: the GPU
counterpart of `make run`'s training stages, with each model's scores beside the CPU pipeline's.

    .venv/bin/python bench/train_default.py               # every default model, auto device
    .venv/bin/python bench/train_default.py --device cuda --models hrnet_face,bimodal_resnet
    .venv/bin/python bench/train_default.py --data /elsewhere/data   # another data/
    .venv/bin/python bench/train_default.py --device cuda --amp false  # fp32 on the GPU

The stage's own code trains each model (stages.train.train_model, params.yaml's train section with
train.device set and MLflow off), in a scratch root whose data/ links to the pipeline's inputs
(--data, default ./data), so the pipeline's checkpoints, predictions and metrics are never
overwritten. A model whose inputs are absent there is reported as skipped. One row per model:
wall seconds (inputs read, training, early stopping, prediction of every video), epochs run,
seconds per epoch, the best epoch's val CCC and its test CCC, beside the pipeline's own
metrics/train/<name>.json when present (the CPU run). Prints a table and writes
bench/results/train_default.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personality.common import BaseParams, load_params  # noqa: E402
from stages.train import TrainParams, train_model  # noqa: E402

KEEP_OUT = {"models", "predictions", "retrained"}  # outputs: the scratch root writes its own


def scratch_root(data: Path, folder: Path) -> Path:
    """folder/data/<entry> -> data/<entry> for every input entry (links, nothing copied)."""
    (folder / "data").mkdir(parents=True)
    for entry in sorted(data.iterdir()):
        if entry.name not in KEEP_OUT:
            (folder / "data" / entry.name).symlink_to(entry.resolve())
    return folder


def pipeline_metrics(name: str) -> dict | None:
    path = REPO / "metrics" / "train" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ccc(summary: dict | None, split: str) -> float | None:
    value = ((summary or {}).get(split) or {}).get("model", {}).get("ccc")
    return None if value is None else round(float(value), 4)


def train_one(name: str, params: TrainParams, base: BaseParams, root: Path) -> dict:
    """One model's row: its time, epochs and scores, or why it did not train."""
    started = time.perf_counter()
    try:
        summary = train_model(name, params, base, root)
    except Exception as exc:  # one model's failure is a row, not the end of the bench
        traceback.print_exc()
        return {"model": name, "status": f"failed: {type(exc).__name__}: {exc}"[:300]}
    wall = time.perf_counter() - started
    epochs = summary.get("epochs_run") or 0
    cpu = pipeline_metrics(name)
    return {"model": name, "status": "ok", "wall_s": round(wall, 1), "epochs_run": epochs,
            "s_per_epoch": round(wall / epochs, 2) if epochs else None,
            "best_epoch": summary.get("best_epoch"),
            "val_ccc": _ccc(summary, "val"), "test_ccc": _ccc(summary, "test"),
            "pipeline_epochs_run": (cpu or {}).get("epochs_run"),
            "pipeline_val_ccc": _ccc(cpu, "val"), "pipeline_test_ccc": _ccc(cpu, "test")}


def table(rows: list[dict], device: str) -> str:
    lines = [f"| model | device | wall s | epochs | s / epoch | best epoch | val CCC | test CCC "
             f"| pipeline (CPU) epochs | val CCC | test CCC |", "|" + "---|" * 11]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {device} | {r['status']} |" + " |" * 8)
            continue
        cells = [r[k] for k in ("wall_s", "epochs_run", "s_per_epoch", "best_epoch", "val_ccc",
                                "test_ccc", "pipeline_epochs_run", "pipeline_val_ccc",
                                "pipeline_test_ccc")]
        lines.append(f"| {r['model']} | {device} | " + " | ".join(
            "-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (train.device)")
    ap.add_argument("--amp", choices=("true", "false"), default=None,
                    help="bf16 autocast on CUDA (train.amp); default: params.yaml's")
    ap.add_argument("--models", default="", help="comma-separated; default: train.models")
    ap.add_argument("--data", type=Path, default=REPO / "data", help="the pipeline's data/")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_default.json")
    args = ap.parse_args(argv)
    import torch

    from models.distributed import resolve_device

    base = load_params("base", BaseParams, REPO / "params.yaml")
    overrides = {"device": args.device, "mlflow": False}
    if args.amp is not None:
        overrides["amp"] = args.amp == "true"
    params = load_params("train", TrainParams, REPO / "params.yaml", overrides=overrides)
    names = [m for m in args.models.split(",") if m] or list(params.models)
    device = resolve_device(args.device).type
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_default_") as tmp:
        root = scratch_root(args.data.resolve(), Path(tmp))
        for name in names:
            rows.append(train_one(name, params, base, root))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows, device)
    print("\n" + text)
    res = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "device": device,
           "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
           "amp": params.amp, "torch_threads": params.threads, "rows": rows, "table": text}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {args.out}")
    return res


if __name__ == "__main__":
    main()

"""Benchmark a ResNet-18 training step at 112 px: the ceiling (inputs already in memory) against the
real Parquet face loader (models/data_image.py's `face` source + the engine's TrainViews / collate
in a DataLoader), on the CPU and, when CUDA is available, on the GPU (bf16 autocast, channels_last).

    .venv/bin/python bench/train_visual.py                     # -> table, bench/results/train_visual.json
    .venv/bin/python bench/train_visual.py --root /data/run --gpu-workers 8 --steps 50
    python bench/train_visual.py --devices cuda                # the GPU rows alone

Rows (images per second, higher is better):
  ceiling         random (B, 3, 112, 112) tensors already on the device: model step only
  loader only     the DataLoader alone (decoded-crop cache + augmentation + collate), no model
  real loader     model step fed by the DataLoader (workers as given), host->device copy and the
                  uint8 images' normalisation (models.batching.to_device) included
Plus the JPEG decode cost per 112 px crop: OpenCV, and where torchvision is installed (it is not a
project dependency) torchvision.io on the CPU and on the GPU (batched), which decides where
decoding belongs (docs/models.md).

--root must hold data/faces (and data/manifest.parquet); without it a small synthetic set (12
clips) is built in a temporary folder first (~1-2 min). The CPU rows use --cpu-threads torch threads
(default 1: the machine is shared). Goal: real loader >= 80% of the ceiling on an H100; an H200
gave 52% on 2026-12-04 (docs/models.md has the table and what limits it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _model(width: int, device: torch.device, channels_last: bool):
    from models.registry import build_model

    model = build_model("resnet18_face", width=width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, opt


def _step(model, opt, batch, targets, device, amp: bool) -> None:
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model.loss(model(batch), targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(width: int, bs: int, steps: int, device: torch.device, amp: bool, cl: bool) -> float:
    model, opt = _model(width, device, cl)
    x = torch.randn(bs, 3, 112, 112, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    batch, y = {"face": x}, torch.rand(bs, 5, device=device)
    for _ in range(3):
        _step(model, opt, batch, y, device, amp)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, batch, y, device, amp)
    _sync(device)
    return steps * bs / (time.perf_counter() - t)


def _loader(source, ids, bs: int, workers: int, pin: bool):
    from models.engine import TrainViews, collate

    ds = TrainViews([source], ids, np.random.default_rng(0).random((len(ids), 5)),
                    views_per_video=1000, seed=0)
    kw = dict(persistent_workers=True, prefetch_factor=4) if workers else {}
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, collate_fn=collate,
                                       num_workers=workers, pin_memory=pin, drop_last=True, **kw)


def loader_only(source, ids, bs: int, steps: int, workers: int) -> float:
    it = iter(_loader(source, ids, bs, workers, False))
    for _ in range(2):
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * bs / (time.perf_counter() - t)


def real_loader(source, ids, width, bs, steps, device, amp, cl, workers) -> float:
    from models.batching import to_device

    model, opt = _model(width, device, cl)
    it = iter(_loader(source, ids, bs, workers, device.type == "cuda"))

    def one():
        b = to_device(next(it), device, cl)  # the engine's copy: uint8 faces normalised there
        _step(model, opt, {"face": b["face"]}, b["target"], device, amp)

    for _ in range(3):
        one()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(device)
    return steps * bs / (time.perf_counter() - t)


def decode_costs(root: Path, device: torch.device | None) -> dict:
    """Microseconds per 112 px crop: OpenCV, torchvision.io CPU, torchvision.io GPU (batched)."""
    import cv2
    import pyarrow.parquet as pq

    shard = sorted((root / "data" / "faces").glob("*.parquet"))[0]
    t = pq.read_table(shard, columns=["crop", "face_found"]).to_pandas()
    blobs = [b for b, ok in zip(t["crop"], t["face_found"]) if ok][:256]
    out = {"n_crops": len(blobs), "mean_jpeg_bytes": float(np.mean([len(b) for b in blobs]))}
    t0 = time.perf_counter()
    for b in blobs:
        cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    out["opencv_us"] = 1e6 * (time.perf_counter() - t0) / len(blobs)
    try:  # not a project dependency: a GPU machine's own torchvision, when it has one
        import torchvision.io as tio
    except ImportError:
        out["torchvision"] = "not installed: its rows left out"
        return out
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    t0 = time.perf_counter()
    for d in datas:
        tio.decode_jpeg(d)
    out["torchvision_cpu_us"] = 1e6 * (time.perf_counter() - t0) / len(blobs)
    if device is not None and device.type == "cuda":
        tio.decode_jpeg(datas[:8], device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            tio.decode_jpeg(datas, device="cuda")
        torch.cuda.synchronize()
        out["torchvision_gpu_batched_us"] = 1e6 * (time.perf_counter() - t0) / (5 * len(blobs))
    return out


def cpu_rows(args, src, ids: list[str], row) -> None:
    """Ceiling, loader alone and real loader on the CPU (fp32), workers 0 and --cpu-workers."""
    cpu, bs = torch.device("cpu"), args.batch_size
    ceil = ceiling(args.width, bs, args.steps, cpu, False, False)
    row("cpu", f"ceiling ({args.cpu_threads} thread)", ceil, bs)
    for w in sorted({0, args.cpu_workers}):
        row("cpu", "loader only", loader_only(src, ids, bs, args.steps * 4, w), bs, w)
        real = real_loader(src, ids, args.width, bs, args.steps, cpu, False, False, w)
        row("cpu", f"real loader ({100 * real / ceil:.0f}% of ceiling)", real, bs, w)


def gpu_rows(args, src, ids: list[str], row) -> None:
    """The same rows on CUDA: bf16 autocast, channels_last, --gpu-workers loader processes."""
    dev, gbs, w = torch.device("cuda"), args.gpu_batch_size, args.gpu_workers
    gceil = ceiling(args.width, gbs, args.gpu_steps, dev, True, True)
    row("cuda", "ceiling (bf16, channels_last)", gceil, gbs)
    row("cuda", "loader only", loader_only(src, ids, gbs, args.gpu_steps, w), gbs, w)
    real = real_loader(src, ids, args.width, gbs, args.gpu_steps, dev, True, True, w)
    row("cuda", f"real loader ({100 * real / gceil:.0f}% of ceiling)", real, gbs, w)


def small_dataset(folder: Path) -> Path:
    from stages import faces, frames
    from personality.common import BaseParams
    from stages.ingest import IngestParams, SyntheticParams, run as ingest

    base = BaseParams(seed=1234, workers=min(4, os.cpu_count() or 1))
    ingest(IngestParams(source="synthetic", split=[0.7, 0.15, 0.15],
                        synthetic=SyntheticParams(n_videos=12, n_subjects=4)), base, root=folder)
    frames.run(frames.FramesParams(), base, root=folder)
    faces.run(faces.FacesParams(), base, root=folder)
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=REPO)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 width (torchvision: 64)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="timed CPU steps")
    ap.add_argument("--gpu-steps", type=int, default=50)
    ap.add_argument("--gpu-batch-size", type=int, default=256)
    ap.add_argument("--cpu-threads", type=int, default=1)
    ap.add_argument("--cpu-workers", type=int, default=1)
    ap.add_argument("--gpu-workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--devices", default="cpu,cuda",
                    help="comma-separated rows to run; cuda only where available")
    ap.add_argument("--augment", default="standard")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_visual.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.cpu_threads)

    tmp = None
    root = args.root
    if not (root / "data" / "faces").is_dir():
        tmp = tempfile.TemporaryDirectory(prefix="bench_visual_")
        print(f"{root}/data/faces is absent: building a 12-clip synthetic set in {tmp.name}")
        root = small_dataset(Path(tmp.name))

    import pandas as pd

    from models.data_image import face_source

    m = pd.read_parquet(root / "data" / "manifest.parquet", columns=["video_id", "split"])
    ids = m.loc[m["split"] == "train", "video_id"].tolist() or m["video_id"].tolist()
    t0 = time.perf_counter()
    src = face_source(root=root, video_ids=ids, config={"augment": args.augment})
    build_s = time.perf_counter() - t0
    ids = [v for v in ids if src.has(v)]
    n_crops = sum(src.store.counts[v] for v in ids)
    res = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "root": str(args.root if tmp is None else "synthetic-12"),
           "train_videos": len(ids), "train_crops": n_crops,
           "source_build_s": round(build_s, 2), "cache_mb": round(src.store.bytes / 2 ** 20, 1),
           "resnet18_width": args.width, "rows": []}
    res["decode"] = decode_costs(root, torch.device("cuda") if torch.cuda.is_available() else None)

    def row(device, name, ips, bs, workers=None):
        res["rows"].append({"device": device, "setting": name, "batch": bs, "workers": workers,
                            "images_per_s": round(ips, 1)})
        print(f"{device:5s} {name:34s} bs={bs:<4d} workers={workers!s:4s} {ips:9.1f} img/s",
              flush=True)

    wanted = set(args.devices.split(","))
    if "cpu" in wanted:
        cpu_rows(args, src, ids, row)
    if "cuda" in wanted and torch.cuda.is_available():
        gpu_rows(args, src, ids, row)
        res["gpu"] = torch.cuda.get_device_name()
    d = res["decode"]
    print("decode per 112 px crop: " + ", ".join(f"{k} {v:.1f}" for k, v in d.items()
                                                    if k.endswith("_us")) + " (microseconds)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return res


if __name__ == "__main__":
    main()

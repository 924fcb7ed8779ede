"""Training throughput of the PerFeX models: this engine vs. the published code's loop.

    .venv/bin/python bench/train_perfex.py            # CPU (and CUDA when present), ~1-2 min
    .venv/bin/python bench/train_perfex.py --quick    # fewer steps
    python bench/train_perfex.py --devices cuda       # the GPU rows alone

Training sequences per second, forward + backward + optimizer step, for perfex_cnn and
perfex_hybrid (default configs, 5-bin classification head):

- published: the way PerFeX's code trains: batch 1, fp32, every clip zero-padded to 700 frames,
  one backward pass per trait (5 cross-entropies, `retain_graph=True`), one step per clip;
- engine-700: models.engine.train_one_epoch, batch 32, clips padded to 700 (same work per clip);
- engine: models.engine.train_one_epoch, batch 32, the default data's clip length (~40 steps at
  5 fps; the collate trims padding), bf16 autocast on CUDA.

Synthetic AU sequences (uniform 0-5), so no data stage is needed. Prints a table and writes
bench/results/train_perfex.json. torch threads: 1 on the CPU (the project's shared 2-core box).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's packages, also where it is not installed

import numpy as np
import torch
import torch.nn.functional as F

from models.data import AUSource, AUSourceConfig
from models.engine import TrainViews, _loader, make_optimizer, train_one_epoch, TrainConfig
from models.registry import build_model

MODELS = ("perfex_cnn", "perfex_hybrid")


def published_loop(name: str, device: torch.device, seconds: float, max_steps: int) -> float:
    """Batch 1, fp32, padded to 700, one backward per trait. Returns clips per second."""
    torch.manual_seed(0)
    model = build_model(name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    n, start, warm = 0, None, 2
    while True:
        T = int(rng.integers(30, 51))
        x = torch.zeros(1, 700, 17, device=device)  # (1, 700, 17): padded, no mask
        x[0, :T] = torch.rand(T, 17, device=device) * 5
        y = torch.randint(0, 5, (1, 5), device=device)
        logits = model({"aus": x})  # (1, 5, 5)
        opt.zero_grad()
        for k in range(5):  # one loss and one backward per trait
            F.cross_entropy(logits[:, k], y[:, k]).backward(retain_graph=k < 4)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        n += 1
        if start is None and n == warm:  # warm-up steps done: start the clock
            start, n = time.perf_counter(), 0
        if start is not None and (time.perf_counter() - start > seconds or n >= max_steps):
            return n / (time.perf_counter() - start)


def engine_loop(name: str, device: torch.device, seconds: float, *, pad_to: int | None,
                amp: bool) -> float:
    """models.engine.train_one_epoch over synthetic clips; returns clips per second."""
    rng = np.random.default_rng(0)
    seqs = {f"v{i}": rng.uniform(0, 5, (int(rng.integers(30, 51)), 17)) for i in range(64)}
    source = AUSource(seqs, config=AUSourceConfig(seq_len=pad_to or 64))
    if pad_to:  # every step real: the same work per clip as the published loop's padded 700
        source = AUSource({k: np.resize(v, (pad_to, 17)) for k, v in seqs.items()},
                          config=AUSourceConfig(seq_len=pad_to))
    ids = sorted(seqs)
    data = TrainViews([source], ids, rng.uniform(0, 1, (len(ids), 5)), views_per_video=1)
    torch.manual_seed(0)
    model = build_model(name).to(device)
    opt = make_optimizer(model, TrainConfig())
    batches = list(_loader(data, batch_size=32, epoch=1, seed=0, num_workers=0))
    train_one_epoch(model, opt, batches[:1], device=device, amp=amp)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        stats = train_one_epoch(model, opt, batches, device=device, amp=amp)
        n += stats["n_samples"]
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", default="cpu,cuda",
                        help="comma-separated rows to run; cuda only where available")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_perfex.json"))
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else 6.0
    wanted = set(args.devices.split(","))
    devices = [torch.device(d) for d in ("cpu", "cuda") if d in wanted
               and (d == "cpu" or torch.cuda.is_available())]
    rows = []
    for device in devices:
        if device.type == "cpu":
            torch.set_num_threads(1)
        for name in MODELS:
            pub = published_loop(name, device, seconds, max_steps=200 if args.quick else 1000)
            e700 = engine_loop(name, device, seconds, pad_to=700, amp=False)
            eng = engine_loop(name, device, seconds, pad_to=None, amp=device.type == "cuda")
            rows.append({"device": device.type, "model": name, "published_b1_pad700": pub,
                         "engine_b32_pad700": e700, "engine_b32_native": eng,
                         "speedup_pad700": e700 / pub, "speedup_native": eng / pub})
            print(f"{device.type:5s} {name:14s} published {pub:8.1f}  engine@700 {e700:8.1f}  "
                  f"engine {eng:9.1f} clips/s", flush=True)
    header = ("| device | model | published (B=1, pad 700, 5 backwards) | engine (B=32, pad 700) "
              "| engine (B=32, ~40 steps) | speed-up @700 | speed-up native |")
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['device']} | {r['model']} | {r['published_b1_pad700']:.1f} | "
                     f"{r['engine_b32_pad700']:.1f} | {r['engine_b32_native']:.1f} | "
                     f"{r['speedup_pad700']:.1f}x | {r['speedup_native']:.0f}x |")
    table = "\n".join(lines)
    print("\ntraining clips per second\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "torch": torch.__version__, "cpu_threads": 1, "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seconds_per_measure": seconds, "rows": rows, "table": table}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

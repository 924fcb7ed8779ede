"""Multi-process training (DDP) with two CPU processes on gloo, launched the way users launch it:
`torchrun --standalone --nproc_per_node 2` on a script that calls `engine.fit`. ~15 s, most of it
starting the two interpreters.

    .venv/bin/python -m pytest tests/test_ddp.py -q
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from models.data import AUSource, AUSourceConfig
from models.engine import TrainViews, _loader, shard_indices

ROOT = Path(__file__).resolve().parents[1]

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

# Each rank trains perfex_cnn from a different initialisation (seeded by its rank: DDP must
# broadcast rank 0's) on a tiny synthetic AU source, then records a hash of its final state_dict
# and its loss history. Every rank is given its own out_dir: only rank 0's may appear.
SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    from pathlib import Path

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from models.data import AUSource, AUSourceConfig
    from models.engine import TrainConfig, fit, shutdown_distributed
    from models.registry import build_model

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    rng = np.random.default_rng(0)
    seqs = {f"v{i:02d}": rng.uniform(0, 5, (int(rng.integers(10, 20)), 17)) for i in range(21)}
    ids, y = sorted(seqs), rng.uniform(0.2, 0.8, (21, 5))
    source = AUSource(seqs, config=AUSourceConfig(seq_len=16))
    torch.manual_seed(100 + rank)
    model = build_model("perfex_cnn", head="regression", seq_len=16)
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=4, views_per_video=1, patience=0, seed=3,
                      device="cpu", distributed=True)
    result = fit(model, [source], train_ids=ids[:15], train_targets=y[:15], val_ids=ids[15:],
                 val_targets=y[15:], config=cfg, out_dir=out / f"ckpt_rank{rank}",
                 meta={"model_name": "perfex_cnn"})
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    (out / f"rank{rank}.json").write_text(json.dumps({
        "hash": h.hexdigest(), "world": torch.distributed.get_world_size(),
        "backend": torch.distributed.get_backend(),
        "train_loss": [row["train_loss"] for row in result["history"]],
        "best_epoch": result["best_epoch"]}))
    shutdown_distributed()
''')


def _state_hash(state: dict) -> str:
    h = hashlib.sha256()
    for key, t in sorted(state.items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"  # the same interpreter's launcher
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@needs_gloo
def test_two_process_ddp_training(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU and gloo on any machine
    proc = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node", "2", str(script),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)
    # DDP: different initialisations, different shards, yet the same weights at the end
    assert ranks[0]["hash"] == ranks[1]["hash"]
    assert ranks[0]["train_loss"] == ranks[1]["train_loss"]  # rank 0's history, broadcast
    assert len(ranks[0]["train_loss"]) == 2 and np.isfinite(ranks[0]["train_loss"]).all()
    # only rank 0 wrote checkpoints, of the unwrapped module, readable without pickle
    assert not (tmp_path / "ckpt_rank1").exists()
    assert (tmp_path / "ckpt_rank0" / "last.pt").is_file()
    ckpt = torch.load(tmp_path / "ckpt_rank0" / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert ckpt["best_epoch"] == ranks[0]["best_epoch"]
    assert _state_hash(ckpt["state_dict"]) == ranks[0]["hash"]  # the model returned holds best


def test_shards_are_disjoint_and_cover_the_epoch():
    order = np.random.default_rng(0).permutation(10).tolist()
    a, b = shard_indices(order, 0, 2), shard_indices(order, 1, 2)
    assert len(a) == len(b) == 5 and not set(a) & set(b) and set(a) | set(b) == set(range(10))
    assert shard_indices(order, 0, 1) == order  # one process: the order untouched
    # an odd count wraps round: equal lengths (equal steps), every index, one repeated
    a, b = shard_indices(list(range(7)), 0, 2), shard_indices(list(range(7)), 1, 2)
    assert len(a) == len(b) == 4 and set(a) | set(b) == set(range(7)) and len(a + b) == 8
    assert shard_indices([3], 1, 4) == [3] and shard_indices([], 1, 2) == []

    # the loader: each rank's sampler is its shard of the same (seed, epoch) order
    seqs = {f"v{i}": np.ones((8, 17)) for i in range(6)}
    data = TrainViews([AUSource(seqs, config=AUSourceConfig(seq_len=8))], sorted(seqs),
                      np.full((6, 5), 0.5), views_per_video=2, seed=1)
    full = list(_loader(data, batch_size=4, epoch=3, seed=1, num_workers=0).sampler)
    parts = [list(_loader(data, batch_size=4, epoch=3, seed=1, num_workers=0, rank=r,
                          world_size=2).sampler) for r in (0, 1)]
    assert parts[0] == full[0::2] and parts[1] == full[1::2]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == list(range(12))


def test_a_cpu_build_beside_a_gpu_is_named(monkeypatch, caplog):
    """This project's machines install torch's CPU build; on a GPU box that build would train on
    the CPU without a word (`device: auto`) or fail with a bare "CUDA is not available"
    (`device: cuda`). Both now name the build and the install line that fixes it."""
    from pathlib import Path

    from models import distributed
    from models.solver import EngineError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    driver = {"/proc/driver/nvidia/version"}
    monkeypatch.setattr(Path, "exists", lambda self: str(self) in driver)
    monkeypatch.setattr(distributed, "_WARNED", [])
    with caplog.at_level("WARNING"):
        assert distributed.resolve_device("auto").type == "cpu"
        assert distributed.resolve_device("auto").type == "cpu"
    said = [r.getMessage() for r in caplog.records if "CPU build" in r.getMessage()]
    assert len(said) == 1 and "PIP_CONFIG_FILE=/dev/null" in said[0]  # once per process
    with pytest.raises(EngineError, match="is a CPU build .*force-reinstall torch=="):
        distributed.resolve_device("cuda")
    driver.clear()  # no NVIDIA driver: a CPU build is what the machine wants, nothing said
    caplog.clear()
    monkeypatch.setattr(distributed, "_WARNED", [])
    assert distributed.resolve_device("auto").type == "cpu" and not caplog.records
    with pytest.raises(EngineError, match="CUDA is not available$"):
        distributed.resolve_device("cuda")

"""A checkpoint's model_config cannot make the process allocate a model its stored tensors do not
back (models/checkpoints.py `load_checkpoint`): the model is first built on the meta device and
its parameter and buffer names and shapes compared with the stored state_dict, so a tampered width
or depth is one EngineError naming the file and the first differing tensor, before any real
allocation. Stored data must hold what its shapes claim (no stride-0 views, no storage shared to
stand for many tensors), and compressed zip entries (which torch.load would inflate) are refused.
Every registered model builds on meta with its real shapes; one the meta device cannot build still
loads.

    .venv/bin/python -m pytest tests/test_checkpoint_meta.py -q
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from models import registry
from models.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from models.registry import build_model, list_models
from models.solver import EngineError
from stages import predict
from tests.conftest import real_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = dict(channels=(8, 8), hidden=16)
WIDE = 1_000_000  # head.mlp.0 (WIDE, 64) + head.mlp.3 (25, WIDE): ~360 MB of float32 if built


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small real perfex_cnn checkpoint and its loaded dict."""
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "best.pt",
                           model=build_model("perfex_cnn", **TINY), model_name="perfex_cnn",
                           train_mean=[0.5] * 5, inputs=["aus", "aus_mask"])
    return path, torch.load(path, weights_only=True)


def tampered(good, tmp_path, name: str, edit) -> Path:
    ckpt = copy.deepcopy(good[1])
    edit(ckpt)
    torch.save(ckpt, tmp_path / f"{name}.pt")
    return tmp_path / f"{name}.pt"


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The default device of every build_model call (meta inside `with torch.device("meta")`)."""
    seen: list[str] = []
    real = registry.build_model

    def spy(name, **config):
        seen.append(str(torch.get_default_device()))
        return real(name, **config)

    monkeypatch.setattr(registry, "build_model", spy)
    return seen


@pytest.mark.parametrize("name", [m["name"] for m in list_models()])
def test_every_registered_model_builds_on_meta_with_its_real_shapes(name):
    with torch.device("meta"):
        shadow = build_model(name).state_dict()
    real = build_model(name).state_dict()
    assert list(shadow) == list(real)
    for key, value in real.items():
        if not isinstance(value, nn.parameter.UninitializedTensorMixin):
            assert shadow[key].shape == value.shape, key
            assert shadow[key].is_meta, key


@pytest.mark.parametrize("name", [m["name"] for m in list_models()])
def test_every_registered_model_round_trips_through_the_checks(name, tmp_path):
    """Its own checkpoint passes the shape and storage checks (tied or lazy tensors included)."""
    from tests.test_zoo import TINY as ZOO_TINY
    from tests.test_zoo import _batch

    torch.manual_seed(0)
    model = build_model(name, **ZOO_TINY.get(name, {}))
    if any(isinstance(p, nn.parameter.UninitializedTensorMixin) for p in model.parameters()):
        model.eval()(_batch(registry.model_spec(name).as_dict()))  # a lazy layer takes its shape
    path = save_checkpoint(tmp_path / "best.pt", model=model, model_name=name,
                           inputs=list(registry.model_spec(name).inputs))
    loaded, _ = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_widened_config_is_refused_on_meta_naming_file_and_tensor(good, tmp_path, builds):
    path = tampered(good, tmp_path, "wide", lambda c: c["model_config"].update(hidden=WIDE))
    with pytest.raises(EngineError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert (f"tensor 'head.mlp.0.weight' is ({WIDE}, 64) in the model, (16, 64) in the "
            "checkpoint" in message)
    assert builds == ["meta"]  # never built for real


def test_a_widened_config_keeps_the_process_small(good, tmp_path):
    """In a fresh process (so that no earlier test's peak hides it): the refusal raises the
    peak resident memory by far less than the ~360 MB the tampered model would take."""
    path = tampered(good, tmp_path, "wide", lambda c: c["model_config"].update(hidden=WIDE))
    script = ("import resource, sys\n"
              "from models.checkpoints import load_checkpoint\n"
              "from models.registry import list_models\n"
              "from models.solver import EngineError\n"
              "list_models()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    load_checkpoint(sys.argv[1]); print('LOADED')\n"
              "except EngineError as exc:\n    print('REFUSED', exc)\n"
              "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, text=True,
                         capture_output=True, timeout=240,
                         env={**os.environ, "PYTHONPATH": str(REPO),
                              "OMP_NUM_THREADS": "1"}).stdout
    growth_mb = int(out.split("GROWTH_KB")[1]) / 1024
    assert growth_mb < 100, out  # the old code built it: ~330 MB
    assert f"REFUSED {path}: " in out and "'head.mlp.0.weight'" in out, out


def test_a_deepened_config_stops_early_on_meta(good, tmp_path, builds):
    """3000 branches instead of 4: each costs Python objects even on meta; the build stops once
    it has registered many more tensors and modules than the checkpoint stores."""
    path = tampered(good, tmp_path, "deep",
                    lambda c: c["model_config"].update(kernel_sizes=[3] * 3000))
    with pytest.raises(EngineError, match=r"builds model 'perfex_cnn' with more than \d+ "
                                          "parameters, buffers and modules, for 20 stored"):
        load_checkpoint(path)
    assert builds == ["meta"]


def test_a_stride_0_view_cannot_stand_for_a_big_tensor(good, tmp_path):
    """A 4-byte storage shown as (WIDE, 64): matching shapes, a tiny file, a huge model."""
    def edit(c):
        c["model_config"].update(hidden=WIDE)
        state = c["state_dict"]
        state["head.mlp.0.weight"] = torch.zeros(1).expand(WIDE, 64)
        state["head.mlp.0.bias"] = torch.zeros(1).expand(WIDE)
        state["head.mlp.3.weight"] = torch.zeros(1).expand(25, WIDE)

    path = tampered(good, tmp_path, "strided", edit)
    assert path.stat().st_size < 100_000
    with pytest.raises(EngineError, match=r"tensor 'head.mlp.0.weight' claims shape "
                                          rf"\({WIDE}, 64\) but its data holds 4 bytes"):
        load_checkpoint(path)


def test_one_storage_cannot_stand_for_many_tensors(tmp_path):
    config = dict(kernel_sizes=[3] * 16, channels=(4, 4), hidden=4)
    model = build_model("perfex_cnn", **config)
    state = model.state_dict()
    base = torch.zeros(max(v.numel() for v in state.values()))
    shared = {k: base[:v.numel()].view(v.shape) for k, v in state.items()}
    path = save_checkpoint(tmp_path / "shared.pt", model=model, model_name="perfex_cnn",
                           state_dict=shared, inputs=["aus", "aus_mask"])
    with pytest.raises(EngineError, match=r"its model has 4801 elements, its state_dict's data "
                                          r"only 2048 bytes"):
        load_checkpoint(path)


def test_a_compressed_checkpoint_is_refused_before_it_is_inflated(good, tmp_path):
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(good[0]) as src, zipfile.ZipFile(packed, "w",
                                                          zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(EngineError, match=r"not a checkpoint torch.save wrote: its entry "
                                          r"'.*' is compressed; refused, not loaded"):
        read_checkpoint(packed)


def test_a_legacy_format_checkpoint_is_refused_before_torch_load(good, tmp_path):
    """torch.save's pre-1.6 format declares each storage's size to the loader, which allocates it
    before anything is checked: a model checkpoint must be the zip format ours always are. Bare
    weights from elsewhere (load_weights: train.weights) may still be legacy."""
    from models.checkpoints import load_weights

    legacy = tmp_path / "legacy.pt"
    torch.save(good[1], legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    with pytest.raises(EngineError, match=r"legacy.pt: not a checkpoint this project wrote "
                                          r"\(torch.save's zip format\)"):
        load_checkpoint(legacy)
    assert read_checkpoint(legacy)["model_name"] == "perfex_cnn"
    load_weights(build_model("perfex_cnn", **TINY), legacy)  # initial weights: still read


class _MetaShy(nn.Module):
    """A model whose construction reads a tensor's value (the meta device has none)."""

    def __init__(self, width: int):
        super().__init__()
        scale = torch.ones(1).sum().item()  # data-dependent: fails on meta
        self.lin = nn.Linear(width, int(scale) * 5)


def test_a_model_the_meta_device_cannot_build_still_loads_and_is_checked(tmp_path, monkeypatch,
                                                                        caplog):
    spec = registry.ModelSpec("meta_shy", lambda width=3: _MetaShy(width), "au", ("aus",),
                              "test", "a test model")
    monkeypatch.setitem(registry._REGISTRY, "meta_shy", spec)
    model = _MetaShy(3)
    path = save_checkpoint(tmp_path / "shy.pt", model=model, model_name="meta_shy",
                           model_config={"width": 3}, inputs=["aus"])
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.lin.weight, model.lin.weight)
    assert "cannot be built on the meta device" in caplog.text
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["width"] = 4
    torch.save(ckpt, tmp_path / "shy4.pt")
    with pytest.raises(EngineError, match=r"tensor 'lin.weight' is \(5, 4\) in the model, "
                                          r"\(5, 3\) in the checkpoint"):
        load_checkpoint(tmp_path / "shy4.pt")


def test_predict_refuses_a_widened_checkpoint_in_one_line(good, tmp_path, caplog, monkeypatch,
                                                          builds):
    def refuse(*args, **kwargs):
        raise AssertionError("the front-end ran before the checkpoint was checked")

    monkeypatch.setattr(predict, "run_front_end", refuse)
    path = tampered(good, tmp_path, "wide", lambda c: c["model_config"].update(hidden=WIDE))
    assert predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "o"),
                         "--model", str(path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(path) in errors[0] and "'head.mlp.0.weight'" in errors[0]
    assert not (tmp_path / "o").exists()
    assert builds == ["meta"]  # refused before the model was built for real

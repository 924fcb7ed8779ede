"""A tampered or foreign checkpoint is one EngineError (exit 2) that starts with the checkpoint's
path and says what is wrong, never a traceback; a file that is no checkpoint is called that; a
checkpoint never makes the model builder open a file it names (models/checkpoints.py).

    .venv/bin/python -m pytest tests/test_checkpoint_input.py -q
"""
from __future__ import annotations

import copy

import pytest
import torch

from models import checkpoints
from models.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from models.registry import build_model
from models.solver import EngineError
from stages import predict
from tests.conftest import real_fixture


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small real hrnet_face checkpoint (its config has `weights`) and its loaded dict."""
    torch.manual_seed(0)
    model = build_model("hrnet_face", width=8)
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model=model,
                           model_name="hrnet_face", train_mean=[0.5] * 5, inputs=["face"],
                           source_config={"face": {"size": 64, "max_eval_views": 4}})
    return path, torch.load(path, weights_only=True)


def tampered(good, tmp_path, edit) -> str:
    ckpt = copy.deepcopy(good[1])
    edit(ckpt)
    path = tmp_path / "tampered.pt"
    torch.save(ckpt, path)
    return str(path)


def _first_tensor(c):
    return next(iter(c["state_dict"]))


EDITS = {
    "wrong shape": (lambda c: c["state_dict"].__setitem__(_first_tensor(c), torch.zeros(1, 2, 3)),
                    "state_dict does not fit model 'hrnet_face' as its model_config builds it: "
                    r"tensor '.*' is \(.*\) in the model, \(1, 2, 3\) in the checkpoint"),
    "missing tensor": (lambda c: c["state_dict"].pop(_first_tensor(c)),
                       "state_dict does not fit model 'hrnet_face' as its model_config builds it: "
                       "it lacks tensor"),
    "unknown model": (lambda c: c.__setitem__("model_name", "no_such_model"),
                      "cannot build its model 'no_such_model': unknown model"),
    "model name not a string": (lambda c: c.__setitem__("model_name", 7),
                                "model_name is a int, not a str"),
    "config not a mapping": (lambda c: c.__setitem__("model_config", "notadict"),
                             "model_config is a str, not a dict"),
    "config key unknown": (lambda c: c["model_config"].__setitem__("bogus", 1),
                           "cannot build its model 'hrnet_face': .*unknown config key 'bogus'"),
    "state_dict not a mapping": (lambda c: c.__setitem__("state_dict", [1, 2]),
                                 "state_dict is a list, not a dict"),
    "state_dict value not a tensor": (lambda c: c["state_dict"].__setitem__("x", "y"),
                                      "state_dict entry 'x' is not a named tensor"),
    "source_config a string": (lambda c: c.__setitem__("source_config", "zzz"),
                               "source_config is a str, not a dict"),
    "source_config entry a string": (lambda c: c["source_config"].__setitem__("face", "zzz"),
                                     r"source_config\['face'\] is a str, not a mapping"),
    "inputs a string": (lambda c: c.__setitem__("inputs", "face"), "inputs is a str, not a list"),
    "inputs a foreign key": (lambda c: c.__setitem__("inputs", ["no_such_source"]),
                             "inputs lists 'no_such_source', which model 'hrnet_face' does not "
                             "read"),
    "train_mean not numbers": (lambda c: c.__setitem__("train_mean", ["a"] * 5),
                               "train_mean holds 'a', not a number"),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_a_tampered_checkpoint_is_one_error_naming_the_file(good, tmp_path, what):
    edit, message = EDITS[what]
    path = tampered(good, tmp_path, edit)
    with pytest.raises(EngineError, match=message) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_empty_inputs_are_the_named_models_own(good, tmp_path):
    """An empty `inputs` list (predict then built no source: StopIteration) is read as the
    model's registered inputs, what its architecture reads."""
    path = tampered(good, tmp_path, lambda c: c.__setitem__("inputs", []))
    _, ckpt = load_checkpoint(path)
    assert ckpt["inputs"] == ["face"]


def test_model_config_weights_is_never_opened(good, tmp_path, monkeypatch):
    """`model_config.weights` naming another file (/etc/passwd, another checkpoint): the file is
    not read, and the checkpoint's own state_dict is the model's weights."""
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, model=build_model("hrnet_face", width=8), model_name="hrnet_face")
    opened = []
    real = checkpoints.read_checkpoint
    monkeypatch.setattr(checkpoints, "read_checkpoint",
                        lambda p, **kw: opened.append(str(p)) or real(p, **kw))
    for target in ("/etc/passwd", str(other)):
        opened.clear()
        path = tampered(good, tmp_path, lambda c: c["model_config"].__setitem__("weights",
                                                                               target))
        model, _ = load_checkpoint(path)
        assert opened == [path]
        for key, value in good[1]["state_dict"].items():
            assert torch.equal(model.state_dict()[key], value)


def test_a_file_that_is_no_checkpoint_is_called_that(tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    video = tmp_path / "video.pt"
    video.write_bytes(real_fixture("single_face.mp4").read_bytes())
    hello, noise = tmp_path / "hello.pt", tmp_path / "noise.pt"  # torch: KeyError '101' and
    hello.write_text("hello world\n")  # IndexError 'pop from empty list', its own words
    noise.write_bytes(bytes(range(1, 128)) * 40)
    for path in (text, video, hello, noise):
        with pytest.raises(EngineError) as caught:
            read_checkpoint(path)
        assert str(caught.value).startswith(f"{path}: not a PyTorch checkpoint: neither torch's")
        assert "objects other than" not in str(caught.value)
    with pytest.raises(EngineError, match="is a directory, not a checkpoint file"):
        read_checkpoint(tmp_path)


def test_a_blocked_global_keeps_the_objects_wording(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"model_name": Evil()}, path)
    with pytest.raises(EngineError, match="it holds objects other than tensors and plain data "
                                          r"\(.*GLOBAL posix.system.*\); refused, not loaded"):
        read_checkpoint(path)


def test_predict_exits_2_in_one_line_on_a_tampered_checkpoint(good, tmp_path, caplog):
    """Through the CLI: exit 2 (was a TypeError traceback, exit 1), the line names the file."""
    path = tampered(good, tmp_path, lambda c: c.__setitem__("model_config", "notadict"))
    code = predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "o"),
                         "--model", path, "--no-explain"])
    assert code == 2
    assert f"{path}: model_config is a str, not a dict" in caplog.text
    assert "Traceback" not in caplog.text

"""Sequence inputs shorter than a network takes, for every registered model: each declares the
fewest time steps it takes (`min_lengths`) and takes exactly that many; a face clip under it is
refused by name (no black frames are padded in), an AU sequence of one step is scored as it is.
The audio side (log-mel and wave padding at predict) is tests/test_short_audio.py.

    .venv/bin/python -m pytest -q tests/test_short_sequences.py
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.data import AUSource, AUSourceConfig, InputSource, SourceError
from models.engine import save_checkpoint
from models.inference import min_lengths, predict_videos, short_views
from models.registry import build_model, list_models
from stages import predict
from tests.test_short_audio import SR, speech_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQUENCE_KEYS = ("face_seq", "aus", "logmel", "wave")

# The fewest steps each sequence input of each registered model takes with its default config,
# measured by feeding shorter and shorter inputs (2026-12-06): 1 where the network takes a
# single step (the face-clip nets' temporal convs and pools pad or round up, the AU nets mask).
# bimodal_lstm needs a crop per segment (6) and 6 log-mel segments of 8 steps.
MINIMUMS = {
    "audio_interpret_net": {"wave": 3660},
    "bimodal_lstm": {"face_seq": 6, "logmel": 48},
    "bimodal_resnet": {"logmel": 16},
    "cnn_lstm_face_seq": {"face_seq": 1},
    "crnet": {"logmel": 16},
    "logmel_cnn": {"logmel": 16},
    "multi_modal_pred_net": {"logmel": 1},  # adaptive pooling to 15 steps
    "perfex_cnn": {"aus": 1},
    "perfex_hybrid": {"aus": 1},
    "r3d_face_seq": {"face_seq": 1},
    "slow_fast_face_seq": {"face_seq": 1},
    "spectrum_model": {"aus": 1},
    "tpn_face_seq": {"face_seq": 1},
    "vat_face_seq": {"face_seq": 1},
    "wave_resnet1d": {"wave": 12},
}


def _batch(lengths: dict[str, int], B: int = 2) -> dict[str, torch.Tensor]:
    """Every input a zoo model reads, each sequence input lengths[key] steps long (1 if unnamed)."""
    n = {k: lengths.get(k, 1) for k in SEQUENCE_KEYS}
    g = torch.Generator().manual_seed(0)
    return {"face": torch.rand(B, 3, 64, 64, generator=g),
            "frame": torch.rand(B, 3, 64, 64, generator=g),
            "face_seq": torch.rand(B, n["face_seq"], 3, 64, 64, generator=g),
            "aus": torch.rand(B, n["aus"], 17, generator=g),
            "aus_mask": torch.ones(B, n["aus"], dtype=torch.bool),
            "logmel": torch.randn(B, 64, n["logmel"], generator=g),
            "wave": torch.randn(B, n["wave"], generator=g)}


def test_the_table_names_every_registered_model_with_a_sequence_input():
    with_sequences = {m["name"] for m in list_models()
                      if set(m["inputs"]) & set(SEQUENCE_KEYS)}
    assert with_sequences == set(MINIMUMS)


@pytest.mark.parametrize("name", sorted(MINIMUMS))
def test_each_sequence_network_takes_its_declared_minimum_and_not_one_step_less(name):
    """A network that takes one step declares nothing; one with a real minimum declares it, so
    predict pads (log-mel, wave) or refuses (a face clip) and train refuses a shorter crop."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    want = MINIMUMS[name]
    assert min_lengths(model) == {k: n for k, n in want.items() if n > 1}
    with torch.no_grad():
        assert model(_batch(want)).isfinite().all()
        for key, need in want.items():
            if need > 1:  # torch's error or the network's own ValueError one step under
                with pytest.raises((RuntimeError, ValueError)):
                    model(_batch({**want, key: need - 1}))


# --------------------------------------------------------------------------------------------------
# predict_videos: a face clip under the minimum is refused, a one-step AU sequence is scored


class _Views(InputSource):
    """Fixed eval views: {key: (V, ...)} for every video."""

    def __init__(self, views: dict[str, torch.Tensor]):
        self.keys, self.views = tuple(views), views

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        return self.views

    def fitted_config(self) -> dict[str, dict]:
        return {}


def test_predict_videos_refuses_a_face_clip_under_the_minimum_naming_video_length_and_minimum():
    """bimodal_lstm with 6 segments on 4-frame clips (a checkpoint's face_seq length under its
    segments) failed inside features with its own ValueError, after the front-end had run; black
    frames would mean no face, so it is refused, not padded."""
    torch.manual_seed(0)
    model = build_model("bimodal_lstm", width=8, audio_widths=[8, 16, 32])
    views = _Views({"face_seq": torch.zeros(1, 4, 3, 64, 64, dtype=torch.uint8),
                    "logmel": torch.zeros(1, 64, 300)})
    with pytest.raises(SourceError) as caught:
        predict_videos(model, [views], ["clip7"])
    assert str(caught.value) == ("video 'clip7': its face_seq view has 4 steps, under the 6 "
                                 "BimodalLSTM takes (min_lengths); a face_seq is not padded")
    assert short_views(model, [views], "clip7") == {}  # refused, never "padded" in a warning


@pytest.mark.parametrize("name", ["perfex_cnn", "perfex_hybrid", "spectrum_model"])
def test_a_one_step_au_sequence_is_scored_alone_as_beside_a_long_one(name):
    """An AU sequence shorter than seq_len (one step of 80) is zero-padded with a mask by the
    source, and the AU nets pool and attend over real steps only: no minimum, no padding
    warning, and its score does not depend on its batch-mate's length."""
    rng = np.random.default_rng(0)
    source = AUSource({"one": rng.uniform(0, 5, (1, 17)), "long": rng.uniform(0, 5, (80, 17))},
                      config=AUSourceConfig(seq_len=80, scale=0.2))
    torch.manual_seed(0)
    model = build_model(name)
    alone = predict_videos(model, [source], ["one"])
    together = predict_videos(model, [source], ["one", "long"])
    assert np.isfinite(together).all()  # alike to float rounding: convs over 1 or 80 steps
    np.testing.assert_allclose(alone[0], together[0], rtol=0, atol=1e-6)
    assert short_views(model, [source], "one") == {}


# --------------------------------------------------------------------------------------------------
# predict on a real 3-frame clip


def test_predict_refuses_a_checkpoint_whose_face_clips_are_shorter_than_its_network_takes(
        tmp_path, caplog):
    """Refused when the checkpoint is read, before any front-end work: one line naming the
    checkpoint, the option, the length and the minimum (it was refused per clip, after the
    front-end had run on each; pad_short's own refusal is the test above)."""
    torch.manual_seed(0)
    model = build_model("bimodal_lstm", width=8, audio_widths=[8, 16, 32])
    sources = {"face_seq": {"size": 64, "length": 4, "sampling": "segments"},
               "logmel": {"stats_split": "", "eval_mode": "centre"}}
    ckpt = save_checkpoint(tmp_path / "bimodal_lstm" / "best.pt", model=model,
                           model_name="bimodal_lstm", train_mean=[0.5] * 5,
                           inputs=["face_seq", "logmel"], source_config=sources)
    clip = speech_clip(tmp_path / "three.mkv", SR // 5, n_frames=3)
    code = predict.main([str(clip), "--out", str(tmp_path / "out"), "--model", str(ckpt),
                         "--no-explain"])
    assert code == 2
    refusal = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusal) == 1 and str(ckpt) in refusal[0], refusal
    assert ("its face_seq clips are 4 steps (source_config.face_seq.length), under the 6 "
            "BimodalLSTM takes (min_lengths): it could score no video") in refusal[0], refusal
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_scores_a_3_frame_clip_with_a_face_clip_model_repeating_its_crop(tmp_path):
    """The face_seq source repeats a short video's crops to fill the clip (models/data_image.py),
    and slow_fast_face_seq takes one frame anyway: scored, with no padding warning, and a
    warning that the crops were repeated (there was none before)."""
    torch.manual_seed(0)
    model = build_model("slow_fast_face_seq", width=8)
    ckpt = save_checkpoint(tmp_path / "slow_fast" / "best.pt", model=model,
                           model_name="slow_fast_face_seq", train_mean=[0.5] * 5,
                           inputs=["face_seq"], source_config={"face_seq": {"size": 64}})
    clip = speech_clip(tmp_path / "three.mkv", SR // 5, n_frames=3)
    out = tmp_path / "out"
    assert predict.main([str(clip), "--out", str(out), "--model", str(ckpt), "--no-explain"]) == 0
    result = json.loads((out / "prediction.json").read_text())
    assert all(0 <= result[t] <= 1 for t in "OCEAN")
    assert not [w for w in result["warnings"] if "its network takes" in w]
    # but it says that its 6-frame clips were filled by repeating its one crop (3 frames at
    # 25 fps are 0.12 s: one sampled frame at frames.fps 5)
    assert ("the clip has 1 face crop(s) and the model reads clips spanning 6: its crops were "
            "repeated to fill one") in " ".join(result["warnings"])

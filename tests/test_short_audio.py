"""Clips shorter than an audio network takes: each network says its minimum (`min_lengths`),
scoring pads a shorter view up to it and predict says so; the audio stage gives a 0.05 s track a
valid row and a track without samples a per-video error, which predict names when it refuses.

    .venv/bin/python -m pytest -q tests/test_short_audio.py
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import save_checkpoint
from models.registry import build_model
from personality.common import BaseParams, load_params, read_artifact
from stages import audio, predict
from tests.conftest import real_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000


def speech_clip(path: Path, n_samples: int, *, n_frames: int = 3) -> Path:
    """The first `n_frames` pictures of single_face.mp4 (25 fps) with `n_samples` of the real
    LibriVox speech from 1 s in (a voiced stretch), as 16-bit PCM in Matroska: PCM keeps the
    exact length (AAC rounds a track up to whole 1024-sample frames). n_samples=0 writes an audio
    stream with no packets."""
    import av
    import soundfile as sf

    speech, sr = sf.read(real_fixture("librivox_speech_16k.wav"), dtype="float32")
    assert sr == SR
    with av.open(str(real_fixture("single_face.mp4"))) as src:
        pictures = [f.to_ndarray(format="rgb24") for f, _ in zip(src.decode(video=0),
                                                                 range(n_frames))]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=Fraction(25))
        video.height, video.width = pictures[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=SR, layout="mono")
        for img in pictures:
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if n_samples:
            piece = np.round(speech[SR:SR + n_samples] * 32767).astype(np.int16)[None]  # (1, n)
            frame = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
            frame.sample_rate, frame.pts = SR, 0
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path


# --------------------------------------------------------------------------------------------------
# the networks' minimum lengths


def _batch(key: str, steps: int) -> dict[str, torch.Tensor]:
    """Every input the audio and audio-visual models read, the audio one `steps` long."""
    audio_in = torch.zeros(2, 64, steps) if key == "logmel" else torch.zeros(2, steps)
    return {key: audio_in, "face": torch.zeros(2, 3, 64, 64), "frame": torch.zeros(2, 3, 64, 64),
            "face_seq": torch.zeros(2, 6, 3, 64, 64)}


@pytest.mark.parametrize("name, config, key, want", [
    ("logmel_cnn", {}, "logmel", 16),  # four 2x2 pools
    ("logmel_cnn", {"widths": [8, 16, 32, 64], "time_pool": 4}, "logmel", 61),  # params.yaml's
    ("logmel_cnn", {"widths": [8, 8]}, "logmel", 4),
    ("bimodal_resnet", {"width": 8, "audio_widths": [8, 16, 32, 64], "time_pool": 4}, "logmel",
     61),
    ("crnet", {"width": 8, "layers": [1, 1, 1, 1]}, "logmel", 16),
    ("bimodal_lstm", {"width": 8, "audio_widths": [8, 16, 32], "time_pool": 4}, "logmel", 6 * 29),
    ("wave_resnet1d", {"width": 8}, "wave", 12),
    ("wave_resnet1d", {"width": 8, "stem_kernel": 49, "stem_stride": 2}, "wave", 7),
    ("audio_interpret_net", {}, "wave", 3660),
    ("audio_interpret_net", {"domain": "frequency"}, "wave", 7320),
    ("audio_interpret_net", {"downsample": 1, "kernels": [5, 6, 7]}, "wave", 992),
])
def test_each_audio_network_takes_its_declared_minimum_and_not_one_step_less(name, config, key,
                                                                             want):
    torch.manual_seed(0)
    model = build_model(name, **config).eval()
    assert model.min_lengths()[key] == want  # bimodal_lstm's face_seq: test_short_sequences.py
    with torch.no_grad():
        assert model(_batch(key, want)).isfinite().all()
        with pytest.raises(RuntimeError):  # a pool or conv with nothing left: torch's own error
            model(_batch(key, want - 1))


def test_pad_short_pads_only_a_view_under_the_minimum_with_zeros_after_it():
    from models.inference import pad_short

    short, long_, other = torch.ones(1, 64, 11), torch.ones(1, 64, 16), torch.ones(1, 5)
    out = pad_short({"logmel": short, "aus": other}, {"logmel": 16, "wave": 12})
    assert out["logmel"].shape == (1, 64, 16) and out["aus"] is other
    assert (out["logmel"][..., :11] == 1).all() and (out["logmel"][..., 11:] == 0).all()
    # a view at (or over) the minimum is the very tensor: the scores of such clips cannot move
    assert pad_short({"logmel": long_}, {"logmel": 16})["logmel"] is long_


# --------------------------------------------------------------------------------------------------
# predict on a real 0.1 s clip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Real (untrained, seeded) checkpoints of audio models that score the whole clip
    (eval_mode full) and one of the log-mel model on its centre crop. The log-mel ones
    standardise on the clip itself (stats_split "": a trained one carries its statistics)."""
    root = tmp_path_factory.mktemp("short_models")
    torch.manual_seed(0)
    specs = {"logmel_full": ("logmel_cnn", {}, {"logmel": {"stats_split": "",
                                                           "eval_mode": "full"}}),
             "logmel_centre": ("logmel_cnn", {}, {"logmel": {"stats_split": "",
                                                             "eval_mode": "centre"}}),
             "interpret_full": ("audio_interpret_net", {}, {"wave": {"eval_mode": "full"}}),
             "wave_full": ("wave_resnet1d", {"width": 8}, {"wave": {"eval_mode": "full"}})}
    paths = {}
    for key, (name, config, sources) in specs.items():
        model = build_model(name, **config)
        inputs = list(sources)
        paths[key] = save_checkpoint(root / key / "best.pt", model=model, model_name=name,
                                     train_mean=[0.5] * 5, inputs=inputs, source_config=sources)
    return paths


@pytest.fixture(scope="module")
def clip_0_1s(tmp_path_factory) -> Path:
    return speech_clip(tmp_path_factory.mktemp("clips") / "short.mkv", SR // 10)  # 1600 samples


def predicted(video: Path, checkpoint: Path, out: Path) -> dict:
    code = predict.main([str(video), "--out", str(out), "--model", str(checkpoint),
                         "--no-explain"])
    assert code == 0
    result = json.loads((out / "prediction.json").read_text())
    assert all(0 <= result[t] <= 1 for t in "OCEAN")
    return result


def test_a_0_1_s_clip_is_scored_by_a_full_clip_log_mel_model_which_says_it_padded(
        checkpoints, clip_0_1s, tmp_path):
    """11 log-mel frames under the CNN's 16: torch's "Output size is too small" reached the
    user as a fault of the checkpoint before."""
    result = predicted(clip_0_1s, checkpoints["logmel_full"], tmp_path / "full")
    said = " | ".join(result["warnings"])
    assert ("the model hears 0.11 s (11 frames) of the clip's log-mel, under the 0.16 s "
            "(16 frames) its network takes: padded with each band's training mean") in said, said
    centre = predicted(clip_0_1s, checkpoints["logmel_centre"], tmp_path / "centre")
    assert not [w for w in centre["warnings"] if "its network takes" in w]  # 300 frames: no pad


def test_a_0_1_s_clip_is_scored_by_wave_models_padded_only_under_their_minimum(
        checkpoints, clip_0_1s, tmp_path):
    result = predicted(clip_0_1s, checkpoints["interpret_full"], tmp_path / "interpret")
    said = " | ".join(result["warnings"])
    assert ("the model hears 0.10 s (1600 samples) of the clip's wave, under the 0.23 s "
            "(3660 samples) its network takes: padded with silence") in said, said
    resnet = predicted(clip_0_1s, checkpoints["wave_full"], tmp_path / "resnet")  # takes 12
    assert not [w for w in resnet["warnings"] if "its network takes" in w]


def test_predict_refuses_an_audio_model_for_a_track_without_samples_naming_its_length(
        checkpoints, tmp_path, caplog):
    """The audio stage marks it 'too short'; the refusal says so, not 'silent or unreadable',
    and does not name the checkpoint."""
    empty = speech_clip(tmp_path / "empty.mkv", 0)
    code = predict.main([str(empty), "--out", str(tmp_path / "out"),
                         "--model", str(checkpoints["logmel_full"]), "--no-explain"])
    assert code == 2
    refusal = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusal) == 1 and "empty.mkv" in refusal[0], refusal
    assert "audio track too short (0.000 s < 0.04 s)" in refusal[0], refusal
    assert "best.pt" not in refusal[0]


# --------------------------------------------------------------------------------------------------
# the audio stage


def test_the_audio_stage_gives_a_0_05_s_track_a_row_and_an_empty_one_a_named_failure(tmp_path):
    from tests.test_audio import make_root

    videos = {"short": speech_clip(tmp_path / "short.mkv", SR // 20),  # 800 samples
              "empty": speech_clip(tmp_path / "empty.mkv", 0)}
    root = make_root(tmp_path, videos)
    summary = audio.run(load_params("audio", audio.AudioParams), BaseParams(workers=1),
                        root=root)
    assert summary["n_videos"] == 2 and summary["n_errors"] == 1
    table = read_artifact("audio", path=root / "data" / "audio").set_index("video_id")
    short = table.loc["short"]
    assert short["has_audio"] and short["error"] == "" and not short["silent"]
    assert short["n_frames"] == 6 and short["n_samples"] == 800
    assert len(short["logmel"]) == 6 * 64 and np.isfinite(short["fn_rms_db_mean"])
    empty = table.loc["empty"]
    assert empty["has_audio"] and empty["n_frames"] == 0 and empty["n_samples"] == 0
    assert empty["error"] == f"{videos['empty']}: audio track too short (0.000 s < 0.04 s)"
    failed = json.loads((root / "metrics" / "audio.json").read_text())["failed"]
    assert [row["video_id"] for row in failed] == ["empty"]

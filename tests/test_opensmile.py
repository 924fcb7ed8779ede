"""openSMILE feature sets in the audio stage (audio.feature_sets: egemaps, compare) and the sources
that read them (audio_fn, the functionals stage).

    .venv/bin/python -m pytest -q tests/test_opensmile.py
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import real_fixture
from personality import smile
from personality.common import BaseParams, ParamsError, read_artifact
from personality.schemas import EGEMAPS_V02
from stages import audio, functionals
from stages.audio import AudioParams

P = AudioParams()  # the default: librosa only
EG = dataclasses.replace(P, feature_sets=["librosa", "egemaps"])
EGEMAPS_COLUMNS = [f"egemaps_{n}" for n in EGEMAPS_V02]


@pytest.fixture(scope="module")
def speech_mp4(tmp_path_factory) -> Path:
    """The real LibriVox read speech (7 s, 16 kHz) muxed as AAC beside a small picture."""
    import soundfile as sf
    from test_audio import mux

    y, sr = sf.read(real_fixture("librivox_speech_16k.wav"), dtype="float32")
    return mux(tmp_path_factory.mktemp("speech") / "speech.mp4", y, sr)


def smile_columns(row_or_columns) -> list[str]:
    return [c for c in row_or_columns if c.startswith(smile.PREFIXES)]


# --------------------------------------------------------------------------------------------------
# the columns: official names, finite on real speech, NaN without usable audio


def test_declared_names_are_opensmiles_egemaps_v02():
    ex = smile.extractor("egemaps")
    assert len(EGEMAPS_V02) == 88 and tuple(ex.feature_names) == EGEMAPS_V02
    assert "egemaps_F0semitoneFrom27.5Hz_sma3nz_amean" in smile.column_names("egemaps", ex)


def test_egemaps_on_real_speech_are_finite_and_plausible(speech_mp4):
    timings: dict[str, float] = {}
    row = audio.process_video("speech", speech_mp4, EG, timings)
    assert row["error"] == "" and not row["silent"]
    assert smile_columns(row) == EGEMAPS_COLUMNS  # official names, openSMILE's order
    values = np.array([row[c] for c in EGEMAPS_COLUMNS])
    assert np.isfinite(values).all()
    # adult read speech: pitch 70-400 Hz is 16-46 semitones re 27.5 Hz; the voiced share of the
    # librosa stream and the voiced-segment rate of openSMILE agree on "mostly speech"
    assert 16 < row["egemaps_F0semitoneFrom27.5Hz_sma3nz_amean"] < 46
    assert row["egemaps_VoicedSegmentsPerSec"] > 0.5 and row["fn_voiced_frac"] > 0.3
    assert row["egemaps_loudness_sma3_amean"] > 0
    assert timings["egemaps"] > 0 and "compare" not in timings


def test_real_talking_head_track_silent_by_default_finite_ungated():
    path = real_fixture("single_face.mp4")  # a real talking head; its AAC track is near silent
    row = audio.process_video("quiet", path, EG)
    assert row["silent"] and row["error"] == ""
    assert smile_columns(row) == EGEMAPS_COLUMNS
    assert all(np.isnan(row[c]) for c in EGEMAPS_COLUMNS)  # as fn_*: NaN on a silent clip
    ungated = dataclasses.replace(EG, silence_db=-200.0, min_active_frac=0.0)
    row = audio.process_video("quiet", path, ungated)
    assert not row["silent"] and np.isfinite([row[c] for c in EGEMAPS_COLUMNS]).all()


def test_no_audio_track_gives_nan_egemaps(tmp_path):
    from test_audio import mux

    row = audio.process_video("mute", mux(tmp_path / "mute.mp4", None, seconds=1.0), EG)
    assert not row["has_audio"] and smile_columns(row) == EGEMAPS_COLUMNS
    assert all(np.isnan(row[c]) for c in EGEMAPS_COLUMNS)


def test_compare_set_gives_6373_finite_columns(speech_mp4):
    p = dataclasses.replace(P, feature_sets=["compare"])
    row = audio.process_video("speech", speech_mp4, p)
    cols = smile_columns(row)
    assert len(cols) == 6373 and all(c.startswith("compare_") for c in cols)
    assert np.isfinite([row[c] for c in cols]).all()
    assert not any(c.startswith("fn_") for c in row) and row["n_frames"] == 0  # no librosa
    assert row["n_samples"] > 0  # the wave is still stored


# --------------------------------------------------------------------------------------------------
# the switch; the default has none of them; errors are one line naming the video


def test_default_output_has_no_opensmile_column(speech_mp4):
    row = audio.process_video("speech", speech_mp4, P)
    assert smile_columns(row) == [] and any(c.startswith("fn_") for c in row)
    assert P.feature_sets == ["librosa"] and P.smile_sets == ()


def test_bad_feature_set_names_the_key():
    with pytest.raises(ParamsError, match="audio.feature_sets"):
        dataclasses.replace(P, feature_sets=["librosa", "gemaps"]).validate()
    with pytest.raises(ParamsError, match="audio.feature_sets"):
        dataclasses.replace(P, feature_sets=[]).validate()


def test_opensmile_failure_is_one_line_naming_the_video(speech_mp4, monkeypatch):
    ex = smile.extractors(["egemaps"])["egemaps"]

    def broken(signal, sampling_rate):
        raise RuntimeError("component cFunctionals\nfailed\n  at line 3")

    monkeypatch.setattr(ex, "process_signal", broken)
    row = audio.process_video("speech", speech_mp4, EG)
    assert str(speech_mp4) in row["error"] and "\n" not in row["error"]
    assert "eGeMAPSv02 failed: RuntimeError: component cFunctionals failed at line 3" in row["error"]
    assert all(np.isnan(row[c]) for c in EGEMAPS_COLUMNS) and np.isnan(row["fn_rms_db_mean"])
    with pytest.raises(smile.SmileError, match="non-finite"):
        smile.functionals(np.full(16000, np.nan, np.float32), 16000, ex, "egemaps")


# --------------------------------------------------------------------------------------------------
# the stage, then the sources that read the columns


@pytest.fixture(scope="module")
def egemaps_root(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny synthetic dataset's audio stage run with feature_sets [librosa, egemaps]."""
    root = tmp_path_factory.mktemp("egemaps")
    (root / "data").mkdir()
    for name in ("manifest.parquet", "clips.parquet"):
        shutil.copy(tiny_dataset / "data" / name, root / "data")
    shutil.copytree(tiny_dataset / "data" / "videos", root / "data" / "videos")
    audio.run(EG, BaseParams(workers=1), root=root)
    return root


def test_stage_writes_both_sets_schema_checked(egemaps_root):
    table = read_artifact("audio", path=egemaps_root / "data" / "audio")  # checks the kinds
    assert smile_columns(table.columns) == EGEMAPS_COLUMNS
    assert np.isfinite(table[EGEMAPS_COLUMNS].to_numpy()).all()
    assert len([c for c in table.columns if c.startswith("fn_")]) == 548


def test_audio_fn_source_includes_them_when_asked(egemaps_root):
    import torch

    from models import data_audio

    ids = read_artifact("manifest", path=egemaps_root / "data" / "manifest.parquet")[
        "video_id"].tolist()
    both = data_audio.audio_fn_source(root=egemaps_root, video_ids=ids, config={})
    assert both.n_features == 548 + 88 and set(EGEMAPS_COLUMNS) <= set(both.columns)
    only = data_audio.audio_fn_source(root=egemaps_root, video_ids=ids,
                                      config={"include": ["egemaps_"]})
    assert only.columns == EGEMAPS_COLUMNS and only.fitted["audio_fn"]["columns"] == only.columns
    v = only.train_item(ids[0], np.random.default_rng(0))["audio_fn"]
    assert v.shape == (88,) and bool(v.isfinite().all()) and float(v.abs().sum()) > 0
    again = data_audio.audio_fn_source(root=egemaps_root, video_ids=ids[:1],  # a checkpoint's
                                       config=only.fitted["audio_fn"])  # fitted state
    assert again.columns == only.columns
    assert torch.equal(again.eval_items(ids[0])["audio_fn"], only.eval_items(ids[0])["audio_fn"])


def test_functionals_stage_carries_them(egemaps_root):
    rows, cols = functionals._audio_rows(egemaps_root)
    assert set(EGEMAPS_COLUMNS) <= set(cols)
    vid = next(iter(rows))
    out = functionals.audio_functionals(rows[vid], cols)
    assert np.isfinite([out[c] for c in EGEMAPS_COLUMNS]).all()
    assert "f0_semitone_mean" in out  # with librosa's fn_*
    only = [c for c in cols if c.startswith("egemaps_")]
    assert "f0_semitone_mean" not in functionals.audio_functionals(rows[vid], only)
    assert all(np.isnan(v) for v in functionals.audio_functionals(None, only).values())

"""augment stage: PerFeX's sequence augmentation on the train split only, ids kept, seeded.

    .venv/bin/python -m pytest tests/test_augment.py -q       # ~2 s, no video
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.augment import (AugmentParams, augment_clip, check_params, perturb, run, shift_edge,
                            window_starts)
from personality.common import BaseParams, StageInputError, read_artifact, write_artifact
from personality.schemas import AU_INTENSITY, AU_PRESENCE, TRAITS


def test_shift_pads_with_the_first_value():
    x = np.arange(6.0)[:, None]
    assert shift_edge(x, 2)[:, 0].tolist() == [0, 0, 0, 1, 2, 3]
    assert shift_edge(x, 0) is x


def test_windows_are_non_overlapping_and_short_clips_stay_whole():
    assert window_starts(10, 30, 0.5) == [(0, 10)]
    assert window_starts(60, 30, 0.5) == [(0, 30), (30, 60)]
    assert window_starts(70, 30, 0.5) == [(0, 30), (30, 60)]  # a 10-step tail < 15: dropped
    assert window_starts(80, 30, 0.5) == [(0, 30), (30, 60), (60, 80)]
    assert window_starts(0, 30, 0.5) == []


def test_augment_clip_recipe(rng):
    T = 45
    x = rng.uniform(0, 5, (T, 17))
    x[4] = np.nan
    t = np.arange(T) / 5.0
    p = AugmentParams(decimate=[1, 2], shifts=[0, 1], window=30, copies=2)
    seqs = augment_clip(x, t, p, np.random.default_rng(0))
    ids = [s[0] for s in seqs]
    assert len(ids) == len(set(ids))
    # factor 1: 2 shifts x 2 windows (45 = 30 + 15); factor 2: 2 phases x 2 shifts x 1 window
    assert len(seqs) == (2 * 2 + 2 * 2 * 1) * 3
    clean = dict((s[0], s[1]) for s in seqs)
    np.testing.assert_array_equal(clean["d1p0s0w0c0"], x[:30])
    np.testing.assert_array_equal(clean["d2p1s0w0c0"], x[1::2])  # the odd frames, 22 < 30 steps
    np.testing.assert_array_equal(clean["d1p0s1w0c0"][1:], x[:29])
    for aug_id, values, times in seqs:
        assert len(values) == len(times) and values.shape[1] == 17
        finite = values[np.isfinite(values)]
        assert finite.min() >= 0 and finite.max() <= 5
    noisy = clean["d1p0s0w0c1"]
    assert 24 <= len(noisy) <= 30 and not np.allclose(noisy, x[:len(noisy)], equal_nan=True)


def test_perturb_keeps_nan_and_clips(rng):
    x = np.full((20, 17), 4.9)
    x[3] = np.nan
    y, kept = perturb(x, rng, AugmentParams(noise_std=1.0, scale=0.5, crop_min=1.0))
    assert kept == slice(0, 20) and np.isnan(y[3]).all()
    assert np.nanmax(y) <= 5 and np.nanmin(y) >= 0


def test_bad_params_name_the_key():
    with pytest.raises(StageInputError, match="augment.window"):
        check_params(AugmentParams(window=0))
    with pytest.raises(StageInputError, match="augment.decimate"):
        check_params(AugmentParams(decimate=[0]))


def fake_repo(root, rng):
    """manifest of 6 clips (3 train, 2 val, 1 test) and their AU frames."""
    ids = [f"c{i}" for i in range(6)]
    splits = ["train", "train", "train", "val", "val", "test"]
    manifest = pd.DataFrame({"video_id": ids, "path": "", "split": splits,
                             "subject_id": [f"s{i}" for i in range(6)], "dataset": "fake",
                             **{t: 0.5 for t in TRAITS}, "duration_s": 8.0, "fps": 5.0,
                             "has_audio": False})
    write_artifact("manifest", manifest, path=root / "data" / "manifest.parquet")
    rows = []
    for vid in ids:
        T = int(rng.integers(20, 50))
        df = pd.DataFrame(rng.uniform(0, 5, (T, 17)), columns=list(AU_INTENSITY))
        df[list(AU_PRESENCE)] = 1.0
        df.insert(0, "video_id", vid)
        df.insert(1, "frame_idx", np.arange(T))
        df.insert(2, "t", np.arange(T) / 5.0)
        df.insert(3, "success", True)
        df.insert(4, "confidence", 0.9)
        rows.append(df)
    write_artifact("aus", pd.concat(rows, ignore_index=True), path=root / "data" / "aus")
    return manifest


def test_stage_augments_train_split_only_keeps_ids_and_is_seeded(tmp_path, rng):
    manifest = fake_repo(tmp_path, rng)
    summary = run(AugmentParams(), BaseParams(seed=5), root=tmp_path)
    aug = read_artifact("augmented", path=tmp_path / "data" / "augmented")
    train_ids = set(manifest.loc[manifest["split"] == "train", "video_id"])
    assert set(aug["video_id"]) == train_ids  # val / test clips never augmented
    assert summary["n_train_clips"] == 3 and summary["n_rows"] == len(aug)
    assert aug.groupby(["video_id", "aug_id"]).ngroups == summary["n_sequences"]
    first = aug.groupby(["video_id", "aug_id"])["frame_idx"].apply(lambda s: s.tolist()[:3])
    assert all(v == [0, 1, 2][:len(v)] for v in first)
    again_root = tmp_path / "again"
    fake_repo(again_root, np.random.default_rng(20261123))
    run(AugmentParams(), BaseParams(seed=5), root=again_root)
    again = read_artifact("augmented", path=again_root / "data" / "augmented")
    pd.testing.assert_frame_equal(aug, again)  # same inputs and seed: identical output
    other = run(AugmentParams(), BaseParams(seed=6), root=again_root)
    assert other["n_sequences"] == summary["n_sequences"]
    changed = read_artifact("augmented", path=again_root / "data" / "augmented")
    assert not changed.equals(aug)  # another seed: other crops, scales and noise
    clean = lambda df: df[df["aug_id"].str.endswith("c0")].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(clean(changed), clean(aug))  # clean windows do not depend on it

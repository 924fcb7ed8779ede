"""The embedded default dataset: deterministic, labels in range, subject-wise splits, labels that
follow the documented cues up to the stated ceiling, real faces MediaPipe finds, speech-like audio."""
from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd

from personality import synthetic as syn
from personality.common import read_artifact
from personality.schemas import TRAITS
from tests.conftest import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


def decode_frames(path: Path) -> np.ndarray:
    """All frames of an mp4 as RGB, (n_frames, H, W, 3) uint8."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """The mono audio track as float32 (n,), and its rate."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        chunks = [f.to_ndarray().mean(axis=0) for f in c.decode(stream)]
        return np.concatenate(chunks).astype(np.float32), stream.rate


def test_same_seed_same_dataset(tiny_dataset, tmp_path):
    """Another process (fresh interpreter, other heap and thread state) makes the same files."""
    import subprocess
    import sys

    again = tmp_path / "again"  # same seed as the session fixture
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from tests.conftest import make_tiny_dataset; "
                    "make_tiny_dataset(Path(sys.argv[1]))", str(again)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    for path in sorted((tiny_dataset / "data/videos").glob("*.mp4")):
        assert path.read_bytes() == (again / "data/videos" / path.name).read_bytes(), path.name
    a = read_artifact("manifest", path=tiny_dataset / "data/manifest.parquet")
    b = read_artifact("manifest", path=again / "data/manifest.parquet")
    pd.testing.assert_frame_equal(a, b)
    for vid in a["video_id"][:2]:
        fa = decode_frames(tiny_dataset / f"data/videos/{vid}.mp4")
        fb = decode_frames(again / f"data/videos/{vid}.mp4")
        assert fa.shape == fb.shape and np.array_equal(fa, fb)
    sa = read_artifact("user_study", path=tiny_dataset / "data/user_study.parquet")
    sb = read_artifact("user_study", path=again / "data/user_study.parquet")
    pd.testing.assert_frame_equal(sa, sb)


def test_other_seed_other_labels(tiny_dataset, tmp_path):
    other = make_tiny_dataset(tmp_path / "other", seed=8, n_videos=3, max_seconds=2.0)
    a = read_artifact("manifest", path=tiny_dataset / "data/manifest.parquet")
    b = read_artifact("manifest", path=other / "data/manifest.parquet")
    assert not np.allclose(a[list(TRAITS)].to_numpy()[:3], b[list(TRAITS)].to_numpy())


def test_manifest_contents(tiny_dataset):
    m = read_artifact("manifest", path=tiny_dataset / "data/manifest.parquet")
    assert len(m) == 6 and m["video_id"].is_unique
    labels = m[list(TRAITS)].to_numpy()
    assert np.all((labels >= 0) & (labels <= 1))
    assert set(m["split"]) == {"train", "val", "test"}
    assert (m.groupby("subject_id")["split"].nunique() == 1).all()  # subjects never cross splits
    assert m["has_audio"].all()
    assert ((m["duration_s"] >= 2.0) & (m["duration_s"] <= 2.56)).all()
    for row in m.itertuples():
        with av.open(str(tiny_dataset / row.path)) as c:
            v = c.streams.video[0]
            assert (v.width, v.height) == (320, 240) and float(v.average_rate) == 25.0
            assert c.streams.audio[0].rate == 16000
    study = read_artifact("user_study", path=tiny_dataset / "data/user_study.parquet")
    assert set(study["video_id"]) <= set(m["video_id"])
    ratings = study[list(TRAITS)].to_numpy()
    assert np.all((ratings >= 1) & (ratings <= 5)) and np.all(ratings == np.round(ratings))
    report = json.loads((tiny_dataset / "metrics/ingest.json").read_text())
    assert report["n_videos"] == 6 and report["n_bad_rows"] == 0


def test_default_size_splits_by_subject():
    """The default 150 clips: subject-wise 70/15/15 split, no subject in two splits."""
    from personality.splits import assign_splits

    subjects = [f"s{i % 30}" for i in range(150)]
    split_of = assign_splits(subjects, [0.7, 0.15, 0.15], seed=1234)
    counts = pd.Series(list(split_of.values())).value_counts()
    assert counts.to_dict() == {"train": 22, "val": 4, "test": 4}  # round(0.15 * 30) == 4
    assert assign_splits(subjects, [0.7, 0.15, 0.15], seed=1234) == split_of  # decided once
    assert assign_splits(list(reversed(subjects)), [0.7, 0.15, 0.15], seed=1234) == split_of


def test_linear_fit_reaches_stated_ceiling():
    """Labels are a linear function of the latent cues plus noise: an ordinary least-squares fit
    on the cues, stretched to the labels' spread (CCC rewards matching spreads), reaches the
    noise ceiling, the plain fit falls short of it by the stretch, and the data card states
    those ceilings."""
    from sklearn.linear_model import LinearRegression

    from personality.ccc import ccc

    ceiling = syn.noise_ceiling(n=100_000, seed=1)
    rng = np.random.default_rng(5)
    cues = rng.standard_normal((20_000, len(syn.CUES)))
    labels = syn.labels_from_cues(cues, rng)
    train, test = slice(0, 15_000), slice(15_000, None)
    for k, trait in enumerate(TRAITS):
        fit = LinearRegression().fit(cues[train], labels[train, k])
        plain = fit.predict(cues[test])
        stretched = plain.mean() + (plain - plain.mean()) * labels[train, k].std() / plain.std()
        achieved = ccc(stretched, labels[test, k])
        assert abs(achieved - ceiling[trait]) < 0.01, (trait, achieved, ceiling[trait])
        assert ccc(plain, labels[test, k]) < achieved - 0.002  # least squares is not CCC's best
        visual = LinearRegression().fit(cues[train, :5], labels[train, k])
        vocal = LinearRegression().fit(cues[train, 5:], labels[train, k])
        # each modality alone explains part of every trait, and both together explain more
        for part, cols in ((visual, slice(0, 5)), (vocal, slice(5, 10))):
            alone = ccc(part.predict(cues[test, cols]), labels[test, k])
            assert 0.15 < alone < achieved - 0.05, (trait, alone)
    card = (REPO / "docs" / "data_card.md").read_text()
    for trait in TRAITS:
        row = re.search(rf"^\| {trait} \| (0\.\d+) \| (0\.\d+) \|", card, flags=re.M)
        assert row, f"data card lacks the ceiling row of {trait}"
        assert abs(float(row.group(1)) - ceiling[trait]) < 0.01, (trait, row.group(1))


def test_cues_reach_the_rendered_clip(tiny_dataset):
    """The latent cues drive what is rendered: the recorded mean unit strengths follow them."""
    cues = read_artifact("synthetic_cues", path=tiny_dataset / "data/synthetic_cues.parquet")
    assert {f"cue_{c}" for c in syn.CUES} <= set(cues.columns)
    assert np.corrcoef(cues["cue_smile"], cues["track_smile"])[0, 1] > 0.3  # only 6 clips
    assert np.corrcoef(cues["cue_head_motion"], cues["track_yaw"])[0, 1] > 0.3
    # the face photo each clip animates: one per subject, the rigs' names (subject s: rig s % 2)
    assert set(cues["face_photo"]) <= {rig for rig in syn.face_photos()}
    assert (cues.groupby("subject_id")["face_photo"].nunique() == 1).all()
    first = cues.sort_values("subject_id").drop_duplicates("subject_id")
    assert first["face_photo"].tolist() == [list(syn.face_photos())[int(s[5:]) % 2]
                                            for s in first["subject_id"]]
    # on many draws: expression episodes follow their cue, and the face mostly rests (so the
    # aus stage's per-video neutral baseline keeps the signal)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(300)
    tracks = [syn.episodes(np.random.default_rng(i), zi, 200, 25.0, period_s=1.5)
              for i, zi in enumerate(z)]
    assert np.corrcoef(z, [t.mean() for t in tracks])[0, 1] > 0.8
    at_rest = np.array([np.mean(t == 0) for t in tracks])
    assert np.median(at_rest) > 0.6 and np.mean(at_rest[np.abs(z) < 1.5] > 0.3) > 0.95


def test_mediapipe_finds_the_face(tiny_dataset):
    from personality.facemodel import detect_rgb, open_landmarker

    found = total = 0
    with open_landmarker(mode="image") as landmarker:
        for path in sorted((tiny_dataset / "data/videos").glob("*.mp4")):
            frames = decode_frames(path)
            for frame in frames[:: max(len(frames) // 8, 1)]:
                total += 1
                found += bool(detect_rgb(landmarker, frame).face_landmarks)
    assert total >= 40
    assert found / total >= 0.95, f"face found in {found}/{total} sampled frames"


def test_audio_is_speech_like(tiny_dataset):
    import librosa

    path = sorted((tiny_dataset / "data/videos").glob("*.mp4"))[0]
    y, sr = decode_audio(path)
    assert sr == 16000 and len(y) > 1.9 * sr
    rms = librosa.feature.rms(y=y, frame_length=400, hop_length=160)[0]
    assert rms.max() > 0.01, "audio is (near) silent"
    f0, voiced, _ = librosa.pyin(y, fmin=60, fmax=400, sr=sr, frame_length=1024, hop_length=160)
    assert 0.3 < np.mean(voiced) < 0.95, "voiced speech alternates with pauses and consonants"
    semitones = 12 * np.log2(f0[voiced] / np.nanmedian(f0[voiced]))
    assert 70 < np.nanmedian(f0[voiced]) < 400
    assert np.nanstd(semitones) > 0.3, "pitch moves: not a pure tone (one gives < 0.05)"
    # syllabic rhythm: the loudness envelope is modulated at 2-8 Hz
    env = rms - rms.mean()
    spectrum = np.abs(np.fft.rfft(env))
    freqs = np.fft.rfftfreq(len(env), d=160 / sr)
    band = (freqs > 2) & (freqs < 8)
    assert spectrum[band].sum() > 0.3 * spectrum[freqs > 0.5].sum()
    # a formant-filtered voice: broadband, not one spectral line
    flat = librosa.feature.spectral_flatness(y=y, n_fft=400, hop_length=160)[0]
    assert np.median(flat[rms > rms.max() * 0.3]) < 0.5

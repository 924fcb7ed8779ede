"""bench/cue_check_power.py, the cue check's power analysis: its pass rule, the simulated front-end
and the explain stage's procedure it runs (the ridge, cross-fitting, permutation importance) on
small cue-level data (a few seconds, no rendering)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from personality.schemas import TRAITS
from personality.synthetic import CUES, draw_cues, labels_from_cues
from tests.conftest import load_bench


def load_power():
    return load_bench("cue_check_power")


def clips_of(n_subjects: int, per_subject: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A cue-level dataset: subjects split 70/30 into train and val, labels from the law."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), per_subject)
    cues = draw_cues(rng, subject, n_subjects)
    clips = pd.DataFrame({"video_id": [f"v{i:04d}" for i in range(len(subject))],
                          "subject_id": [f"s{s:03d}" for s in subject],
                          "split": np.where(subject < 0.7 * n_subjects, "train", "val")})
    clips[list(TRAITS)] = labels_from_cues(cues, rng)
    return clips, cues


def test_pass_rule_counts_heavy_cues_in_each_traits_top_five():
    power = load_power()
    imp = np.zeros((len(CUES) + 10, len(TRAITS)))
    imp[len(CUES):] = 0.5  # ten nuisance columns above every cue: nothing passes
    assert not power.passes(imp).any()
    a = TRAITS.index("A")
    imp[CUES.index("smile"), a] = imp[CUES.index("pitch"), a] = 1.0  # 2 of A's smile, brow_l, pitch
    assert power.passes(imp).tolist() == [t == "A" for t in TRAITS]
    imp[CUES.index("pitch"), a] = 0.4  # now sixth
    assert not power.passes(imp).any()


def test_simulated_front_end_follows_each_cue_at_its_reliability():
    power = load_power()
    rng = np.random.default_rng(3)
    cues = rng.standard_normal((20000, len(CUES)))
    reliability = np.linspace(0.0, 1.0, len(CUES))
    x = power.measured(cues, reliability, 4, rng)
    assert x.shape == (20000, len(CUES) + 4)
    r = [np.corrcoef(x[:, j], cues[:, j])[0, 1] for j in range(len(CUES))]
    assert np.allclose(r, reliability, atol=0.02)
    # the reliability read from data: the best |r| of any column, NaN rows and constants skipped
    data = np.c_[np.full(200, 7.0), -2 * cues[:200, 1] + 1, cues[:200, 2] + rng.normal(0, 1, 200)]
    data[:5, 1] = np.nan
    best = power.front_end_reliability(data, cues[:200, :3])
    assert best[0] < 0.25  # cue 0: no column follows it (the constant one counts as 0)
    assert abs(best[1] - 1) < 1e-9  # an affine copy, read over its finite rows
    assert 0.6 < best[2] < 0.8  # cue + equal noise: r 1 / sqrt(2)


def test_stage_procedure_finds_measured_cues_and_not_dead_ones():
    """A sanity check of the simulation (tests/test_explain.py checks the procedure is the
    stage's, to the bit): perfectly measured cues pass everywhere, a dead column scores ~0."""
    power = load_power()
    clips, cues = clips_of(n_subjects=60, per_subject=3, seed=5)
    rng = np.random.default_rng(0)
    perfect = power.measured(cues, np.ones(len(CUES)), 20, rng)
    imp = power.importance(perfect, clips, repeats=2, seed=0)  # (30, 5)
    assert imp.shape == (len(CUES) + 20, len(TRAITS))
    assert power.passes(imp).all()
    # the smile measured by nothing: its column is noise, and the procedure sees it as dead
    dead = perfect.copy()
    dead[:, CUES.index("smile")] = rng.standard_normal(len(dead))
    imp_dead = power.importance(dead, clips, repeats=2, seed=0)
    a = TRAITS.index("A")
    assert imp[CUES.index("smile"), a] > 0.1
    assert abs(imp_dead[CUES.index("smile"), a]) < 0.03


def test_default_draw_reads_reliability_and_links_on_train_clips_only(tmp_path):
    """The front-end's reliability and the train split's links come from the train clips: a
    functional that follows a cue only on val or test rows does not count."""
    from personality.common import write_artifact

    power = load_power()
    clips, cues = clips_of(n_subjects=40, per_subject=2, seed=2)
    clips.loc[clips["subject_id"] >= "s034", "split"] = "test"
    train = clips["split"].eq("train").to_numpy()
    rng = np.random.default_rng(1)
    smile = np.where(train, rng.standard_normal(len(clips)), cues[:, 0])  # cue off train only
    blink = np.where(train, cues[:, CUES.index("blink_rate")], rng.standard_normal(len(clips)))
    (tmp_path / "data" / "functionals").mkdir(parents=True)
    write_artifact("manifest", clips.assign(path="x.mp4", dataset="synthetic", duration_s=8.0,
                                            fps=25.0, has_audio=True, label_scale="unit"),
                   path=tmp_path / "data" / "manifest.parquet")
    pd.DataFrame({"video_id": clips["video_id"], "subject_id": clips["subject_id"],
                  **{f"cue_{c}": cues[:, j] for j, c in enumerate(CUES)}}).to_parquet(
        tmp_path / "data" / "synthetic_cues.parquet")
    pd.DataFrame({"video_id": clips["video_id"], "smile_stat": smile,
                  "blink_stat": blink}).to_parquet(
        tmp_path / "data" / "functionals" / "functionals.parquet")
    got, latent, reliability = power.default_draw(tmp_path)
    assert np.allclose(latent, cues) and got["video_id"].tolist() == clips["video_id"].tolist()
    assert reliability[CUES.index("blink_rate")] == pytest.approx(1.0)
    assert reliability[CUES.index("smile")] < 0.5
    links = {(x["trait"], x["cue"]): x["train_r"] for x in power.train_links(got, latent)}
    want = np.corrcoef(cues[train, 0], clips.loc[train, "A"])[0, 1]
    assert links[("A", "smile")] == pytest.approx(want, abs=1e-3)
    assert len(links) == 15


def test_rendered_column_is_each_clips_mean_unit_strength_in_clip_order(tmp_path):
    """The ceiling row's column: per clip ingest's mean of the rendered unit over its frames,
    in the clips' order (not the file's), and None for a cue the renderer has no unit of."""
    power = load_power()
    (tmp_path / "data").mkdir()
    pd.DataFrame({"video_id": ["b", "a"], "cue_brow_lower": [0.0, 1.0],
                  "track_brow_lower": [0.3, 0.5]}).to_parquet(
        tmp_path / "data" / "synthetic_cues.parquet")
    clips = pd.DataFrame({"video_id": ["a", "b"]})
    assert power.rendered_column(tmp_path, clips, "brow_lower") == pytest.approx([0.5, 0.3])
    assert power.rendered_column(tmp_path, clips, "pitch") is None
    assert power.rendered_column(tmp_path / "nowhere", clips, "brow_lower") is None

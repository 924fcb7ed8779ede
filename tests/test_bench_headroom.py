"""bench/functionals_headroom.py on a small checkout made here (60 clips of 20 subjects, 30
functionals of which 10 are its latent cues plus noise, labels from the default data's law):
each subject is scored once, by the fold that holds it out; the oracle finds the planted columns;
every candidate predicts every clip; a real dataset (no latent cues) has no oracle or ceiling;
the per-trait choice takes each trait from the candidate its nested CV chose; the trees predict
and the mean averages the fold's ridge and trees.

    pytest tests/test_bench_headroom.py     # ~20 s
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personality.law import CUES, labels_from_cues
from personality.schemas import TRAITS
from personality.splits import kfold_splits
from tests.conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]
N_SUBJECTS, CLIPS = 20, 3


def make_checkout(root: Path, *, cues_file: bool = True) -> list[str]:
    """data/ of a run checkout; returns the names of the planted cue columns."""
    rng = np.random.default_rng(7)
    n = N_SUBJECTS * CLIPS
    cues = rng.standard_normal((n, len(CUES)))
    ids = [f"v{i:03d}" for i in range(n)]
    manifest = pd.DataFrame(labels_from_cues(cues, rng), columns=list(TRAITS))
    manifest.insert(0, "video_id", ids)
    manifest.insert(1, "subject_id", [f"s{i // CLIPS:02d}" for i in range(n)])
    planted = [f"AU_{c}_mean" for c in CUES]
    columns = {name: cues[:, j] + 0.3 * rng.standard_normal(n) for j, name in enumerate(planted)}
    columns.update({f"fn_noise_{k:02d}": rng.standard_normal(n) for k in range(12)})
    columns.update({f"fn_logmel_{k:02d}_mean": rng.standard_normal(n) for k in range(8)})
    (root / "data" / "functionals").mkdir(parents=True)
    (root / "params.yaml").write_text("base:\n  seed: 1234\n")
    manifest.to_parquet(root / "data" / "manifest.parquet")
    pd.DataFrame({"video_id": ids, **columns}).to_parquet(
        root / "data" / "functionals" / "functionals.parquet")
    if cues_file:
        frame = pd.DataFrame(cues, columns=[f"cue_{c}" for c in CUES])
        frame.insert(0, "video_id", ids)
        frame.to_parquet(root / "data" / "synthetic_cues.parquet")
    return planted


@pytest.fixture(scope="module")
def bench():
    return load_bench("functionals_headroom")


def test_each_subject_is_tested_by_one_fold_the_one_make_cv_tests_it_in(bench):
    subjects = np.repeat([f"s{i:02d}" for i in range(N_SUBJECTS)], CLIPS)
    folds = bench.outer_folds(subjects, 5, 1234)
    assert (folds >= 0).all() and len(np.unique(folds)) == 5
    for k in range(5):
        split = kfold_splits(list(subjects), n_folds=5, fold=k, seed=1234)
        assert {s for s, f in zip(subjects, folds) if f == k} == \
            {s for s, where in split.items() if where == "test"}


def test_the_bench_scores_every_clip_once_and_its_oracle_finds_the_planted_columns(bench,
                                                                                  tmp_path):
    planted = make_checkout(tmp_path)
    slow = (bench.RIDGE, bench.PER_TRAIT, bench.TREES, "mean of ridge and trees")  # below
    quick = [n for n in bench.CANDIDATES if n not in slow]
    out = bench.main(["--root", str(tmp_path), "--boot", "50", "--only", *quick, "--out",
                      str(tmp_path / "headroom.json")])
    figures = out["figures"]
    assert set(figures) == {"ceiling", bench.RIDGE, *quick}
    assert all(row["n_videos"] == N_SUBJECTS * CLIPS and row["n_folds"] == 5
               for row in figures.values())
    assert out["oracle_columns"] and all(sorted(chosen) == sorted(planted)
                                         for chosen in out["oracle_columns"])
    # the cues are measured at r 0.96: reading them is most of the ceiling, which no model that
    # never saw the clips it scores reaches (fitted on them, the ridge scored 0.92 against 0.89)
    assert figures["oracle columns"]["ccc"] > 0.5
    assert all(row["ccc"] < figures["ceiling"]["ccc"]
               for name, row in figures.items() if name != "ceiling")
    assert json.loads((tmp_path / "headroom.json").read_text())["n_subjects"] == N_SUBJECTS
    assert (tmp_path / "headroom.png").stat().st_size > 10_000


def test_a_real_dataset_gets_no_oracle_and_no_ceiling(bench, tmp_path):
    make_checkout(tmp_path, cues_file=False)
    out = bench.main(["--root", str(tmp_path), "--boot", "50", "--only", "PLS",
                      "--out", str(tmp_path / "h.json")])
    assert set(out["figures"]) == {bench.RIDGE, "PLS"} and not out["oracle_columns"]


def test_the_per_trait_choice_takes_each_trait_from_the_candidate_its_nested_cv_chose(bench):
    rng = np.random.default_rng(3)
    x, groups = rng.standard_normal((40, 12)), np.repeat(np.arange(10), 4)
    y = np.clip(0.5 + 0.1 * x[:, :5] + 0.05 * rng.standard_normal((40, 5)), 0, 1)
    ctx = {"columns": [f"c{i}" for i in range(12)], "notes": {}}
    names = (bench.RIDGE, "PLS")
    got = bench.per_trait_choice(x[:30], y[:30], groups[:30], x[30:], ctx, names=names)
    chosen = ctx["notes"][bench.PER_TRAIT][0]
    assert len(chosen) == 5 and set(chosen) <= set(names)
    for t, name in enumerate(chosen):
        alone = bench.CANDIDATES[name](x[:30], y[:30], groups[:30], x[30:], ctx)
        np.testing.assert_allclose(got[:, t], alone[:, t])


def test_the_trees_predict_every_clip_and_the_mean_averages_the_two_models_of_its_fold(bench):
    rng = np.random.default_rng(4)
    x, groups = rng.standard_normal((40, 8)), np.repeat(np.arange(10), 4)
    y = np.clip(0.5 + 0.1 * x[:, :5] + 0.05 * rng.standard_normal((40, 5)), 0, 1)
    trees = bench.trees(x[:30], y[:30], groups[:30], x[30:], {})
    assert trees.shape == (10, 5) and np.isfinite(trees).all()
    assert ((trees >= 0) & (trees <= 1)).all() and trees.std(0).min() > 0
    fold = {bench.RIDGE: np.full((10, 5), 0.2), bench.TREES: np.full((10, 5), 0.6)}
    mean = bench.mean_of_ridge_and_trees(x[:30], y[:30], groups[:30], x[30:], {"fold": fold})
    np.testing.assert_allclose(mean, 0.4)


def test_each_folds_models_see_only_the_other_folds_standardised_on_themselves(bench, tmp_path,
                                                                            monkeypatch):
    """A candidate that records what it is given: per fold, the training rows are exactly the
    subjects of the other folds, z-scored with their own statistics (mean 0, sd 1)."""
    make_checkout(tmp_path)
    seen = []

    def spy(xtr, ytr, groups, xte, ctx):
        live = xtr.std(0) > 0
        seen.append((set(groups), len(xte), np.abs(xtr.mean(0)).max(),
                     np.abs(xtr.std(0)[live] - 1).max()))
        return np.full((len(xte), 5), 0.5) + 0.01 * xte[:, :5]

    monkeypatch.setitem(bench.CANDIDATES, "spy", spy)
    bench.main(["--root", str(tmp_path), "--boot", "20", "--only", "spy",
                "--out", str(tmp_path / "h.json")])
    subjects = np.repeat([f"s{i:02d}" for i in range(N_SUBJECTS)], CLIPS)
    folds = bench.outer_folds(subjects, 5, 1234)
    assert len(seen) == 5
    for k, (groups, n_test, mean, sd) in enumerate(seen):
        assert groups == set(subjects[folds != k]) and n_test == (folds == k).sum()
        assert mean < 1e-5 and sd < 1e-4

"""The experiment scripts' own logic (scripts/zoo.py, scripts/cv.py, scripts/fit_gap.py) without
running DVC or training."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cv import fold_experiments, markdown, seed_experiments  # noqa: E402
from fit_gap import compare  # noqa: E402
from zoo import queue_states  # noqa: E402

# what dvc 3.67 prints: active tasks first, then finished ones in the order they finished
STATUS = """Task     Name          Created    Status
c40035e  cv-fold2      12:31 PM   Running
dac35fb  cv-fold4      12:32 PM   Queued
aa09460  cv-fold0      11:25 AM   Success
9175e9a  cv-fold1      11:25 AM   Success
320068f  cv-fold2      11:25 AM   Success
123c522  cv-fold4      11:25 AM   Success
d5f6a28  cv-fold0      12:31 PM   Failed
3bebe77  cv-fold1      12:31 PM   Success

Worker status: 2 active, 0 idle
"""


def test_a_name_queued_again_takes_the_state_of_its_newest_task():
    # an earlier commit's finished run of the same name must not hide the new one
    assert queue_states(STATUS, {"cv-fold0", "cv-fold1", "cv-fold2", "cv-fold4"}) == {
        "cv-fold0": "Failed", "cv-fold1": "Success", "cv-fold2": "Running",
        "cv-fold4": "Queued"}


def test_cv_folds_carry_the_extra_overrides():
    folds = fold_experiments(3, ["train.models=[functionals_ridge]"])
    assert list(folds) == ["cv-fold0", "cv-fold1", "cv-fold2"]
    assert folds["cv-fold2"][-1] == "train.models=[functionals_ridge]"
    assert "ingest.fold=2" in folds["cv-fold2"] and "register.enabled=false" in folds["cv-fold2"]


def test_seed_runs_vary_only_the_training_seed_and_the_table_names_them():
    runs = seed_experiments(3, ["train.models=[hrnet_face]"])
    assert list(runs) == ["seed1", "seed2", "seed3"]
    assert runs["seed2"] == ["train.seed=2", "retrain.seed=2",
                             "++train.model_config.functionals_gbt.seed=2",
                             "register.enabled=false", "train.models=[hrnet_face]"]
    assert not any(o.startswith("ingest.") for o in runs["seed3"])  # the default split
    rows = [{"model": "hrnet_face", "runs": {"seed1": 0.1, "seed2": 0.3}, "test_ccc_mean": 0.2,
             "test_ccc_sd": 0.141, "val_ccc_mean": 0.25, "n_runs": 2}]
    table = markdown(rows, ["seed1", "seed2"], "seed")
    assert "| seed 1 | seed 2 |" in table
    assert "| hrnet_face | 0.250 | 0.200 ± 0.141 | 0.100 |" in table


def test_queue_and_run_counts_and_returns_the_commit_it_queued_on(monkeypatch):
    """A commit made while the queue runs must not hide its experiments: every lookup uses the
    commit HEAD was at when they were queued, and the caller collects with it."""
    import subprocess

    import zoo

    calls, looked_up = [], []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        head = cmd[:2] == ["git", "rev-parse"]
        return subprocess.CompletedProcess(cmd, 0, stdout="c0ffee\n" if head else "", stderr="")

    def fake_dvc(*args, check=True):
        out = "Task Name Created Status\nt1 seed1 11:37 AM Success\n" if args[:2] == (
            "queue", "status") else ""
        return subprocess.CompletedProcess(["dvc", *args], 0, stdout=out, stderr="")

    def fake_refs(baseline="HEAD", prefix_filter="zoo-"):
        looked_up.append(baseline)
        return {"seed1": "refs/exps/c0/ffee/seed1"}

    monkeypatch.setattr(zoo.subprocess, "run", fake_run)
    monkeypatch.setattr(zoo, "dvc", fake_dvc)
    monkeypatch.setattr(zoo, "experiment_refs", fake_refs)
    monkeypatch.setattr(zoo.time, "sleep", lambda s: None)
    assert zoo.queue_and_run({"seed1": ["train.seed=1"]}, 1, prefix="seed") == "c0ffee"
    assert looked_up and set(looked_up) == {"c0ffee"}
    assert ["dvc", "queue", "start", "-j", "1"] in calls


def test_cv_main_collects_what_it_queued_on_that_commit_and_never_writes_an_empty_table(
        monkeypatch, tmp_path, capsys):
    import json

    import cv

    refs = {f"seed{k}": f"refs/exps/c0/ffee/seed{k}" for k in (1, 2, 3, 10)}
    refs["seedy-tass"] = "refs/exps/c0/ffee/seedy-tass"  # a name dvc made up: not a seed
    summary = {"hrnet_face": {"ccc": 0.2, "val_ccc": 0.3}}
    looked_up = []

    def fake_refs(baseline="HEAD", prefix_filter="cv-fold"):
        looked_up.append(baseline)
        return {n: r for n, r in refs.items() if n.startswith(prefix_filter)}

    monkeypatch.setattr(cv, "ROOT", tmp_path)
    monkeypatch.setattr(cv, "queue_and_run", lambda runs, jobs, prefix: "c0ffee")
    monkeypatch.setattr(cv, "experiment_refs", fake_refs)
    monkeypatch.setattr(cv, "show_json", lambda ref, path: summary)
    assert cv.main(["--seeds", "3"]) == 0  # seed10 (an earlier --seeds 10) is not this run's
    assert set(looked_up) == {"c0ffee"}
    saved = json.loads((tmp_path / "bench" / "results" / "seeds.json").read_text())
    assert saved["baseline"] == "c0ffee" and saved["runs"] == ["seed1", "seed2", "seed3"]
    # --collect reads every seed<k> of that commit, in numeric order
    assert cv.main(["--seeds", "3", "--collect", "--baseline", "c0ffee"]) == 0
    saved = json.loads((tmp_path / "bench" / "results" / "seeds.json").read_text())
    assert saved["runs"] == ["seed1", "seed2", "seed3", "seed10"]
    refs.clear()  # a commit with none: the last table stays
    assert cv.main(["--seeds", "3", "--collect"]) == 1
    assert "no seed<k> experiments" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench" / "results" / "seeds.json").read_text())["runs"][-1] \
        == "seed10"


def test_zoo_rows_carry_the_test_interval(monkeypatch, capsys):
    """make zoo's table shows each model's test CCC with its 95% interval from summary.json."""
    import zoo

    monkeypatch.setattr(zoo, "experiment_refs", lambda baseline="HEAD": {"zoo-m": "ref"})
    files = {"metrics/summary.json": {"m": {"ccc": 0.2, "acc": 0.9, "ccc_lo": 0.05,
                                            "ccc_hi": 0.31}, "baseline": {"ccc": 0.0}},
             "metrics/train/m.json": {"val": {"model": {"ccc": 0.25}}, "best_epoch": 3}}
    monkeypatch.setattr(zoo, "show_json", lambda ref, path: files.get(path))
    monkeypatch.setattr(zoo, "train_seconds", lambda model: 12.0)
    rows = zoo.collect(["m"])
    assert rows[0]["test_ccc_ci"] == [0.05, 0.31]
    zoo.print_table(rows)
    assert "0.200 [0.050, 0.310]" in capsys.readouterr().out


def _split(ids, y, pred, subjects):
    return {"ids": list(ids), "y": np.asarray(y, float), "pred": np.asarray(pred, float),
            "subjects": np.asarray(subjects, dtype=str)}


def test_fit_gap_pairs_model_and_ridge_on_the_same_clips_with_intervals():
    rng = np.random.default_rng(0)
    n = 60
    y = rng.uniform(0.2, 0.8, size=(n, 5))
    subjects = np.repeat(np.arange(12), 5)
    ids = [f"v{i}" for i in range(n)]
    model = _split(ids[:50], y[:50], y[:50] + rng.normal(0, 0.02, (50, 5)), subjects[:50])
    # the ridge scores every clip, in another order, and badly: the gap is paired on 50 clips
    order = rng.permutation(n)
    ridge = _split([ids[i] for i in order], y[order], rng.uniform(0.2, 0.8, (n, 5)),
                   subjects[order])
    c = compare(model, ridge, n_boot=200, seed=1, level=0.95)
    assert c["clips"] == 50 and c["subjects"] == 10
    assert c["model"] > 0.9 and abs(c["ridge"]) < 0.3
    assert c["model_ci"][0] <= c["model"] <= c["model_ci"][1]
    assert c["ridge_ci"][0] < c["ridge_ci"][1] and c["gap_ci"][0] > 0.5
    assert c["p_model_better"] == 1.0
    # scored against itself, the gap is exactly 0 and a coin flip
    same = compare(model, model, n_boot=50, seed=1, level=0.95)
    assert same["gap_ci"] == [0.0, 0.0] and same["p_model_better"] == 0.5


def test_cv_refuses_to_queue_folds_of_a_source_with_its_own_split(monkeypatch, capsys):
    import cv

    def never(*args, **kwargs):
        raise AssertionError("queued experiments that ingest would refuse")

    monkeypatch.setattr(cv, "queue_and_run", never)
    for source in ("udiva", "chalearn16"):
        with pytest.raises(SystemExit) as info:
            cv.main(["--set", f"ingest.source={source}"])
        assert info.value.code == 2
        assert f"ingest.source={source}: " in capsys.readouterr().err
    assert cv.fold_refusal([]) is None  # the default synthetic source folds


@pytest.mark.parametrize("script", ["zoo", "cv"])
def test_jobs_below_one_is_refused_before_anything_is_queued(script, monkeypatch, capsys):
    """`dvc queue start -j 0` starts no worker: the scripts then waited for ever."""
    import cv
    import zoo

    monkeypatch.setattr(zoo, "queue_and_run", lambda *a, **k: pytest.fail("queued"))
    monkeypatch.setattr(cv, "queue_and_run", lambda *a, **k: pytest.fail("queued"))
    with pytest.raises(SystemExit) as exit_:
        {"zoo": zoo, "cv": cv}[script].main(["--jobs", "0"])
    assert exit_.value.code == 2 and "at least one experiment" in capsys.readouterr().err


def test_cv_main_pools_the_folds_against_the_model_best_on_validation(monkeypatch, tmp_path,
                                                                      capsys):
    """The fold path of make cv: pooled figures asked for with the best mean val CCC's model,
    printed in both tables, saved in cv.json and drawn in cv.png; seeds pool nothing."""
    import json

    import cv

    refs = {f"cv-fold{k}": f"refs/exps/c0/ffee/cv-fold{k}" for k in range(3)}
    summary = {"ridge": {"ccc": 0.5, "val_ccc": 0.6}, "trees": {"ccc": 0.55, "val_ccc": 0.4}}
    per_trait = {t: {"ccc": 0.5, "ccc_ci": [0.4, 0.6]} for t in "OCEAN"}
    figures = {"ridge": {"ccc": 0.52, "ccc_ci": [0.45, 0.6], "level": 0.95, "n_folds": 3,
                         "n_videos": 30, "n_subjects": 15, "per_trait": per_trait},
               "trees": {"ccc": 0.47, "ccc_ci": [0.4, 0.55], "level": 0.95, "n_folds": 3,
                         "n_videos": 30, "n_subjects": 15, "per_trait": per_trait,
                         "vs_best": {"model": "ridge", "delta_ccc_point": -0.05,
                                     "delta_ccc": [-0.1, -0.01], "p_better": 0.01}}}
    asked = []

    pairs = {"ridge": {"trees": {"delta_ccc_point": 0.05, "delta_ccc": [0.01, 0.1],
                                 "p_better": 0.99, "n_videos": 30}}}

    def fake_pooled(fold_refs, ranked):
        asked.append((list(fold_refs), ranked))
        return figures, pairs

    monkeypatch.setattr(cv, "ROOT", tmp_path)
    monkeypatch.setattr(cv, "experiment_refs",
                        lambda baseline="HEAD", prefix_filter="cv-fold": dict(refs))
    monkeypatch.setattr(cv, "show_json", lambda ref, path: summary)
    monkeypatch.setattr(cv, "pooled", fake_pooled)
    assert cv.main(["--collect", "--baseline", "c0ffee"]) == 0
    # val 0.6 beats 0.4: ridge is the best, first in the ranking
    assert asked == [(["cv-fold0", "cv-fold1", "cv-fold2"], ["ridge", "trees"])]
    out = capsys.readouterr().out
    assert "| vs ridge (pooled) |" in out and "Δ -0.050 [-0.100, -0.010] |" in out
    assert "| model (pooled test CCC per trait) |" in out
    saved = json.loads((tmp_path / "bench" / "results" / "cv.json").read_text())
    assert {r["model"]: r["pooled"]["ccc"] for r in saved["rows"]} == {"ridge": 0.52,
                                                                       "trees": 0.47}
    assert (tmp_path / "bench" / "results" / "cv.png").stat().st_size > 0
    assert saved["pairwise"] == pairs and "1 of 1 pairs of models differ" in out
    assert (tmp_path / "bench" / "results" / "cv_pairs.png").stat().st_size > 0

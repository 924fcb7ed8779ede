"""Cross-validation's pooled figures (models/pooled_cv.py) and how scripts/cv.py reads a fold's
outputs from the DVC cache and prints them.

    .venv/bin/python -m pytest -q tests/test_pooled_cv.py
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.pooled_cv import pairwise, pool_folds, pooled_figures
from models.metrics import ccc
from personality.schemas import TRAITS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from cv import (_cache_file, fold_outputs, markdown, plot_pooled,  # noqa: E402
                retrain_markdown, trait_markdown)

T = list(TRAITS)
N_SUBJECTS, CLIPS, N_FOLDS = 15, 3, 3


def folds_of(rng: np.random.Generator, noise: dict[str, float]) -> list:
    """N_FOLDS folds over N_SUBJECTS subjects (subject s is test in fold s % N_FOLDS), each with
    a manifest and one predictions file per model: the labels plus noise of that sd."""
    subjects = np.repeat(np.arange(N_SUBJECTS), CLIPS)
    vids = [f"v{i:03d}" for i in range(len(subjects))]
    labels = rng.uniform(0.3, 0.7, (len(vids), 5))
    folds = []
    for k in range(N_FOLDS):
        split = np.where(subjects % N_FOLDS == k, "test",
                         np.where(subjects % N_FOLDS == (k + 1) % N_FOLDS, "val", "train"))
        manifest = pd.DataFrame({"video_id": vids, "subject_id": [f"s{s}" for s in subjects],
                                 "split": split, **dict(zip(T, labels.T))})
        preds = {m: pd.DataFrame({"video_id": vids, "split": split,
                                  **dict(zip(T, (labels + rng.normal(0, sd, labels.shape)).T))})
                 for m, sd in noise.items()}
        folds.append((manifest, preds))
    return folds


def test_every_clip_is_scored_once_by_the_fold_that_held_it_out(rng):
    folds = folds_of(rng, {"good": 0.05})
    pooled = pool_folds(folds)
    assert pooled["labels"].shape == (N_SUBJECTS * CLIPS, 5)
    assert len(set(pooled["video_ids"])) == N_SUBJECTS * CLIPS
    for vid, fold, pred in zip(pooled["video_ids"], pooled["folds"], pooled["predictions"]["good"]):
        frame = folds[fold][1]["good"]
        assert (folds[fold][0].set_index("video_id").at[vid, "split"]) == "test"
        assert pred == pytest.approx(frame.set_index("video_id").loc[vid, T].to_numpy(float))
    assert pooled["stale"] == [] and pooled["missing_subjects"] == []
    # a fold without a model's predictions leaves its clips unscored by it
    del folds[1][1]["good"]
    partial = pool_folds(folds)["predictions"]["good"]
    assert np.isnan(partial[pooled["folds"] == 1]).all()
    assert np.isfinite(partial[pooled["folds"] != 1]).all()
    # predictions made on another split (an older run's file, fold 0's in fold 2) are left out
    folds[2][1]["good"] = folds[0][1]["good"]
    stale = pool_folds(folds)
    assert [(k, m) for k, m, _ in stale["stale"]] == [(2, "good")]
    assert "made on another split" in stale["stale"][0][2]
    assert np.isnan(stale["predictions"]["good"][pooled["folds"] == 2]).all()
    # so is one with a clip the fold does not have, named
    extra = folds[0][1]["good"].iloc[:1].assign(video_id="v999")
    folds[0][1]["good"] = pd.concat([folds[0][1]["good"], extra])
    assert pool_folds(folds)["stale"][0] == (0, "good", "clip v999 is not in the fold's manifest")
    # a fold not run: its subjects are named as missing
    assert len(pool_folds(folds[:2])["missing_subjects"]) == N_SUBJECTS // N_FOLDS


def test_several_rows_of_one_clip_are_averaged_as_evaluate_averages_them(rng):
    folds = folds_of(rng, {"good": 0.05})
    manifest, preds = folds[0]
    first = preds["good"][preds["good"]["split"] == "test"].iloc[:1]
    preds["good"] = pd.concat([preds["good"], first.assign(**{t: first[t] + 0.2 for t in T})])
    pooled = pool_folds(folds)
    row = list(pooled["video_ids"]).index(first["video_id"].iloc[0])
    want = first[T].to_numpy(float)[0] + 0.1
    assert pooled["predictions"]["good"][row] == pytest.approx(want)


def test_a_clip_held_out_by_two_folds_is_refused(rng):
    folds = folds_of(rng, {"good": 0.05})
    folds[0][0].loc[0, "split"] = "train"
    folds[1][0].loc[0, "split"] = "test"
    folds[2][0].loc[0, "split"] = "test"
    with pytest.raises(ValueError, match="v000 is in the test split of two folds"):
        pool_folds(folds)


def test_pooled_figures_are_the_pooled_clips_ccc_with_subject_intervals(rng):
    pooled = pool_folds(folds_of(rng, {"good": 0.05, "noisy": 0.2}))
    figures = pooled_figures(pooled, n_boot=400, level=0.95, seed=3, best="good")
    y = pooled["labels"]
    for model in ("good", "noisy"):
        pred = pooled["predictions"][model]
        want = np.mean([ccc(y[:, j], pred[:, j]) for j in range(5)])
        got = figures[model]
        assert got["ccc"] == pytest.approx(want)
        assert got["ccc_ci"][0] < got["ccc"] < got["ccc_ci"][1]
        for j, t in enumerate(T):
            trait = got["per_trait"][t]
            assert trait["ccc"] == pytest.approx(ccc(y[:, j], pred[:, j]))
            assert trait["ccc_ci"][0] < trait["ccc"] < trait["ccc_ci"][1]
        assert (got["n_videos"], got["n_subjects"], got["n_folds"]) == (45, 15, 3)
    assert "vs_best" not in figures["good"]
    versus = figures["noisy"]["vs_best"]
    assert versus["model"] == "good"
    assert versus["delta_ccc_point"] == pytest.approx(figures["noisy"]["ccc"]
                                                       - figures["good"]["ccc"])
    assert versus["delta_ccc"][1] < 0 and versus["p_better"] < 0.05


def _cached(cache: Path, data: bytes) -> str:
    md5 = hashlib.md5(data).hexdigest()
    path = cache / "files" / "md5" / md5[:2] / md5[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return md5


def _parquet(frame: pd.DataFrame, tmp: Path) -> bytes:
    frame.to_parquet(tmp)
    return tmp.read_bytes()


def test_a_folds_outputs_come_from_the_cache_through_its_lock(tmp_path, rng):
    """The manifest, train's predictions files and those inside a folder output (retrain's)
    are read by their md5; the synthetic set's latent cues give the ceiling's scores."""
    from personality.law import CUES, law_scores

    manifest, preds = folds_of(rng, {"m": 0.05, "m+retrained": 0.1})[0]
    cache, scratch = tmp_path / "cache", tmp_path / "x.parquet"
    cues = pd.DataFrame({"video_id": manifest["video_id"],
                         **{f"cue_{c}": rng.normal(size=len(manifest)) for c in CUES}})
    retrained = _cached(cache, _parquet(preds["m+retrained"], scratch))
    folder = json.dumps([{"md5": retrained, "relpath": "predictions/m+retrained.parquet"},
                         {"md5": retrained, "relpath": "models/m+retrained/best.pt"}]).encode()
    folder_md5 = _cached(cache, folder)
    (cache / "files" / "md5" / folder_md5[:2] / folder_md5[2:]).rename(
        cache / "files" / "md5" / folder_md5[:2] / (folder_md5[2:] + ".dir"))
    lock = {"stages": {
        "ingest": {"outs": [{"path": "data/manifest.parquet",
                             "md5": _cached(cache, _parquet(manifest, scratch))},
                            {"path": "data/synthetic_cues.parquet",
                             "md5": _cached(cache, _parquet(cues, scratch))}]},
        "train@m": {"outs": [{"path": "data/predictions/m.parquet",
                              "md5": _cached(cache, _parquet(preds["m"], scratch))}]},
        "retrain": {"outs": [{"path": "data/retrained", "md5": folder_md5 + ".dir"}]},
        # a folder DVC does not cache (persist, cache: false): in the lock, not in the cache
        "train@n": {"outs": [{"path": "data/models/n", "md5": "0" * 32 + ".dir"}]}}}
    got_manifest, got = fold_outputs(lock, cache)
    pd.testing.assert_frame_equal(got_manifest, manifest)
    assert sorted(got) == ["ceiling", "m", "m+retrained"]
    pd.testing.assert_frame_equal(got["m+retrained"], preds["m+retrained"])
    ceiling = got["ceiling"].set_index("video_id")
    scratch.unlink()
    cues.to_parquet(scratch)
    assert ceiling[T].to_numpy() == pytest.approx(law_scores(scratch).loc[ceiling.index].to_numpy())
    assert (ceiling["split"] == manifest.set_index("video_id")["split"]).all()


def test_a_lock_naming_a_path_instead_of_an_md5_is_refused(tmp_path):
    with pytest.raises(ValueError, match="which is no md5"):
        _cache_file(tmp_path, "../../../etc/passwd")


def test_the_table_prints_the_pooled_ccc_and_its_difference_to_the_best():
    rows = [{"model": "ridge", "runs": {"cv-fold0": 0.5, "cv-fold1": 0.6}, "test_ccc_mean": 0.55,
             "test_ccc_sd": 0.07, "val_ccc_mean": 0.5, "n_runs": 2,
             "pooled": {"ccc": 0.53, "ccc_ci": [0.45, 0.61], "level": 0.95}},
            {"model": "trees", "runs": {"cv-fold0": 0.4, "cv-fold1": 0.5}, "test_ccc_mean": 0.45,
             "test_ccc_sd": 0.07, "val_ccc_mean": 0.4, "n_runs": 2,
             "pooled": {"ccc": 0.46, "ccc_ci": [0.38, 0.55], "level": 0.95,
                        "vs_best": {"model": "ridge", "delta_ccc_point": -0.07,
                                    "delta_ccc": [-0.15, 0.01], "p_better": 0.04}}},
            {"model": "baseline", "runs": {"cv-fold0": 0.0, "cv-fold1": 0.0},
             "test_ccc_mean": 0.0, "test_ccc_sd": 0.0, "val_ccc_mean": None, "n_runs": 2}]
    table = markdown(rows, ["cv-fold0", "cv-fold1"], best="ridge").splitlines()
    assert table[0].endswith("| pooled test CCC [95% CI] | vs ridge (pooled) |")
    assert table[2].endswith("| 0.530 [0.450, 0.610] | best on val |")
    assert table[3].endswith("| 0.460 [0.380, 0.550] | Δ -0.070 [-0.150, +0.010]; inside the "
                             "interval: no ranking |")
    assert table[4].endswith("| - | - |")
    # the model best on validation without pooled figures: nobody else is called best, and a
    # model pooled over fewer folds says so
    rows[0]["pooled"] = None
    rows[1]["pooled"] = {**rows[1]["pooled"], "vs_best": None, "n_folds": 1}
    lines = markdown(rows, ["cv-fold0", "cv-fold1"], best="ridge").splitlines()
    assert lines[2].endswith("| - | - |")
    assert lines[3].endswith("| 0.460 [0.380, 0.550] (1 of 2 folds) | - |")
    assert "pooled" not in markdown([{**r, "pooled": None} for r in rows],
                                    ["cv-fold0", "cv-fold1"])


def test_the_pooled_figures_are_drawn_as_bars_with_their_intervals(tmp_path):
    pooled = {"ccc": 0.53, "ccc_ci": [0.45, 0.61], "level": 0.95, "n_folds": 5, "n_videos": 150,
              "n_subjects": 50}
    rows = [{"model": "ridge", "pooled": pooled}, {"model": "baseline", "pooled": None}]
    path = plot_pooled(rows, tmp_path / "cv.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_pooled([{"model": "ridge", "pooled": None}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_the_per_trait_table_gives_each_traits_pooled_ccc_with_its_interval():
    per_trait = {t: {"ccc": 0.5 + 0.1 * j, "ccc_ci": [0.4 + 0.1 * j, 0.6 + 0.1 * j]}
                 for j, t in enumerate(T)}
    rows = [{"model": "ridge", "pooled": {"per_trait": per_trait}}, {"model": "x", "pooled": None}]
    table = trait_markdown(rows).splitlines()
    assert table[0] == "| model (pooled test CCC per trait) | O | C | E | A | N |"
    assert table[2].startswith("| ridge | 0.500 [0.400, 0.600] | 0.600 [0.500, 0.700] |")
    assert len(table) == 3 and trait_markdown(rows[1:]) == ""


def test_a_retrained_model_is_compared_with_its_base_on_the_same_clips(rng):
    """m+retrained against m: the user-study retraining's effect, paired, printed as a table."""
    pooled = pool_folds(folds_of(rng, {"m": 0.2, "m+retrained": 0.05, "other": 0.1}))
    figures = pooled_figures(pooled, n_boot=300, level=0.95, seed=3, best="other")
    versus = figures["m+retrained"]["vs_base"]
    assert versus["model"] == "m"
    assert versus["delta_ccc_point"] == pytest.approx(figures["m+retrained"]["ccc"]
                                                       - figures["m"]["ccc"])
    assert versus["delta_ccc"][0] > 0
    assert "vs_base" not in figures["m"] and "vs_base" not in figures["other"]
    rows = [{"model": m, "pooled": f} for m, f in figures.items()]
    table = retrain_markdown(rows).splitlines()
    assert len(table) == 3 and table[2].startswith(
        f"| m+retrained | m | {versus['delta_ccc_point']:+.3f} [{versus['delta_ccc'][0]:+.3f}, ")
    assert retrain_markdown([{"model": "m", "pooled": figures["m"]}]) == ""


def test_every_pair_of_models_is_compared_on_the_same_resamples_as_the_best(rng):
    pooled = pool_folds(folds_of(rng, {"good": 0.05, "close": 0.06, "noisy": 0.3}))
    drawn = dict(n_boot=300, level=0.95, seed=3)
    pairs = pairwise(pooled, ["good", "close", "noisy", "absent"], **drawn)
    assert {a: sorted(v) for a, v in pairs.items()} == {"good": ["close", "noisy"],
                                                        "close": ["noisy"]}
    figures = pooled_figures(pooled, best="good", **drawn)
    for other in ("close", "noisy"):  # a - b here is -(b - a) there, interval mirrored
        assert pairs["good"][other]["delta_ccc_point"] == pytest.approx(
            -figures[other]["vs_best"]["delta_ccc_point"])
    assert pairs["close"]["noisy"]["delta_ccc"][0] > 0  # a large difference holds
    def width(a: str, b: str) -> float:
        lo, hi = pairs[a][b]["delta_ccc"]
        return hi - lo

    assert width("good", "close") < width("close", "noisy")  # two good models differ less

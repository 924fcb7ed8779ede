"""The evaluate stage: metrics/evaluate.json against models.metrics, the baseline, z-scale labels,
the dvc plots CSVs, and malformed predictions files reported while the others are evaluated.

Everything runs in a temporary root with a hand-made manifest and predictions; MLflow is off here
(tests/test_tracking.py covers it).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.metrics import (baseline_metrics, bin_metrics, json_safe, majority_class_accuracy,
                            regression_metrics)
from stages import evaluate as ev
from personality.common import ParamsError, SchemaError, StageInputError, load_params
from personality.schemas import TRAITS

REPO = Path(__file__).resolve().parents[1]
T = list(TRAITS)
NO_MLFLOW = ev.EvaluateParams(mlflow=False)


def make_manifest(rng: np.random.Generator, *, scale: str = "unit", n_per_split=(12, 6, 12)
                  ) -> pd.DataFrame:
    """Videos v000.. with train / val / test labels; in the test split one video is unlabelled and
    one lacks its E label."""
    splits = sum(([s] * n for s, n in zip(("train", "val", "test"), n_per_split)), [])
    n = len(splits)
    if scale == "unit":
        labels = rng.uniform(0.15, 0.85, size=(n, 5))
    else:
        labels = rng.normal(0.0, 1.0, size=(n, 5))
    m = pd.DataFrame(labels, columns=T)
    m.insert(0, "video_id", [f"v{i:03d}" for i in range(n)])
    m.insert(1, "path", [f"data/videos/v{i:03d}.mp4" for i in range(n)])
    m.insert(2, "split", splits)
    m.insert(3, "subject_id", [f"s{i // 2:02d}" for i in range(n)])
    m.insert(4, "dataset", "unit-test")
    m["duration_s"], m["fps"], m["has_audio"] = 3.0, 25.0, True
    m["label_scale"] = scale
    test = m.index[m["split"] == "test"]
    m.loc[test[0], T] = np.nan  # unlabelled test video: ignored by every metric
    m.loc[test[1], "E"] = np.nan  # one missing trait label
    return m


def predictions(manifest: pd.DataFrame, values: np.ndarray, model: str) -> pd.DataFrame:
    df = manifest[["video_id", "split"]].copy()
    df[T] = values
    df["model"] = model
    return df


def softmax_proba(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 5, 5) per-bin probabilities peaked on each score's bin."""
    centres = np.array([0.125, 0.375, 0.625, 0.875, 1.0])
    logits = -((scores[..., None] - centres) ** 2) / 0.02 + rng.normal(0, 0.3, scores.shape + (5,))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def write_root(root: Path, manifest: pd.DataFrame, preds: dict[str, pd.DataFrame]) -> Path:
    (root / "data" / "predictions").mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(root / "data" / "manifest.parquet", index=False)
    for name, df in preds.items():
        df.to_parquet(root / "data" / "predictions" / f"{name}.parquet", index=False)
    return root


def truth(manifest: pd.DataFrame) -> np.ndarray:
    return np.nan_to_num(manifest[T].to_numpy(), nan=0.5)


def train_mean(manifest: pd.DataFrame) -> np.ndarray:
    return manifest.loc[manifest["split"] == "train", T].mean().to_numpy()


def scored_test(manifest: pd.DataFrame, values: np.ndarray):
    """What evaluate should score: labelled test videos sorted by id, (y_true, y_pred, mask)."""
    mask = (manifest["split"] == "test") & manifest[T].notna().any(axis=1)
    order = np.argsort(manifest.loc[mask, "video_id"].to_numpy(), kind="mergesort")
    return manifest.loc[mask, T].to_numpy()[order], values[mask.to_numpy()][order], mask


def load_json(path: Path) -> dict:
    def no_nan(token):
        raise AssertionError(f"non-strict JSON constant {token} in {path}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def assert_close_dict(got: dict, want: dict) -> None:
    want = json_safe(want)
    assert set(got) == set(want), (got, want)
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.fixture
def unit_root(tmp_path, rng):
    m = make_manifest(rng)
    y = truth(m)
    noisy = np.clip(y + rng.normal(0, 0.08, y.shape), 0, 1)
    noisy_df = predictions(m, noisy, "noisy")
    proba = softmax_proba(noisy, rng)
    for j, t in enumerate(T):
        for k in range(5):
            noisy_df[f"proba_{t}_{k}"] = proba[:, j, k]
    preds = {
        "perfect": predictions(m, y, "perfect"),
        "trainmean": predictions(m, np.tile(train_mean(m), (len(m), 1)), "trainmean"),
        "noisy+retrained": noisy_df,
    }
    write_root(tmp_path, m, preds)
    return tmp_path, m, {"perfect": y, "noisy+retrained": noisy, "proba": proba}


# --------------------------------------------------------------------------------------------------


def test_metrics_match_models_metrics(unit_root):
    root, m, values = unit_root
    report = ev.run(NO_MLFLOW, root=root)
    on_disk = load_json(root / "metrics" / "evaluate.json")
    assert on_disk == report
    assert set(on_disk) == {"perfect", "trainmean", "noisy+retrained", "baseline", "selection"}

    perfect = on_disk["perfect"]
    assert perfect["mean"]["ccc"] == pytest.approx(1.0)
    assert perfect["mean"]["acc"] == pytest.approx(1.0)
    assert perfect["mean"]["mae"] == pytest.approx(0.0)
    assert perfect["n_videos"] == 11 and perfect["n_missing"] == 0  # 12 test videos, 1 unlabelled

    mean_model = on_disk["trainmean"]
    assert mean_model["mean"]["ccc"] == pytest.approx(0.0, abs=1e-12)
    # a constant prediction has no Pearson r (null, never NaN, in the JSON); the mean of equal
    # floats can differ from them in the last bit, leaving an r of ~1e-16 instead
    pcc = mean_model["mean"]["pcc"]
    assert pcc is None or abs(pcc) < 1e-9
    for key in ("O", "C", "E", "A", "N", "mean"):  # the train-mean model *is* the baseline
        for metric in ("acc", "mae", "mse", "ccc", "r2"):
            assert mean_model[key][metric] == pytest.approx(on_disk["baseline"][key][metric],
                                                            abs=1e-12)

    y_true, y_pred, mask = scored_test(m, values["noisy+retrained"])
    want = regression_metrics(y_true, y_pred)
    for key in ("O", "C", "E", "A", "N", "mean"):
        assert_close_dict(on_disk["noisy+retrained"][key], want[key])
    assert 0.5 < on_disk["noisy+retrained"]["mean"]["ccc"] < 1.0


def test_bins_from_proba_and_from_scores(unit_root):
    root, m, values = unit_root
    out = ev.run(NO_MLFLOW, root=root)
    y_true, y_pred, mask = scored_test(m, values["noisy+retrained"])
    order = np.argsort(m.loc[mask, "video_id"].to_numpy(), kind="mergesort")
    proba = values["proba"][mask.to_numpy()][order]
    bins = out["noisy+retrained"]["bins"]
    assert bins["source"] == "proba"
    want = bin_metrics(y_true, y_pred, proba=proba)
    for key in ("O", "C", "E", "A", "N", "mean"):
        assert_close_dict(bins[key], want[key])
    assert out["perfect"]["bins"]["source"] == "scores"
    assert out["perfect"]["bins"]["mean"]["accuracy"] == 1.0
    assert out["perfect"]["bins"]["mean"]["auc"] is None  # no per-bin probabilities

    only_proba = ev.run(ev.EvaluateParams(mlflow=False, bins="proba"), root=root)
    assert "bins" in only_proba["noisy+retrained"] and "bins" not in only_proba["perfect"]
    none = ev.run(ev.EvaluateParams(mlflow=False, bins="none"), root=root)
    assert not any("bins" in entry for entry in none.values())


def test_baseline_entry(unit_root):
    root, m, _ = unit_root
    base = ev.run(NO_MLFLOW, root=root)["baseline"]
    train = m.loc[m["split"] == "train", T].to_numpy()
    test = m.loc[m["split"] == "test", T].to_numpy()
    test = test[~np.isnan(test).all(axis=1)]
    want = baseline_metrics(train, test)
    for key in ("O", "C", "E", "A", "N", "mean"):
        assert_close_dict(base[key], want[key])
    assert base["mean"]["ccc"] == pytest.approx(0.0, abs=1e-12)
    assert base["train_mean"] == pytest.approx(dict(zip(T, train_mean(m))))
    assert base["n_videos"] == 11
    majority = majority_class_accuracy(train, test)
    assert base["bins"]["mean"]["accuracy"] == pytest.approx(majority["mean"]["accuracy"])
    assert base["bins"]["O"]["majority_bin"] == majority["O"]["majority_bin"]


def test_z_scale_has_no_acc_and_no_bins(tmp_path, rng):
    m = make_manifest(rng, scale="z")
    y = truth(m)
    noisy = y + rng.normal(0, 0.3, y.shape)
    write_root(tmp_path, m, {"zmodel": predictions(m, noisy, "zmodel")})
    out = ev.run(NO_MLFLOW, root=tmp_path)
    entry = out["zmodel"]
    assert entry["label_scale"] == "z" and "bins" not in entry and entry["notes"]
    for key in ("O", "C", "E", "A", "N", "mean"):
        assert entry[key]["acc"] is None
        assert out["baseline"][key]["acc"] is None
    y_true, y_pred, _ = scored_test(m, noisy)
    want = regression_metrics(y_true, y_pred)
    for metric in ("ccc", "pcc", "mse", "mae", "r2"):
        assert entry["mean"][metric] == pytest.approx(want["mean"][metric])
    assert "bins" not in out["baseline"]
    assert "acc" in json.dumps(entry["notes"]) or "ACC" in entry["notes"][0]


def test_mixed_label_scales_in_the_scored_split_are_refused(tmp_path, rng):
    m = make_manifest(rng)
    m.loc[m.index[m["split"] == "test"][:3], "label_scale"] = "z"
    write_root(tmp_path, m, {})
    with pytest.raises(SchemaError, match="label_scale"):
        ev.run(NO_MLFLOW, root=tmp_path)


def test_scatter_csvs_for_dvc_plots(unit_root):
    root, m, values = unit_root
    plots = root / "metrics" / "plots"
    plots.mkdir(parents=True)
    (plots / "scatter_gone.csv").write_text("video_id,trait,true,pred\n")  # a removed model
    ev.run(NO_MLFLOW, root=root)
    assert sorted(p.name for p in plots.iterdir()) == [
        "scatter_noisy+retrained.csv", "scatter_perfect.csv", "scatter_trainmean.csv"]
    table = pd.read_csv(plots / "scatter_noisy+retrained.csv")
    assert list(table.columns) == ["video_id", "trait", "true", "pred"]
    test = m[m["split"] == "test"].set_index("video_id")
    assert len(table) == int(test[T].notna().sum().sum())  # labelled (video, trait) pairs: 54
    pred = pd.Series(values["noisy+retrained"][:, 0], index=m["video_id"])
    o = table[table["trait"] == "O"]
    assert np.allclose(o["true"], test.loc[o["video_id"], "O"], atol=1e-5)
    assert np.allclose(o["pred"], pred.loc[o["video_id"]], atol=1e-5)
    assert set(table["video_id"]) <= set(test.index)


def test_malformed_files_are_reported_and_the_others_evaluated(tmp_path, rng):
    m = make_manifest(rng)
    y = truth(m)
    good = predictions(m, y, "good")
    unknown = good.copy()
    unknown.loc[0, "video_id"] = "not_a_video"
    nan_pred = good.copy()
    nan_pred.loc[nan_pred.index[nan_pred["split"] == "test"][2], "C"] = np.nan
    wrong_split = good.copy()
    wrong_split.loc[0, "split"] = "test"  # v000 is a train video in the manifest
    partial_proba = good.copy()
    partial_proba["proba_O_0"] = 1.0
    write_root(tmp_path, m, {"good": good, "no_e": good.drop(columns=["E"]),
                             "unknown": unknown, "nan_pred": nan_pred,
                             "wrong_split": wrong_split, "partial_proba": partial_proba})
    (tmp_path / "data" / "predictions" / "garbage.parquet").write_bytes(b"not parquet")
    out = ev.run(NO_MLFLOW, root=tmp_path)
    assert out["good"]["mean"]["ccc"] == pytest.approx(1.0)
    errors = out["errors"]
    assert set(errors) == {"no_e", "unknown", "nan_pred", "wrong_split", "partial_proba",
                           "garbage"}
    assert set(out) == {"good", "baseline", "errors", "selection"}
    assert "data/predictions/no_e.parquet" in errors["no_e"] and "'E'" in errors["no_e"]
    assert "'video_id'" in errors["unknown"] and "not_a_video" in errors["unknown"]
    assert "'C'" in errors["nan_pred"] and "NaN" in errors["nan_pred"]
    assert "'split'" in errors["wrong_split"] and "v000" in errors["wrong_split"]
    assert "'proba_O_1'" in errors["partial_proba"]
    assert "garbage.parquet" in errors["garbage"] and "Parquet" in errors["garbage"]
    assert [p.name for p in (tmp_path / "metrics" / "plots").iterdir()] == ["scatter_good.csv"]

    with pytest.raises(StageInputError, match="strict"):
        ev.run(ev.EvaluateParams(mlflow=False, strict=True), root=tmp_path)


def test_no_usable_file_fails_the_stage(tmp_path, rng):
    m = make_manifest(rng)
    write_root(tmp_path, m, {"no_e": predictions(m, truth(m), "x").drop(columns=["E"]),
                             "baseline": predictions(m, truth(m), "x")})  # a reserved name
    with pytest.raises(StageInputError, match="no usable predictions") as info:
        ev.run(NO_MLFLOW, root=tmp_path)
    assert "reserved" in str(info.value) and "'E'" in str(info.value)
    assert not (tmp_path / "metrics" / "evaluate.json").exists()


def test_no_predictions_yet_reports_the_baseline_only(tmp_path, rng):
    write_root(tmp_path, make_manifest(rng), {})
    out = ev.run(NO_MLFLOW, root=tmp_path)
    assert set(out) == {"baseline", "selection"}
    assert out["baseline"]["mean"]["ccc"] == pytest.approx(0.0, abs=1e-12)


def test_rows_of_one_video_are_averaged_and_missing_videos_counted(tmp_path, rng):
    m = make_manifest(rng)
    y = truth(m)
    df = predictions(m, y, "clips")
    test_ids = m.loc[m["split"] == "test", "video_id"].tolist()
    lo, hi = df.copy(), df.copy()
    lo[T] = lo[T] - 0.1
    hi[T] = hi[T] + 0.1
    clips = pd.concat([lo, hi], ignore_index=True)  # two clips per video, mean = the truth
    clips = clips[clips["video_id"] != test_ids[5]]  # one labelled test video never predicted
    write_root(tmp_path, m, {"clips": clips})
    entry = ev.run(NO_MLFLOW, root=tmp_path)["clips"]
    assert entry["mean"]["ccc"] == pytest.approx(1.0)
    assert entry["n_videos"] == 10 and entry["n_missing"] == 1


def test_a_nan_clip_of_a_video_is_refused_not_averaged_away(tmp_path, rng):
    """A model that failed on one of a video's clips (NaN there) is a faulty file, as a NaN on a
    video of one clip is: the other clip's score must not stand in for the video unseen."""
    m = make_manifest(rng)
    y = truth(m)
    df = predictions(m, y, "clips")
    failed = df.copy()
    video = m.loc[(m["split"] == "test") & m[T].notna().all(axis=1), "video_id"].iloc[0]
    failed.loc[failed["video_id"] == video, "O"] = np.nan
    write_root(tmp_path, m, {"clips": pd.concat([df, failed], ignore_index=True),
                             "fine": df})
    report = ev.run(NO_MLFLOW, root=tmp_path)
    assert "clips" not in report and "fine" in report
    assert "column 'O'" in report["errors"]["clips"] and repr(video) in report["errors"]["clips"]


def test_flat_metrics_names_for_mlflow(unit_root):
    root, _, _ = unit_root
    out = ev.run(NO_MLFLOW, root=root)
    flat = ev.flat_metrics(out["noisy+retrained"], "test")
    assert flat["test_mean_ccc"] == out["noisy+retrained"]["mean"]["ccc"]
    assert flat["test_O_acc"] == out["noisy+retrained"]["O"]["acc"]
    assert flat["test_bins_mean_auc"] == out["noisy+retrained"]["bins"]["mean"]["auc"]
    assert flat["test_n_videos"] == 11
    base = ev.flat_metrics(out["baseline"], "baseline_test")
    assert "baseline_test_mean_pcc" not in base  # null (undefined) metrics are left out
    assert all(math.isfinite(v) for v in base.values())


def test_main_reads_params_yaml(tmp_path, rng, monkeypatch, caplog):
    m = make_manifest(rng)
    write_root(tmp_path, m, {"perfect": predictions(m, truth(m), "perfect")})
    (tmp_path / "params.yaml").write_text("evaluate:\n  split: val\n  mlflow: false\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    ev.main([])
    out = load_json(tmp_path / "metrics" / "evaluate.json")
    assert out["perfect"]["n_videos"] == 6  # the val split
    # only the experiment's models (train.models, + their +retrained) are scored: predictions that
    # another experiment left in data/predictions are ignored
    write_root(tmp_path, m, {"perfect": predictions(m, truth(m), "perfect"),
                             "stale": predictions(m, truth(m), "stale"),
                             "perfect+retrained": predictions(m, truth(m), "perfect+retrained")})
    (tmp_path / "params.yaml").write_text("evaluate:\n  mlflow: false\n"
                                          "train:\n  models: [perfect]\n")
    ev.main([])
    out = load_json(tmp_path / "metrics" / "evaluate.json")
    assert {"perfect", "perfect+retrained", "baseline", "selection"} == set(out)
    # a bad param ends the stage with exit code 2 and one line naming the key, like every stage
    for text, key in (("evaluate:\n  mlflow: false\ntrain:\n  models: x\n", "train.models"),
                      ("evaluate:\n  splt: val\n", "evaluate.splt")):
        (tmp_path / "params.yaml").write_text(text)
        with pytest.raises(SystemExit) as exc:
            ev.main([])
        assert exc.value.code == 2
        assert key in caplog.text


@pytest.mark.parametrize("section, value", [("evaluate", 0), ("evaluate", -80),
                                            ("explain", 0)])
def test_a_dpi_below_one_is_refused_when_the_params_are_read(tmp_path, section, value):
    """`dvc exp run -S evaluate.dpi=0` passed the params check, wrote the metrics and then died
    in matplotlib ("dpi must be positive", a traceback) at the first PNG; now it is one line
    naming the key before any work."""
    from stages.explain import ExplainParams

    cls = {"evaluate": ev.EvaluateParams, "explain": ExplainParams}[section]
    (tmp_path / "params.yaml").write_text(f"{section}:\n  dpi: {value}\n")
    with pytest.raises(ParamsError, match="dpi"):
        load_params(section, cls, path=tmp_path / "params.yaml")


def test_repo_params_and_dvc_stage():
    params = load_params("evaluate", ev.EvaluateParams, path=REPO / "params.yaml")
    assert params.split == "test"
    import yaml

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage = dvc["stages"]["evaluate"]
    assert stage["cmd"] == "python -m stages.evaluate"
    assert {"stages/evaluate.py", "personality/plots.py", "models/metrics.py",
            "data/manifest.parquet", "data/predictions"} <= set(stage["deps"])
    assert stage["params"] == ["base.seed", "evaluate", "train.models"]
    plots = {next(iter(p)): next(iter(p.values())) for p in dvc["plots"]}
    assert plots["metrics/plots/"]["x"] == "true" and plots["metrics/plots/"]["y"] == "pred"
    # DVC's own schema accepts the stage and the plot definitions (`x: true` unquoted would not)
    from dvc.schema import SINGLE_PIPELINE_STAGE_SCHEMA, SINGLE_PLOT_SCHEMA
    import voluptuous as vol

    vol.Schema(SINGLE_PIPELINE_STAGE_SCHEMA)({"evaluate": stage})
    for plot in dvc["plots"]:
        vol.Schema(SINGLE_PLOT_SCHEMA)(plot)


def test_pngs(tmp_path, rng):
    from personality import plots

    y = rng.uniform(size=(8, 5))
    a = plots.scatter_grid(y, y[::-1], path=tmp_path / "s.png", title="t", dpi=40,
                           ccc={"O": 0.5, "C": math.nan})
    b = plots.ccc_bars({"m1": 0.3, "m2": math.nan}, path=tmp_path / "b.png",
                       acc={"m1": 0.9, "m2": 0.88}, baseline_acc=0.885, dpi=40)
    for png in (a, b):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_holds_mean_ccc_acc_mae_per_model():
    report = {"m1": {"mean": {"ccc": 0.3, "acc": 0.9, "mae": 0.1, "r2": 0.0}, "O": {}},
              "baseline": {"mean": {"ccc": 0.0, "acc": 0.88, "mae": 0.12}},
              "errors": {"m2": "bad"}}
    assert ev.summary_of(report) == {"m1": {"ccc": 0.3, "acc": 0.9, "mae": 0.1},
                                     "baseline": {"ccc": 0.0, "acc": 0.88, "mae": 0.12}}


# --------------------------------------------------------------------------------------------------
# selection on validation, intervals over subjects


def test_best_model_is_chosen_on_validation_not_test(tmp_path, rng):
    """A model perfect on val but constant on test is the selection; the test figures do not
    change it."""
    m = make_manifest(rng)
    y = truth(m)
    val_only = np.where((m["split"] == "val").to_numpy()[:, None], y, train_mean(m))
    test_only = np.where((m["split"] == "test").to_numpy()[:, None], y, train_mean(m))
    write_root(tmp_path, m, {"valstar": predictions(m, val_only, "valstar"),
                             "teststar": predictions(m, test_only, "teststar")})
    report = ev.run(NO_MLFLOW, root=tmp_path)
    assert report["selection"]["best"] == "valstar"
    assert report["selection"]["val"]["valstar"]["ccc"] == pytest.approx(1.0)
    assert report["teststar"]["mean"]["ccc"] > report["valstar"]["mean"]["ccc"]
    assert report["teststar"]["vs_best"]["model"] == "valstar"
    assert report["teststar"]["vs_best"]["p_better"] > 0.95


def test_a_fault_on_test_does_not_change_the_choice(tmp_path, rng):
    """A model best on val keeps its place in the choice when one of its test predictions is
    NaN: the fault is reported (errors), but which model is chosen never depends on the test
    rows. Before, such a model dropped out of the choice and a weaker one was chosen."""
    m = make_manifest(rng)
    y = truth(m)
    good = predictions(m, y, "good")
    good.loc[good.index[good["split"] == "test"][2], "O"] = np.nan  # a labelled clip
    weak = predictions(m, 0.5 * y + 0.5 * train_mean(m), "weak")
    write_root(tmp_path, m, {"good": good, "weak": weak})
    report = ev.run(NO_MLFLOW, root=tmp_path)
    assert "good" in report["errors"] and "NaN" in report["errors"]["good"]
    assert report["selection"]["best"] == "good"
    assert report["selection"]["val"]["good"]["ccc"] == pytest.approx(1.0)
    assert "vs_best" not in report["weak"]  # nothing on test to pair it with


def test_intervals_cover_the_estimate_and_summary_carries_them(unit_root):
    root, m, values = unit_root
    report = ev.run(NO_MLFLOW, root=root)
    noisy = report["noisy+retrained"]
    lo, hi = noisy["ci"]["mean"]["ccc"]
    assert lo < noisy["mean"]["ccc"] < hi <= 1.0
    assert noisy["ci"]["resampled"] == "subjects" and noisy["ci"]["n_boot"] == 1000
    assert noisy["vs_baseline"]["p_better"] == pytest.approx(1.0)
    assert report["perfect"]["ci"]["mean"]["ccc"] == pytest.approx([1.0, 1.0])
    summary = load_json(root / "metrics" / "summary.json")
    assert summary["noisy+retrained"]["ccc_lo"] == pytest.approx(lo)
    assert summary["noisy+retrained"]["ccc_hi"] == pytest.approx(hi)
    table = (root / "metrics" / "results.md").read_text()
    assert f"[{lo:.3f}, {hi:.3f}]" in table and "train-mean baseline" in table
    # the val figures that choose the model carry their interval over the val subjects too
    val = report["selection"]["val"]["noisy+retrained"]
    vlo, vhi = val["ccc_ci"]
    assert vlo <= val["ccc"] <= vhi and vlo < vhi and report["selection"]["val"]["perfect"]["ccc_ci"] == [1, 1]
    assert f"{val['ccc']:.3f} [{vlo:.3f}, {vhi:.3f}]" in table


def test_beats_baseline_says_when_the_interval_reaches_zero():
    from models.report import results_table

    def entry(lo):
        return {"mean": {"ccc": 0.1, "acc": 0.9}, "ci": {"mean": {"ccc": [lo, 0.2]}},
                "vs_baseline": {"p_better": 0.95}}

    table = results_table({"sure": entry(0.05), "unsure": entry(-0.02),
                           "selection": {"best": "sure", "val": {}}}, "test")
    lines = {line.split("|")[1].strip(): line for line in table.split("\n\n")[0].splitlines()
             if "|" in line}  # the first table (the per-trait one follows)
    assert "reaches 0" in lines["unsure"] and "reaches 0" not in lines["sure"]


def test_results_table_sorts_a_zero_val_score_as_a_score():
    """Rows go by validation CCC; 0.0 is a score (above a negative one), a missing one goes last."""
    from models.report import results_table

    entry = {"mean": {"ccc": 0.1, "acc": 0.9}, "ci": {"mean": {"ccc": [0.0, 0.2]}}}
    report = {"zero": dict(entry), "neg": dict(entry), "none": dict(entry),
              "selection": {"best": "zero", "val": {"zero": {"ccc": 0.0}, "neg": {"ccc": -0.1}}}}
    rows = [line.split("|")[1].strip()
            for line in results_table(report, "test").split("\n\n")[0].splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in report]
    assert rows == ["zero", "neg", "none"]


def test_results_table_puts_the_chosen_model_first_on_a_tie():
    """Two models tied on val CCC (a one-clip val split scores every model 0): the selection
    takes the lower val MAE, and results.md's first row is that model, not the report's first."""
    from models.report import rank_models, results_table

    entry = {"mean": {"ccc": 0.1, "acc": 0.9}, "ci": {"mean": {"ccc": [0.0, 0.2]}}}
    val = {"worse": {"ccc": 0.0, "mae": 0.3}, "better": {"ccc": 0.0, "mae": 0.1}}
    report = {"worse": dict(entry), "better": dict(entry),
              "selection": {"best": rank_models(val)[0], "val": val}}
    rows = [line.split("|")[1].strip()
            for line in results_table(report, "test").split("\n\n")[0].splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in report]
    assert report["selection"]["best"] == "better" and rows == ["better", "worse"]


def test_the_labels_law_without_its_noise_is_reported_as_the_ceiling(tmp_path, rng):
    """On the synthetic set the best CCC any model can reach in expectation is that of the labels'
    law of the latent cues without its noise, stretched to the labels' spread. docs quoted a
    Monte-Carlo ceiling; evaluate now scores it on the test clips themselves, with its interval
    and its distance to the chosen model, and keeps it out of the models (not ranked, not chosen,
    not registered)."""
    from models.metrics import regression_metrics
    from models.report import RESERVED
    from personality.law import CCC_STRETCH, CUES, LABEL_NOISE, explainable
    from stages.serve import evaluated_models

    m = make_manifest(rng)
    cues = rng.standard_normal((len(m), len(CUES)))
    law = explainable(cues)  # (n, 5)
    labelled = m[T].notna().to_numpy()
    m[T] = np.where(labelled, np.clip(law + rng.normal(0, 1, law.shape) * LABEL_NOISE, 0, 1),
                    np.nan)
    y = truth(m)
    write_root(tmp_path, m, {"noisy": predictions(m, np.clip(y + rng.normal(0, .1, y.shape), 0, 1),
                                                  "noisy")})
    report = ev.run(NO_MLFLOW, root=tmp_path)
    assert "ceiling" not in report  # no synthetic_cues.parquet: a real dataset, no ceiling
    table = pd.DataFrame(cues, columns=[f"cue_{c}" for c in CUES]).assign(video_id=m["video_id"])
    table.to_parquet(tmp_path / "data" / "synthetic_cues.parquet", index=False)
    report = ev.run(NO_MLFLOW, root=tmp_path)
    test = m[(m["split"] == "test") & m[T].notna().any(axis=1)].index
    want = regression_metrics(m.loc[test, T].to_numpy(), 0.5 + (law[test] - 0.5) * CCC_STRETCH)
    assert report["ceiling"]["mean"]["ccc"] == pytest.approx(want["mean"]["ccc"])
    lo, hi = report["ceiling"]["ci"]["mean"]["ccc"]
    assert lo <= report["ceiling"]["mean"]["ccc"] <= hi
    assert report["ceiling"]["vs_best"]["model"] == "noisy"
    assert "ceiling" in RESERVED and evaluated_models(report) == ["noisy"]
    assert set(report["selection"]["val"]) == {"noisy"}
    md = (tmp_path / "metrics" / "results.md").read_text()
    first, per_trait = md.split("test CCC per trait")
    row = next(x for x in first.splitlines() if x.startswith("| ceiling"))
    assert f"{report['ceiling']['mean']['ccc']:.3f} [{lo:.3f}, {hi:.3f}]" in row
    assert "| ceiling" in per_trait
    assert load_json(tmp_path / "metrics" / "summary.json")["ceiling"]["ccc_lo"] == pytest.approx(lo)

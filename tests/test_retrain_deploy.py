"""retrain (user-study fine-tuning, ICC) and deploy (labelling an AU corpus) on a small AU-only
dataset whose labels and ratings follow known AU signals."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from models.checkpoints import mark_finished, shown_name
from stages import deploy, retrain
from personality.common import BaseParams, ParamsError, StageInputError, write_artifact
from personality.schemas import AU_INTENSITY, AU_PRESENCE, TRAITS
from tests.conftest import real_fixture


def test_icc_matches_shrout_fleiss():
    """Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges -> ICC(1,1) = .17, ICC(1,4) = .44."""
    table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    long = pd.DataFrame([{"video_id": f"t{i}", "rater_id": f"j{j}", "O": v}
                         for i, row in enumerate(table) for j, v in enumerate(row)])
    icc = retrain.icc_oneway(long, "O")
    assert icc["icc1"] == pytest.approx(0.1657, abs=5e-4)
    assert icc["icck"] == pytest.approx(0.4428, abs=5e-4)
    assert icc["k"] == pytest.approx(4.0)


def test_aggregate_ratings():
    long = pd.DataFrame({"video_id": ["a", "a", "b"], "rater_id": ["r1", "r2", "r1"],
                         **{t: [1.0, 3.0, 5.0] for t in TRAITS}})
    agg = retrain.aggregate_ratings(long)
    assert agg.loc["a", "O"] == pytest.approx(0.25) and agg.loc["b", "O"] == pytest.approx(1.0)
    assert agg.loc["a", "n_raters"] == 2
    with pytest.raises(ValueError, match="outside the Likert range"):
        retrain.aggregate_ratings(long.assign(O=[0.0, 3.0, 5.0]))


def au_dataset(root, *, n=48, frames=30, seed=0):
    """Manifest, data/aus and a user study. Labels follow AU12 (smile) and AU04 (frown);
    raters perceive mostly AU12, so fine-tuning on them moves predictions toward AU12."""
    rng = np.random.default_rng(seed)
    smile, frown = rng.uniform(0, 4, n), rng.uniform(0, 4, n)
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    ids = [f"v{i:03d}" for i in range(n)]
    truth = np.clip(0.5 + 0.08 * (frown - 2)[:, None] * np.array([1, -1, 1, -1, 1])
                    + 0.02 * rng.standard_normal((n, 5)), 0, 1)
    manifest = pd.DataFrame({"video_id": ids, "path": "", "split": split,
                             "subject_id": ids, "dataset": "test",
                             **{t: truth[:, k] for k, t in enumerate(TRAITS)},
                             "duration_s": frames / 5, "fps": 5.0, "has_audio": False})
    write_artifact("manifest", manifest, path=root / "data/manifest.parquet")
    rows = []
    for i, vid in enumerate(ids):
        au = rng.uniform(0, 0.3, (frames, len(AU_INTENSITY)))
        au[:, AU_INTENSITY.index("AU12_r")] += smile[i]
        au[:, AU_INTENSITY.index("AU04_r")] += frown[i]
        df = pd.DataFrame(au, columns=list(AU_INTENSITY))
        for r, c in zip(AU_INTENSITY, AU_PRESENCE):
            df[c] = (df[r] >= 1).astype(float)
        df.insert(0, "video_id", vid)
        df.insert(1, "frame_idx", np.arange(frames))
        df.insert(2, "t", np.arange(frames) / 5)
        df.insert(3, "success", True)
        df.insert(4, "confidence", 1.0)
        rows.append(df)
    write_artifact("aus", pd.concat(rows, ignore_index=True), path=root / "data/aus")
    perceived = np.clip(0.5 + 0.1 * (smile - 2), 0, 1)
    ratings = [{"video_id": vid, "rater_id": f"r{r}",
                **{t: float(np.clip(np.rint(1 + 4 * perceived[i] + rng.normal(0, 0.3)), 1, 5))
                   for t in TRAITS}}
               for i, vid in enumerate(ids) for r in range(4)]
    write_artifact("user_study", pd.DataFrame(ratings), path=root / "data/user_study.parquet")
    return manifest


def fit_perfex_cnn(root, manifest, *, epochs: int, seed: int, folder: str | None = None,
                   model: str = "perfex_cnn", **config):
    """A small AU model (perfex_cnn with a regression head unless `model` / `config` say
    otherwise) trained on the train split into data/models/<folder, default the model name>."""
    from models import engine
    from models.data import build_sources
    from models.registry import build_model

    name = model
    engine.seed_everything(seed)
    model = build_model(name, seq_len=32, **{"head": "regression", **config})
    config = {"aus": {"seq_len": 32}}
    sources = build_sources(["aus", "aus_mask"], root=root, video_ids=list(manifest["video_id"]),
                            config=config)
    train = manifest[manifest["split"] == "train"]
    engine.fit(model, sources, train_ids=list(train["video_id"]),
               train_targets=train[list(TRAITS)].to_numpy(),
               config=engine.TrainConfig(epochs=epochs, lr=3e-3, batch_size=8, seed=seed,
                                         patience=0),
               out_dir=root / "data/models" / (folder or name),
               meta={"model_name": name, "model_config": engine.model_config_of(model),
                     "inputs": ["aus", "aus_mask"], "source_config": config})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("au")
    fit_perfex_cnn(root, au_dataset(root), epochs=8, seed=3)
    # as the train stage marks it: the span of training clip durations predict warns by
    mark_finished(root / "data/models/perfex_cnn/best.pt", train_duration_s=[4.0, 9.0])
    return root


def test_retrain_moves_toward_raters(trained, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(trained, root)
    params = retrain.RetrainParams(models=["perfex_cnn"], epochs=20, lr=3e-3, batch_size=8,
                                   mix_share=0.25, mlflow=False)
    out = retrain.run(params, BaseParams(seed=3, workers=1), root=root)
    report = json.loads((root / "metrics/retrain.json").read_text())
    assert m_of(report["perfex_cnn"], "test")  # each held-out split reported apart
    m = m_of(report["perfex_cnn"], "val")
    assert set(m["before"]) == {"ccc", "pcc", "mae", "ccc_ci", "mae_ci"}
    for when in ("before", "after"):  # a non-empty interval over held-out subjects, not above it
        for metric in ("ccc", "mae"):
            lo, hi = m[when][f"{metric}_ci"]
            assert lo <= m[when][metric] + 1e-9 and lo < hi
    lo, hi = m["change"]["delta_ccc"]
    assert lo <= m["after"]["ccc"] - m["before"]["ccc"] <= hi and 0 <= m["change"]["p_better"] <= 1
    assert 0 <= m["change"]["p_lower_mae"] <= 1
    assert m["after"]["ccc"] > m["before"]["ccc"] + 0.1, m
    assert m["after"]["mae"] < m["before"]["mae"]
    assert report["perfex_cnn"]["n_finetune"] == 24 and report["perfex_cnn"]["n_mixed"] == 0
    icc = report["user_study"]["icc"]["O"]
    assert 0 < icc["icc1"] < icc["icck"] < 1
    preds = pd.read_parquet(root / "data/retrained/predictions/perfex_cnn+retrained.parquet")
    assert len(preds) == 48 and (preds["model"] == "perfex_cnn+retrained").all()
    from models import engine

    _, tuned = engine.load_checkpoint(root / "data/retrained/models/perfex_cnn+retrained/best.pt")
    assert tuned["train_duration_s"] == [4.0, 9.0]  # predict's short-clip warning still has it
    # predict and serve name it from the checkpoint, not its folder: MLflow serves it from
    # .../artifacts/best.pt, and a retrained checkpoint keeps its base model's model_name
    _, base = engine.load_checkpoint(root / "data/models/perfex_cnn/best.pt")
    assert (shown_name(tuned), shown_name(base)) == ("perfex_cnn+retrained", "perfex_cnn")
    assert out["perfex_cnn"]["val"]["after"] == m["after"]
    # the same seed gives the same numbers
    again = retrain.run(params, BaseParams(seed=3, workers=1), root=root)
    assert again["perfex_cnn"]["val"]["after"]["ccc"] == pytest.approx(m["after"]["ccc"],
                                                                        abs=1e-9)


def m_of(report: dict, split: str) -> dict:
    """One held-out split's block of a model's retrain.json entry: 12 clips of 12 subjects."""
    block = report[split]
    assert block["n_clips"] == 12 and block["n_subjects"] == 12, block
    return block


def test_models_fine_tuned_in_parallel_match_one_process(trained, tmp_path):
    """Two models fine-tuned in two worker processes give the numbers and predictions of one
    process, each under its own name (the second checkpoint: one epoch from another seed)."""
    root = tmp_path / "p"
    shutil.copytree(trained, root)
    # the name only places the folder: a second perfex_cnn stands in for perfex_hybrid
    fit_perfex_cnn(root, pd.read_parquet(root / "data/manifest.parquet"), epochs=1, seed=4,
                   folder="perfex_hybrid")
    params = retrain.RetrainParams(models=["perfex_cnn", "perfex_hybrid"], epochs=2,
                                   batch_size=8, mlflow=False)
    predictions = root / "data/retrained/predictions"
    serial = retrain.run(params, BaseParams(seed=3, workers=1), root=root)
    first = {p.name: pd.read_parquet(p) for p in sorted(predictions.glob("*.parquet"))}
    parallel = retrain.run(params, BaseParams(seed=3, workers=2), root=root)
    assert json.dumps(parallel, sort_keys=True) == json.dumps(serial, sort_keys=True)
    assert len(first) == 2
    for name, df in first.items():
        pd.testing.assert_frame_equal(pd.read_parquet(predictions / name), df)
    # each entry is its own model's: the numbers of that model fine-tuned alone
    alone = retrain.run(dataclasses.replace(params, models=["perfex_hybrid"]),
                        BaseParams(seed=3, workers=1), root=root)
    assert alone["perfex_hybrid"] == parallel["perfex_hybrid"] != parallel["perfex_cnn"]


def test_retrain_freeze_and_errors(trained, tmp_path):
    root = tmp_path / "f"
    shutil.copytree(trained, root)
    with pytest.raises(ParamsError, match="retrain.freeze"):
        retrain.run(retrain.RetrainParams(models=["perfex_cnn"], epochs=1, freeze=["nothing"],
                                          mlflow=False), BaseParams(seed=3), root=root)
    with pytest.raises(ValueError, match="no trained perfex_hybrid"):
        retrain.run(retrain.RetrainParams(models=["perfex_hybrid"], epochs=1, mlflow=False),
                    BaseParams(seed=3), root=root)


def test_deploy_labels_the_corpus(trained, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(trained, root)
    summary = deploy.run(deploy.DeployParams(model="perfex_cnn"), BaseParams(), root=root)
    assert summary["n_sequences"] == 48
    labels = pd.read_parquet(root / "data/deploy/labels.parquet")
    ckpt = root / "data/models/perfex_cnn/best.pt"
    assert (labels["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()).all()
    scores = labels[list(TRAITS)].to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))
    assert labels["O_bin"].between(0, 4).all()
    assert (labels["O_bin"] == np.clip(np.floor(4 * labels["O"]), 0, 4)).all()
    export = pd.read_csv(root / "data/deploy/perfex_export.csv")
    assert list(export.columns[:3]) == ["ID", "File", "frame"]
    assert {"AU12_r", "AU12_c", "extroversion", "openness"} <= set(export.columns)
    assert len(export) == 48 * 30
    first = export[export["ID"] == "v000"]
    assert first["openness"].nunique() == 1
    assert first["openness"].iloc[0] == pytest.approx(labels.set_index("video_id").loc["v000", "O"],
                                                      abs=1e-4)
    # only the test split
    deploy.run(deploy.DeployParams(model="perfex_cnn", splits=["test"], export_csv=False),
               BaseParams(), root=root)
    assert len(pd.read_parquet(root / "data/deploy/labels.parquet")) == 12
    assert not (root / "data/deploy/perfex_export.csv").exists()


def test_deploy_on_openface_csvs(trained, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(real_fixture("OpenFace_Test.csv"), corpus / "clip_a.csv")
    (corpus / "broken.csv").write_text("frame,success\n1,1\n")
    summary = deploy.run(deploy.DeployParams(model=str(trained / "data/models/perfex_cnn/best.pt"),
                                             corpus=str(corpus)), BaseParams(), root=tmp_path)
    assert summary["n_sequences"] == 1 and summary["n_frames"] == 100
    labels = pd.read_parquet(tmp_path / "data/deploy/labels.parquet")
    assert labels["video_id"].tolist() == ["clip_a"]


def test_deploy_refuses_a_checkpoint_from_another_au_frontend(trained, tmp_path):
    """A checkpoint path trained on AUs at 30 fps would read this pipeline's 8 fps data/aus as
    slowed-down faces and label them with numbers no pipeline gives: refused, naming the param.
    Audio params feed no AU model and a CSV corpus is the user's own: neither is held against it.
    Nor are keys that leave the intensities as they are (rows_per_shard, presence_threshold)."""
    root = tmp_path / "d"
    shutil.copytree(trained, root)
    ckpt = torch.load(root / "data/models/perfex_cnn/best.pt", weights_only=True)
    ckpt["frontend"] = {"frames": {"fps": 30, "rows_per_shard": 10}, "aus": {},
                        "audio": {"sample_rate": 8000}}
    other = root / "elsewhere.pt"
    torch.save(ckpt, other)
    (root / "params.yaml").write_text("frames: {fps: 8}\naudio: {sample_rate: 16000}\n")
    with pytest.raises(StageInputError, match=r"elsewhere.pt.*frames\.fps: 30 .*against 8"):
        deploy.run(deploy.DeployParams(model=str(other)), BaseParams(), root=root)
    assert not (root / "data/deploy").exists()  # nothing half-written
    (root / "params.yaml").write_text(  # sharding and the presence threshold: not AU inputs
        "frames: {fps: 30}\naudio: {sample_rate: 16000}\naus: {presence_threshold: 2.0}\n")
    assert deploy.run(deploy.DeployParams(model=str(other)), BaseParams(),
                      root=root)["n_sequences"] == 48
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(real_fixture("OpenFace_Test.csv"), corpus / "clip_a.csv")
    (root / "params.yaml").write_text("frames: {fps: 8}\n")
    assert deploy.run(deploy.DeployParams(model=str(other), corpus=str(corpus)), BaseParams(),
                      root=root)["n_sequences"] == 1


def test_deploy_refuses_non_au_model(tmp_path):
    from models.engine import save_checkpoint
    from models.registry import build_model

    ckpt = save_checkpoint(tmp_path / "m/best.pt", model=build_model("logmel_cnn"),
                           model_name="logmel_cnn", inputs=["logmel"])
    au_dataset(tmp_path, n=8)
    with pytest.raises(ParamsError, match="AU models only"):
        deploy.run(deploy.DeployParams(model=str(ckpt)), BaseParams(), root=tmp_path)


def test_no_user_study_skips_retrain_and_deploy_falls_back(trained, tmp_path):
    root = tmp_path / "n"
    shutil.copytree(trained, root)
    empty = pd.DataFrame({"video_id": pd.Series(dtype=str), "rater_id": pd.Series(dtype=str),
                          **{t: pd.Series(dtype=float) for t in TRAITS}})
    write_artifact("user_study", empty, path=root / "data/user_study.parquet")
    out = retrain.run(retrain.RetrainParams(models=["perfex_cnn"], mlflow=False),
                      BaseParams(seed=3), root=root)
    assert "skipped" in out and (root / "data/retrained/predictions").is_dir()
    summary = deploy.run(deploy.DeployParams(model="perfex_cnn+retrained"), BaseParams(),
                         root=root)
    assert summary["checkpoint"].endswith("data/models/perfex_cnn/best.pt")


def test_models_outside_the_experiment_are_skipped(trained, tmp_path):
    """A zoo experiment (train.models=[logmel_cnn]) trains no PerFeX model: retrain and deploy
    skip instead of using checkpoints an earlier experiment left behind."""
    root = tmp_path / "z"
    shutil.copytree(trained, root)
    out = retrain.run(retrain.RetrainParams(models=["perfex_cnn"], mlflow=False),
                      BaseParams(seed=3), root=root, trained=["logmel_cnn"])
    assert "train.models" in out["skipped"]
    assert json.loads((root / "metrics/retrain.json").read_text()) == out
    assert list((root / "data/retrained/models").iterdir()) == []
    summary = deploy.run(deploy.DeployParams(model="perfex_cnn+retrained"), BaseParams(),
                         root=root, trained=["logmel_cnn"])
    assert "skipped" in summary
    assert sorted(p.name for p in (root / "data/deploy").iterdir()) == ["skipped.json"]
    # a checkpoint path is always deployed, and a model of the experiment is
    path = str(trained / "data/models/perfex_cnn/best.pt")
    assert deploy.run(deploy.DeployParams(model=path), BaseParams(), root=root,
                      trained=["logmel_cnn"])["n_sequences"] == 48
    assert deploy.run(deploy.DeployParams(model="perfex_cnn"), BaseParams(), root=root,
                      trained=["perfex_cnn"])["n_sequences"] == 48
    # a retrain model that this experiment does not train, beside one it does: refused up front
    with pytest.raises(ParamsError, match="perfex_cnn.*not in train.models"):
        retrain.run(retrain.RetrainParams(models=["perfex_cnn", "perfex_hybrid"], epochs=1,
                                          mlflow=False), BaseParams(seed=3), root=root,
                    trained=["perfex_hybrid"])
    assert not (root / "data/retrained/models/perfex_cnn+retrained").exists()  # not in trained
    # a checkpoint file named without .pt or a folder is still a path, not a model name
    bare = root / "ckpt_copy"
    shutil.copyfile(trained / "data/models/perfex_cnn/best.pt", bare)
    assert deploy.run(deploy.DeployParams(model=str(bare)), BaseParams(), root=root,
                      trained=["logmel_cnn"])["n_sequences"] == 48
    assert not list(root.glob("data/.deploy*"))  # no temp folder left behind


def test_experiment_models_reads_train_models(tmp_path):
    from personality.common import experiment_models

    (tmp_path / "p.yaml").write_text("train:\n  models: [a, b]\n")
    assert experiment_models(tmp_path / "p.yaml") == ["a", "b"]
    (tmp_path / "p.yaml").write_text("evaluate: {}\n")
    assert experiment_models(tmp_path / "p.yaml") is None
    (tmp_path / "p.yaml").write_text("train:\n  models: []\n")
    with pytest.raises(ParamsError, match="train.models"):
        experiment_models(tmp_path / "p.yaml")


REPO = Path(__file__).resolve().parents[1]


def test_deploy_reads_only_what_dvc_tracks(trained, tmp_path, monkeypatch):
    """Everything deploy reads is a dep of its dvc.yaml entry: the trained checkpoint it falls
    back to (no retrained one) and the manifest deploy.splits selects from. Else a retrained
    base model or a changed split would leave data/deploy stale. Its params too."""
    root = tmp_path / "t"
    shutil.copytree(trained, root)
    (root / "data/retrained/models").mkdir(parents=True)  # retrain skipped: the fallback
    read = []
    real = deploy.read_artifact
    monkeypatch.setattr(deploy, "read_artifact", lambda name, path: (
        read.append(Path(path).relative_to(root).as_posix()), real(name, path=path))[1])
    summary = deploy.run(deploy.DeployParams(model="perfex_cnn+retrained", splits=["test"]),
                         BaseParams(), root=root)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["deploy"]
    used = [summary["checkpoint"], *read]
    assert summary["checkpoint"] == "data/models/perfex_cnn/best.pt" and len(read) == 2
    assert [u for u in used if not any(u == d or u.startswith(d.rstrip("/") + "/")
                                       for d in stage["deps"])] == []
    # aus (openface_face_id, presence_threshold for CSV corpora) with frames and faces whole:
    # the front-end a deploy.model checkpoint is checked against (check_au_frontend)
    assert {"deploy", "train.models", "frames", "faces", "aus"} <= set(stage["params"])


def _clips(root: Path, video_ids: list[str]) -> None:
    """data/clips.parquet under `root` listing `video_ids`: the videos the aus stage wants AUs
    for (their CSVs are `<video_id>.csv`)."""
    write_artifact("clips", pd.DataFrame({
        "video_id": video_ids, "path": [f"videos/{v}.mp4" for v in video_ids],
        "dataset": "folder", "duration_s": 4.0, "fps": 25.0, "has_audio": False,
        "source_stat": ""}), path=root / "data" / "clips.parquet")


def test_deploy_reads_openface_csvs_as_the_aus_stage(trained, tmp_path):
    """A two-face CSV without AUxx_c columns: deploy keeps the face aus.openface_face_id names
    and derives AUxx_c at aus.presence_threshold, as the aus stage does, so both score the same
    face (with read_openface_csv's defaults it took the other face: more successful frames)."""
    from stages import aus as aus_stage

    raw = pd.read_csv(real_fixture("OpenFace_Test.csv"), skipinitialspace=True)
    raw = raw.drop(columns=[c for c in raw.columns if c.endswith("_c")]).copy()
    face0, face1 = raw.assign(face_id=0), raw.assign(face_id=1)
    face0.loc[face0.index[:20], "success"] = 0  # fewer successful frames than face 1
    face1[list(AU_INTENSITY)] = np.clip(face1[list(AU_INTENSITY)] + 2.5, 0, 5)  # another person
    corpus = tmp_path / "csvs"
    corpus.mkdir()
    pd.concat([face0, face1]).to_csv(corpus / "clip_a.csv", index=False)
    _clips(tmp_path / "pipe", ["clip_a"])
    aus_stage.run(aus_stage.AusParams(backend="openface_csv", openface_dir=str(corpus),
                                      openface_face_id=0, presence_threshold=2.0),
                  BaseParams(), root=tmp_path / "pipe")
    pipeline = pd.read_parquet(tmp_path / "pipe/data/aus")
    reading = deploy.OpenFaceReading(openface_face_id=0, presence_threshold=2.0)
    table = deploy.load_corpus(deploy.DeployParams(corpus=str(corpus)), tmp_path, reading)
    au = [*AU_INTENSITY, *AU_PRESENCE]
    np.testing.assert_allclose(table[au].to_numpy(float), pipeline[au].to_numpy(float))
    ckpt = trained / "data/models/perfex_cnn/best.pt"
    deploy.run(deploy.DeployParams(model=str(ckpt), corpus=str(corpus), export_csv=False),
               BaseParams(), root=tmp_path, reading=reading)
    labels = pd.read_parquet(tmp_path / "data/deploy/labels.parquet")
    np.testing.assert_allclose(labels[list(TRAITS)].to_numpy(),
                               deploy.label_corpus(pipeline, ckpt)[list(TRAITS)].to_numpy(),
                               atol=1e-6)
    # the stage reads the two keys from params.yaml:aus
    (tmp_path / "p.yaml").write_text("aus:\n  backend: openface_csv\n  openface_face_id: 1\n")
    assert deploy.openface_reading(tmp_path / "p.yaml") == deploy.OpenFaceReading(1, 1.0)


def _corpus_with_bad_files(tmp_path: Path) -> Path:
    """A good CSV; a malformed, an empty and a cut-off one; a symlink to a readable OpenFace CSV
    outside the folder (a private file: it must not be read)."""
    corpus, outside = tmp_path / "corpus", tmp_path / "outside"
    corpus.mkdir()
    outside.mkdir()
    shutil.copy(real_fixture("OpenFace_Test.csv"), corpus / "good.csv")
    shutil.copy(real_fixture("OpenFace_Test.csv"), outside / "private.csv")
    (corpus / "bad.csv").write_text("frame,success\n1,1\n")
    (corpus / "empty.csv").write_text("")
    text = real_fixture("OpenFace_Test.csv").read_text()
    (corpus / "truncated.csv").write_text(text[: len(text) // 3])
    (corpus / "link_out.csv").symlink_to(outside / "private.csv")
    (corpus / "alias.csv").symlink_to("good.csv")  # inside the folder: read
    return corpus


def test_deploy_reports_every_csv_it_skips_and_refuses_links_out(trained, tmp_path):
    """Review finding: bad CSVs were only a log line, and a symlink out of the folder was read
    and labelled. Now each is in data/deploy/summary.json's `failed`, naming why."""
    import os

    corpus = _corpus_with_bad_files(tmp_path)
    shutil.copy(corpus / "good.csv", os.fsdecode(bytes(corpus) + b"/caf\xe9.csv"))  # Latin-1
    summary = deploy.run(deploy.DeployParams(model=str(trained / "data/models/perfex_cnn/best.pt"),
                                             corpus=str(corpus)), BaseParams(), root=tmp_path)
    labels = pd.read_parquet(tmp_path / "data/deploy/labels.parquet")
    assert labels["video_id"].tolist() == ["alias", "good"]
    written = json.loads((tmp_path / "data/deploy/summary.json").read_text())
    assert written == summary and summary["n_failed"] == 5
    failed = {row["video_id"]: row["error"] for row in summary["failed"]}
    assert list(failed) == ["bad.csv", "caf\\xe9.csv", "empty.csv", "link_out.csv",
                            "truncated.csv"]
    assert "not valid UTF-8" in failed["caf\\xe9.csv"]
    assert failed["link_out.csv"].startswith("link_out.csv: path escapes")
    assert "private" not in failed["link_out.csv"]  # says nothing of what it points at
    assert "missing column 'AU01_r'" in failed["bad.csv"] and "empty.csv" in failed["empty.csv"]
    assert "truncated.csv" in failed["truncated.csv"]


def test_aus_stage_refuses_a_csv_that_links_out_of_its_folder(tmp_path):
    from stages import aus as aus_stage

    corpus = _corpus_with_bad_files(tmp_path)
    _clips(tmp_path / "pipe", ["alias", "bad", "empty", "good", "link_out", "truncated"])
    summary = aus_stage.run(aus_stage.AusParams(backend="openface_csv", openface_dir=str(corpus)),
                            BaseParams(), root=tmp_path / "pipe")
    assert sorted(pd.read_parquet(tmp_path / "pipe/data/aus")["video_id"].unique()) == \
        ["alias", "good"]
    failed = {row["video_id"]: row["error"] for row in summary["failed"]}
    assert list(failed) == ["bad", "empty", "link_out", "truncated"]
    assert failed["link_out"].startswith("link_out.csv: path escapes")
    assert json.loads((tmp_path / "pipe/metrics/aus.json").read_text())["failed"] == \
        summary["failed"]

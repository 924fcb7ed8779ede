"""Train/serve parity: `predict` on a clip of the pipeline gives the pipeline's own prediction for
it, for every model of the default `train.models` and the retrained PerFeX models; a source that
loses its fitted state (standardisation statistics) fails loudly at training time.

The models train for one epoch on the tiny synthetic dataset: parity is about the inputs and the
checkpoint, not about how good the model is.
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from models.data import InputSource, SourceError
from stages import (audio, augment, aus, faces, frames, functionals, predict, retrain,
                    train)
from personality.common import BaseParams, load_params
from personality.schemas import TRAITS

TOLERANCE = 1e-6  # predict and the stage compute the same float64/float32 ops: parity is exact
SEPARATION = 10 * TOLERANCE  # every other clip's prediction is this far off (so a wrong clip fails)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quick_train_params(models: list[str] | None = None) -> train.TrainParams:
    """params.yaml's train section (the default models and their configs), one short epoch."""
    p = load_params("train", train.TrainParams)
    # trees that can split the tiny train split's few clips: with params.yaml's leaves of 5 rows
    # they predicted one constant for every clip, which any clip's prediction would match
    configs = {**p.model_config, "functionals_gbt": {**(p.model_config.get("functionals_gbt")
                                                        or {}), "min_samples_leaf": 1}}
    return dataclasses.replace(p, models=models or list(p.models), epochs=1, mlflow=False,
                               views_per_video=1, batch_size=8, threads=1, model_config=configs)


@pytest.fixture(scope="module")
def pipeline_root(tiny_dataset, tmp_path_factory):
    """The tiny dataset through every front-end stage, the default models trained, PerFeX
    retrained: a miniature `dvc repro` with the project's params."""
    root = tmp_path_factory.mktemp("parity")
    shutil.copytree(tiny_dataset / "data", root / "data")
    base = BaseParams(workers=1)
    frames.run(load_params("frames", frames.FramesParams), base, root=root)
    faces.run(load_params("faces", faces.FacesParams), base, root=root)
    aus.run(load_params("aus", aus.AusParams), base, root=root)
    audio.run(load_params("audio", audio.AudioParams), base, root=root)
    augment.run(load_params("augment", augment.AugmentParams), base, root=root)
    functionals.run(load_params("functionals", functionals.FunctionalsParams), base, root=root)
    train.run(quick_train_params(), base, root=root)
    rp = dataclasses.replace(load_params("retrain", retrain.RetrainParams), epochs=1,
                             mlflow=False)
    retrain.run(rp, base, root=root)
    return root


def pipeline_prediction(root, model: str, video_id: str) -> np.ndarray:
    folder = "retrained/predictions" if model.endswith("+retrained") else "predictions"
    df = pd.read_parquet(root / "data" / folder / f"{model}.parquet").set_index("video_id")
    return df.loc[video_id, list(TRAITS)].to_numpy(float)  # (5,)


def parity_models() -> list[str]:
    names = list(load_params("train", train.TrainParams).models)
    names += [f"{m}+retrained" for m in load_params("retrain", retrain.RetrainParams).models
              if m in names]
    return names


@pytest.mark.parametrize("model", parity_models())
def test_predict_gives_the_pipelines_prediction(pipeline_root, model, tmp_path):
    manifest = pd.read_parquet(pipeline_root / "data" / "manifest.parquet")
    clip = manifest[manifest["split"] == "test"].iloc[0]
    result = predict.predict_video(pipeline_root / clip["path"] if not str(clip["path"]).startswith("/")
                                   else clip["path"], model=model, root=pipeline_root,
                                   work=tmp_path)
    got = np.array([result[t] for t in TRAITS])
    want = pipeline_prediction(pipeline_root, model, clip["video_id"])
    assert np.abs(got - want).max() <= TOLERANCE, (model, got, want)
    others = [pipeline_prediction(pipeline_root, model, v) for v in manifest["video_id"]
              if v != clip["video_id"]]
    nearest = min(np.abs(o - want).max() for o in others)
    assert nearest > SEPARATION, f"{model}: another clip's prediction is {nearest:.1e} away"


@pytest.mark.parametrize("model", ["perfex_cnn", "logmel_cnn", "functionals_ridge"])
def test_predict_keeps_the_pipelines_prediction_after_params_yaml_changes(pipeline_root, model,
                                                                          tmp_path):
    """The checkpoint keeps the front-end params that made its training data: a params.yaml
    edited since (sampling rate, audio hop, feature sets) does not move predict's scores."""
    import yaml

    from personality.common import load_params_file

    edited = load_params_file()
    edited["frames"]["fps"] = 5.0
    edited["audio"].update(hop_s=0.02, feature_sets=["librosa"])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(edited))
    manifest = pd.read_parquet(pipeline_root / "data" / "manifest.parquet")
    clip = manifest[manifest["split"] == "test"].iloc[0]
    result = predict.predict_video(pipeline_root / clip["path"], model=model, root=pipeline_root,
                                   work=tmp_path, params_file=params_file, explain=False)
    got = np.array([result[t] for t in TRAITS])
    want = pipeline_prediction(pipeline_root, model, clip["video_id"])
    assert np.abs(got - want).max() <= TOLERANCE, (model, got, want)
    assert result["frontend_params"].startswith("the checkpoint's")


def cut_clip(src, dst, seconds: float):
    """The first `seconds` of `src` (video and audio), re-encoded with PyAV."""
    import fractions

    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vs, aus_ = inp.streams.video[0], inp.streams.audio[0]
        ov = out.add_stream("libx264", rate=25)
        ov.width, ov.height, ov.pix_fmt = vs.codec_context.width, vs.codec_context.height, \
            "yuv420p"
        oa = out.add_stream("aac", rate=aus_.rate, layout="mono")
        frames = [f.reformat(format="yuv420p") for f in inp.decode(vs) if f.time < seconds]
        for i, frame in enumerate(frames):
            frame.pts, frame.time_base = i, fractions.Fraction(1, 25)
            for packet in ov.encode(frame):
                out.mux(packet)
        for packet in ov.encode():
            out.mux(packet)
        inp.seek(0)
        mono, n = av.AudioResampler(format="fltp", layout="mono", rate=aus_.rate), 0
        for frame in (f for f in inp.decode(aus_) if f.time < seconds):
            for g in mono.resample(frame):
                g.pts, g.time_base, n = n, fractions.Fraction(1, aus_.rate), n + g.samples
                for packet in oa.encode(g):
                    out.mux(packet)
        for packet in oa.encode():
            out.mux(packet)
    return dst


def test_a_clip_far_shorter_than_the_training_clips_is_scored_with_a_warning(pipeline_root,
                                                                             tmp_path):
    """The first 0.3 s of a clip: scores, but prediction.json says they rest on little and that
    its features lie far outside the training clips' (the review's case: O/C/E/A clamped to 0)."""
    manifest = pd.read_parquet(pipeline_root / "data" / "manifest.parquet")
    clip = manifest[manifest["split"] == "test"].iloc[0]
    short = cut_clip(pipeline_root / clip["path"], tmp_path / "short.mp4", 0.3)
    result = predict.predict_video(short, model="functionals_ridge", root=pipeline_root,
                                   work=tmp_path, explain=False)
    said = " | ".join(result["warnings"])
    assert "s long; the model learnt from clips of" in said, said
    assert "functionals features lie over 10 sd from the training clips' mean" in said, said
    whole = predict.predict_video(pipeline_root / clip["path"], model="functionals_ridge",
                                  root=pipeline_root, work=tmp_path, explain=False)
    assert not [w for w in whole["warnings"] if "sd from" in w or "learnt from" in w]


def test_a_source_that_drops_its_fitted_state_fails_training(pipeline_root, monkeypatch):
    """The bug this guards: the audio sources' fitted_config was renamed away, checkpoints carried
    no statistics and predict standardised each clip against itself."""
    from models import data_audio

    monkeypatch.setattr(data_audio._AudioBase, "fitted_config", lambda self: {})
    with pytest.raises(SourceError, match="fitted_config"):
        train.train_model("audio_fn_linear", quick_train_params(["audio_fn_linear"]),
                          BaseParams(workers=1), pipeline_root)


def test_a_source_without_fitted_config_cannot_be_built():
    class Forgetful(InputSource):
        keys = ("x",)

        def train_item(self, video_id, rng):
            return {"x": torch.zeros(1)}

        def eval_items(self, video_id):
            return {"x": torch.zeros(1, 1)}

    with pytest.raises(TypeError, match="fitted_config"):
        Forgetful()


@pytest.mark.parametrize("name", ["audio_fn_linear", "functionals_ridge"])
def test_test_only_scores_a_checkpoint_where_no_train_split_exists(pipeline_root, name, tmp_path):
    """A standardised model's checkpoint scored on a corpus that is all test: the inputs come
    from the statistics it carries (no train clip to refit them on), and each clip's score is
    the one the pipeline gave it."""
    root = tmp_path / "corpus"
    shutil.copytree(pipeline_root, root, ignore=shutil.ignore_patterns("mlruns", "*.db"))
    manifest = pd.read_parquet(root / "data" / "manifest.parquet")
    manifest.assign(split="test").to_parquet(root / "data" / "manifest.parquet", index=False)
    before = pd.read_parquet(pipeline_root / "data" / "predictions" / f"{name}.parquet")
    saved = tmp_path / "best.pt"
    shutil.copyfile(pipeline_root / "data" / "models" / name / "best.pt", saved)
    params = dataclasses.replace(quick_train_params([name]), test_only=True, resume=str(saved))
    train.run(params, BaseParams(workers=1), root=root, models=[name])
    after = pd.read_parquet(root / "data" / "predictions" / f"{name}.parquet")
    merged = before.merge(after, on="video_id", suffixes=("", "_new"))
    assert len(merged) == len(before)
    for trait in ("O", "C", "E", "A", "N"):
        np.testing.assert_allclose(merged[trait], merged[f"{trait}_new"], atol=1e-6)

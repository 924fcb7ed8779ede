"""The face / face_seq / frame sources (models/data_image.py) and logmel / wave / audio_fn sources
(models/data_audio.py) on the tiny dataset after the real frames, faces and audio stages: shapes,
train / eval views, determinism, videos without inputs.

    pytest tests/test_data_sources.py
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from models import data_audio, data_image
from models.batching import normalise_images
from models.data import SourceError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def av_root(tiny_dataset, tmp_path_factory):
    """The tiny dataset's manifest and videos plus data/frames, data/faces, data/audio from the
    real stages (default params, one worker), and data/faces_noface: the same faces with the
    first video's faces removed."""
    from stages import audio, faces, frames
    from personality.common import BaseParams
    from personality.video_shards import VideoShardWriter

    root = tmp_path_factory.mktemp("av")
    (root / "data").mkdir()
    for name in ("manifest.parquet", "clips.parquet"):
        shutil.copy(tiny_dataset / "data" / name, root / "data" / name)
    (root / "data" / "videos").symlink_to(tiny_dataset / "data" / "videos")
    base = BaseParams(workers=1)
    frames.run(frames.FramesParams(), base, root=root)
    faces.run(faces.FacesParams(), base, root=root)
    audio.run(audio.AudioParams(), base, root=root)
    df = pd.read_parquet(root / "data" / "faces")
    gone = sorted(df["video_id"].unique())[0]
    sel = df["video_id"] == gone
    df.loc[sel, "face_found"] = False
    df.loc[sel, "crop"] = None
    with VideoShardWriter("faces", path=root / "data" / "faces_noface") as out:
        for _, g in df.groupby("video_id", sort=True):
            out.write(g.reset_index(drop=True))
    return root


def _ids(root):
    return sorted(pd.read_parquet(root / "data" / "manifest.parquet")["video_id"])


def _face_counts(root):
    df = pd.read_parquet(root / "data" / "faces", columns=["video_id", "face_found"])
    return df.groupby("video_id")["face_found"].sum().to_dict()


def test_face_source_views_and_determinism(av_root):
    ids = _ids(av_root)
    counts = _face_counts(av_root)
    src = data_image.face_source(root=av_root, video_ids=ids, config={"augment": "strong"})
    vid = max(counts, key=counts.get)
    a = src.train_item(vid, np.random.default_rng(3))["face"]
    b = src.train_item(vid, np.random.default_rng(3))["face"]
    c = src.train_item(vid, np.random.default_rng(4))["face"]
    assert a.shape == (3, 112, 112) and a.dtype == torch.uint8  # normalised where it lands
    assert torch.equal(a, b) and not torch.equal(a, c)
    ev = src.eval_items(vid)["face"]
    assert ev.shape == (counts[vid], 3, 112, 112)  # every crop with a face, in order
    assert torch.equal(ev, src.eval_items(vid)["face"])  # no augmentation at eval
    assert -3 < float(normalise_images(ev).mean()) < 3
    assert src.store.decodes == sum(1 for n in counts.values() if n)  # decoded once (preload)
    small = data_image.face_source(root=av_root, video_ids=[vid],
                                   config={"size": 64, "max_eval_views": 3, "augment": "none"})
    assert small.eval_items(vid)["face"].shape == (3, 3, 64, 64)


def test_no_face_video_is_reported_and_has_no_input(av_root):
    ids = _ids(av_root)
    src = data_image.face_source(root=av_root, video_ids=ids, config={"path": "data/faces_noface"})
    gone = ids[0]
    assert not src.has(gone) and src.has(ids[1])
    with pytest.raises(SourceError, match=gone):
        src.train_item(gone, np.random.default_rng(0))
    with pytest.raises(SourceError, match="face_found"):
        src.eval_items(gone)
    seq = data_image.face_seq_source(root=av_root, video_ids=ids,
                                     config={"path": "data/faces_noface"})
    assert not seq.has(gone)


def test_small_cache_still_serves_every_video(av_root):
    ids = _ids(av_root)
    src = data_image.face_source(root=av_root, video_ids=ids, config={"cache_mb": 0.05,
                                                                      "preload": False})
    for v in ids:
        if src.has(v):
            src.train_item(v, np.random.default_rng(0))
    assert src.store.bytes <= 0.05 * 2 ** 20


def test_face_seq_clip_and_segments(av_root):
    ids = _ids(av_root)
    counts = _face_counts(av_root)
    vid = max(counts, key=counts.get)
    n = counts[vid]
    clip = data_image.face_seq_source(root=av_root, video_ids=[vid], config={"length": 4,
                                                                             "size": 48})
    x = clip.train_item(vid, np.random.default_rng(0))["face_seq"]
    assert x.shape == (4, 3, 48, 48)
    assert clip.eval_items(vid)["face_seq"].shape == (n // 4, 4, 3, 48, 48)
    seg = data_image.face_seq_source(root=av_root, video_ids=[vid], config={
        "length": 6, "size": 48, "sampling": "segments", "augment": "none"})
    y1 = seg.train_item(vid, np.random.default_rng(1))["face_seq"]
    y2 = seg.train_item(vid, np.random.default_rng(1))["face_seq"]
    assert y1.shape == (6, 3, 48, 48) and torch.equal(y1, y2)
    assert seg.eval_items(vid)["face_seq"].shape == (1, 6, 3, 48, 48)


def test_frame_source(av_root):
    ids = _ids(av_root)
    src = data_image.frame_source(root=av_root, video_ids=ids[:2], config={"size": 64})
    n = len(pd.read_parquet(av_root / "data" / "frames", columns=["video_id"]).query(
        "video_id == @ids[0]"))
    assert src.train_item(ids[0], np.random.default_rng(0))["frame"].shape == (3, 64, 64)
    assert src.eval_items(ids[0])["frame"].shape == (n, 3, 64, 64)


def test_audio_sources(av_root):
    ids = _ids(av_root)
    mel = data_audio.logmel_source(root=av_root, video_ids=ids, config={"frames": 100})
    a = mel.train_item(ids[0], np.random.default_rng(5))["logmel"]
    assert a.shape == (64, 100)
    assert torch.equal(a, mel.train_item(ids[0], np.random.default_rng(5))["logmel"])
    full = mel.eval_items(ids[0])["logmel"]
    n_frames = int(pd.read_parquet(av_root / "data" / "audio", columns=["video_id", "n_frames"])
                   .set_index("video_id").loc[ids[0], "n_frames"])
    assert full.shape == (1, 64, n_frames)
    train_ids = set(pd.read_parquet(av_root / "data" / "manifest.parquet").query(
        "split == 'train'")["video_id"])
    crops = data_audio.logmel_source(root=av_root, video_ids=ids,
                                     config={"frames": 100, "eval_mode": "crops"})
    views = crops.eval_items(ids[0])["logmel"]
    starts = data_audio.crop_starts(n_frames, 100)
    assert views.shape == (len(starts), 64, 100) and len(starts) == -(-n_frames // 100)
    for view, start in zip(views, starts):  # each crop is the clip's own steps, in time order
        assert torch.equal(view, full[0, :, start:start + 100])
    fit = torch.cat([mel.eval_items(v)["logmel"][0] for v in ids if v in train_ids], dim=1)
    assert fit.mean(dim=1).abs().max() < 1e-3  # standardised with train-split statistics

    wave = data_audio.wave_source(root=av_root, video_ids=ids, config={"samples": 8000})
    w = wave.train_item(ids[0], np.random.default_rng(0))["wave"]
    assert w.shape == (8000,) and w.abs().max() <= 1.0 and w.abs().max() > 0
    assert wave.eval_items(ids[0])["wave"].shape == (1, 8000)

    fn = data_audio.audio_fn_source(root=av_root, video_ids=ids, config={})
    v = fn.train_item(ids[0], np.random.default_rng(0))["audio_fn"]
    assert v.shape == (fn.n_features,) and fn.n_features > 100 and torch.isfinite(v).all()
    assert fn.eval_items(ids[0])["audio_fn"].shape == (1, fn.n_features)
    sub = data_audio.audio_fn_source(root=av_root, video_ids=ids,
                                     config={"include": ["fn_rms_db"]})
    assert all(c.startswith("fn_rms_db") for c in sub.columns)
    with pytest.raises(SourceError, match="unknown source option"):
        data_audio.logmel_source(root=av_root, video_ids=ids, config={"frame": 3})


def test_the_checkpoint_config_names_the_eval_mode_the_audio_sources_scored_with(av_root):
    """A train.source_config without logmel.eval_mode scores the whole clip (the source's own
    default, `full`; params.yaml sets `centre`), and the checkpoint's config left the key out:
    what predict would do rested on that default. The train stage's inference config
    (for_inference over the sources, what it stores) now names the mode, and a source rebuilt
    from it alone scores the same view."""
    from models.data import for_inference

    ids = _ids(av_root)
    for config, want in (({}, "full"), ({"eval_mode": "centre"}, "centre"),
                         ({"eval_mode": "crops", "frames": 100}, "crops")):
        mel = data_audio.logmel_source(root=av_root, video_ids=ids, config=config)
        stored = for_inference({"logmel": config}, [mel])["logmel"]
        assert stored["eval_mode"] == want and len(stored["mean"]) == 64
        again = data_audio.logmel_source(root=av_root, video_ids=ids[:1], config=stored)
        assert torch.equal(again.eval_items(ids[0])["logmel"], mel.eval_items(ids[0])["logmel"])
    wave = data_audio.wave_source(root=av_root, video_ids=ids, config={})
    assert for_inference({}, [wave]) == {"wave": {"samples": 48000, "eval_mode": "centre",
                                                  "on_missing": "error", "path": ""}}
    fn = data_audio.audio_fn_source(root=av_root, video_ids=ids, config={})
    assert "eval_mode" not in for_inference({}, [fn])["audio_fn"]


def test_missing_audio_is_reported(av_root):
    ids = _ids(av_root)
    mel = data_audio.logmel_source(root=av_root, video_ids=[*ids, "nope"], config={})
    assert not mel.has("nope")
    with pytest.raises(SourceError, match="nope"):
        mel.eval_items("nope")
    zeros = data_audio.logmel_source(root=av_root, video_ids=[*ids, "nope"],
                                     config={"on_missing": "zeros", "frames": 50})
    assert zeros.has("nope")
    assert float(zeros.train_item("nope", np.random.default_rng(0))["logmel"].abs().sum()) == 0


def test_sources_feed_the_models(av_root):
    """A batch from the sources runs through a model of each family (what the engine does)."""
    from models.registry import build_model

    ids = [v for v in _ids(av_root) if _face_counts(av_root).get(v)][:2]
    face = data_image.face_source(root=av_root, video_ids=ids, config={"size": 64})
    mel = data_audio.logmel_source(root=av_root, video_ids=ids,
                                   config={"frames": 120, "stats_split": ""})  # any two clips
    items = [{**face.train_item(v, np.random.default_rng(i)),
              **mel.train_item(v, np.random.default_rng(i))} for i, v in enumerate(ids)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    model = build_model("bimodal_resnet", width=4, layers=(1, 1, 1, 1), audio_widths=(4, 8))
    assert model.predict(batch).shape == (2, 5)


def test_logmel_span_whole_stretches_the_clip_so_segments_cover_it(av_root):
    """bimodal_lstm cuts the log-mel in 6 segments beside 6 face segments over the whole clip:
    with `span: whole` segment k covers the k-th sixth of the clip in training and evaluation
    alike (a random 3 s crop covered some 3 s of it)."""
    ids = _ids(av_root)
    crop = data_audio.logmel_source(root=av_root, video_ids=ids, config={"frames": 100000,
                                                                          "max_frames": 100000})
    whole = data_audio.logmel_source(root=av_root, video_ids=ids,
                                     config={"span": "whole", "frames": 60})
    x = crop.eval_items(ids[0])["logmel"][0].numpy()  # (M, T): the clip, standardised alike
    n = int(np.flatnonzero(np.abs(x).sum(axis=0) > 0).max()) + 1
    train = whole.train_item(ids[0], np.random.default_rng(0))["logmel"].numpy()
    assert train.shape == (x.shape[0], 60)
    np.testing.assert_array_equal(whole.eval_items(ids[0])["logmel"][0].numpy(), train)
    np.testing.assert_allclose(train[:, 0], x[:, 0], atol=1e-5)  # first step: the clip's first
    np.testing.assert_allclose(train[:, -1], x[:, n - 1], atol=1e-5)  # last: its last
    ramp = np.arange(10, dtype=np.float32)[None]  # (1, 10): step k of the output at k / length
    np.testing.assert_allclose(data_audio.stretch(ramp, 4, 10), [[0, 3, 6, 9]])
    np.testing.assert_allclose(data_audio.stretch(ramp, 3, 6), [[2, 4.5, 7]])  # centred 6 steps


def test_crop_starts_cover_the_clip_with_the_fewest_crops():
    assert data_audio.crop_starts(300, 300) == [0] and data_audio.crop_starts(120, 300) == [0]
    for n in (301, 599, 600, 601, 950, 1000):
        starts = data_audio.crop_starts(n, 300)
        assert len(starts) == -(-n // 300) and starts[0] == 0 and starts[-1] == n - 300
        assert all(b - a <= 300 for a, b in zip(starts, starts[1:]))  # no gap between crops


def test_standardisation_never_falls_back_on_held_out_clips(av_root):
    """Statistics come from train-split videos; given none (and no stored statistics), the
    source refuses instead of fitting them on val / test clips."""
    held_out = pd.read_parquet(av_root / "data" / "manifest.parquet").query(
        "split != 'train'")["video_id"].tolist()
    with pytest.raises(SourceError, match="no train-split video"):
        data_audio.logmel_source(root=av_root, video_ids=held_out, config={})


def test_the_checkpoint_config_writes_out_every_option_a_source_was_built_with(av_root,
                                                                           monkeypatch):
    """A checkpoint's source config used to hold only what train.source_config said: logmel
    max_frames / span / normalise or aus eval_views rested on the code's defaults, so a later
    change of a default would have changed what predict does with an old checkpoint. Every option
    is written out now (not the machine's cache_mb / preload), and a source rebuilt from the
    stored config alone, under changed defaults, makes the same inputs."""
    from models import data
    from models.data import for_inference

    ids = _ids(av_root)
    mel = data_audio.logmel_source(root=av_root, video_ids=ids, config={"frames": 100})
    stored = for_inference({"logmel": {"frames": 100}, "face": {"size": 32}}, [mel])
    fields = {f.name for f in dataclasses.fields(data_audio.LogmelSourceConfig)}
    assert set(stored["logmel"]) == fields - data.RUNTIME_OPTIONS
    assert stored["logmel"]["frames"] == 100 and stored["logmel"]["max_frames"] == 1500
    assert stored["face"] == {"size": 32}  # another model's key: as given, nothing built
    assert "cache_mb" not in for_inference({"face": {"size": 32, "cache_mb": 9e4}})["face"]
    moved = dataclasses.make_dataclass(  # the same options, every default moved
        "Moved", [("eval_mode", str, "centre"), ("max_frames", int, 7), ("normalise", bool, False)],
        bases=(data_audio.LogmelSourceConfig,), frozen=True)
    monkeypatch.setattr(data_audio, "LogmelSourceConfig", moved)
    again = data_audio.logmel_source(root=av_root, video_ids=ids[:1], config=stored["logmel"])
    assert torch.equal(again.eval_items(ids[0])["logmel"], mel.eval_items(ids[0])["logmel"])


def test_inference_never_reads_augmented_sequences_whatever_key_asked_for_them():
    """`augmented` given under aus_mask (the AU source's second key, merged last) used to survive
    for_inference: predict would have looked for data/augmented and retrain fine-tuned on it."""
    from models.data import _merged_config, _registrations, for_inference

    config = for_inference({"aus": {"augmented": True}, "aus_mask": {"augmented": True}})
    (reg,) = _registrations(["aus", "aus_mask"])
    assert _merged_config(reg, config)["augmented"] is False
    assert "augmented" not in for_inference({"aus_mask": {"seq_len": 8}})["aus_mask"]


@pytest.mark.parametrize("option", [{"jitter": 1.5}, {"jitter": -0.1}, {"erase_p": 2.0}])
def test_a_colour_jitter_that_would_invert_images_is_refused(option):
    with pytest.raises(SourceError, match="jitter and erase_p in"):
        data_image.ImageSourceConfig(**option)

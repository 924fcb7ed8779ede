"""The functionals stage's pure functions, the functionals source (fitted state, parity) and the
closed-form classical models (ridge against scikit-learn, exported trees against scikit-learn's
own predictions, a checkpoint round trip)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from models import classical
from models.data import build_sources, check_inference_parity, for_inference
from stages import functionals as fx


def test_onsets_count_rising_edges():
    active = np.array([[0, 1], [1, 1], [1, 0], [0, 0], [1, 1]], bool)  # (T=5, K=2)
    assert fx.onsets(active).tolist() == [2, 2]


def test_au_functionals_by_hand():
    x = np.zeros((10, 17))
    x[[2, 3, 7], 8] = 2.0  # AU12 active in two episodes
    out = fx.au_functionals(x, 2.0, active_threshold=1.0)
    assert out["AU12_r_mean"] == pytest.approx(0.6)
    assert out["AU12_c_share"] == pytest.approx(0.3)
    assert out["AU12_onsets_per_s"] == pytest.approx(1.0)  # 2 onsets in 2 s
    assert out["AU01_r_sd"] == 0.0
    assert all(np.isnan(v) for v in fx.au_functionals(np.zeros((0, 17)), 0.0,
                                                       active_threshold=1.0).values())


def test_head_functionals_speed():
    t = np.array([0.0, 0.2, 0.4])
    angles = np.array([[0.0, 0, 0], [3.0, 4, 0], [3.0, 4, 0]])  # 5 degrees in 0.2 s, then still
    out = fx.head_functionals(angles, t)
    assert out["head_speed_mean"] == pytest.approx((25.0 + 0.0) / 2)
    assert out["head_yaw_sd"] == pytest.approx(np.std([0, 3, 3]))


def test_a_late_tracks_alignment_silence_is_no_part_of_its_pitch():
    """The audio stage's fn_* describe the recorded audio, from the first frame centred at or
    after a late track's leading silence; the semitone functionals took every f0 frame, the
    lead's too (a voiced estimate straddling the onset moved them)."""
    f0 = np.r_[np.full(29, np.nan), 55.0, np.full(10, 110.0), np.full(10, 220.0)]  # (50,)
    row = {"has_audio": True, "silent": False, "error": "", "f0": f0, "sr": 16000,
           "hop_s": 0.01, "audio_offset_s": 0.3}  # 4800 samples: frames 0-29 before frame 30
    out = fx.audio_functionals({**row, "fn_rms_db_mean": 1.0}, ["fn_rms_db_mean"])
    assert out["f0_semitone_mean"] == pytest.approx(30.0)  # 110 and 220 Hz: 24 and 36
    # the straddling 55 Hz frame (29) counts when the track was not shifted
    for unshifted in (0.0, -0.3, float("nan")):
        got = fx.audio_functionals({**row, "audio_offset_s": unshifted, "fn_rms_db_mean": 1.0},
                                   ["fn_rms_db_mean"])
        assert got["f0_semitone_mean"] < 30.0


def test_semitones_of_an_octave():
    out = fx.semitones(np.array([110.0, 220.0, np.nan, 0.0]))
    assert out["f0_semitone_mean"] == pytest.approx(30.0)  # 24 and 36 semitones re 27.5 Hz
    assert out["f0_semitone_sd"] == pytest.approx(6.0)


@pytest.fixture
def table_root(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    ids = [f"v{i:02d}" for i in range(n)]
    x = rng.normal(size=(n, 6)) * [1, 2, 3, 1, 1, 0.5] + [0, 1, 2, 3, 4, 5]
    x[3, 2] = np.nan  # a missing value: the train mean
    y = np.clip(0.5 + 0.1 * x[:, :5] @ rng.normal(size=(5, 5)) / 3, 0, 1)
    df = pd.DataFrame(x, columns=[f"c{k}" for k in range(6)]).assign(video_id=ids)
    (tmp_path / "data" / "functionals").mkdir(parents=True)
    df.to_parquet(tmp_path / "data" / "functionals" / "functionals.parquet")
    split = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    pd.DataFrame({"video_id": ids, "split": split}).to_parquet(tmp_path / "data" / "manifest.parquet")
    return tmp_path, ids, np.nan_to_num(y, nan=0.5), [f"s{i // 2}" for i in range(n)]


def test_source_standardises_with_train_statistics_and_keeps_them(table_root):
    root, ids, _, _ = table_root
    src, = build_sources(["functionals"], root=root, video_ids=ids, config={})
    train = np.stack([src.eval_items(v)["functionals"][0].numpy() for v in ids[:30]])
    assert np.allclose(train.mean(0), 0, atol=1e-5)
    assert src.eval_items("v03")["functionals"][0, 2] == 0  # NaN -> the train mean
    config = for_inference({}, [src])
    check_inference_parity([src], config, root=root, video_ids=ids[30:])  # raises on a difference


def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 30)), rng.normal(size=(20, 5))
    w, b = classical.ridge_solve(x, y, 3.0)
    ref = Ridge(alpha=3.0).fit(x, y)
    assert np.allclose(w, ref.coef_.T) and np.allclose(b, ref.intercept_)


def test_ridge_cv_scales_each_fold_on_its_own_training_rows():
    """The grouped CV z-scores every fold with its training rows alone, so it gives the same
    choices and out-of-fold predictions whatever scale the caller standardised with (before,
    scaling once over all rows let a held-out fold bound its own z-scores)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 12))
    x[:, 3] = rng.standard_cauchy(40)  # a heavy-tailed column
    y = 0.5 + 0.1 * x[:, :5] @ rng.normal(size=(5, 5)) / 3 + rng.normal(0, 0.05, (40, 5))
    groups = np.arange(40) // 4
    alphas = (1.0, 10.0, 100.0)
    scale, shift = rng.uniform(0.1, 10, 12), rng.normal(0, 5, 12)
    for clip in (0.0, 3.0):
        a1, t1, o1 = classical.ridge_cv(x, y, groups, alphas, 4, clip=clip)
        a2, t2, o2 = classical.ridge_cv(x * scale + shift, y, groups, alphas, 4, clip=clip)
        assert np.array_equal(a1, a2) and np.allclose(t1, t2) and np.allclose(o1, o2)
    held = classical.group_folds(groups, 4)[0]
    train = np.setdiff1d(np.arange(40), held)
    z = classical.fold_scaled(x, train, 3.0)
    assert np.allclose(z[train].mean(0), np.clip(z[train], -3, 3).mean(0))
    assert np.abs(z).max() == pytest.approx(3.0)
    assert np.allclose(classical.fold_scaled(x, train)[train].std(0), 1.0)


def test_a_missing_value_is_filled_by_each_fold_without_its_held_out_rows(table_root):
    """The source fills a missing value with the train mean (0), which the held-out fold helped
    set; the ridge's CV gets the NaN back (`_with_missing`) and each fold fills it with its own
    mean, so no held-out value moves its fold's scaling (a review, 2026-12-06)."""
    rng = np.random.default_rng(7)
    x = rng.lognormal(size=(60, 3))
    x[rng.random(60) < 0.4, 0] = np.nan
    train, held = np.arange(45), np.arange(45, 60)
    moved = x.copy()
    moved[held] += 5.0
    a, b = classical.fold_scaled(x, train), classical.fold_scaled(moved, train)
    assert np.array_equal(a[train], b[train]) and not np.isnan(a).any()
    assert np.allclose(a[train][~np.isnan(x[train, 0]), 0].mean(), 0)
    root, ids, _, _ = table_root
    src, = build_sources(["functionals"], root=root, video_ids=ids, config={})
    filled = classical._matrix([src], ids[:30])
    again = classical._with_missing(filled, src, ids[:30])
    assert np.isnan(again[3, 2]) and np.isnan(again).sum() == 1 and filled[3, 2] == 0


def test_the_ridge_clips_what_the_cv_chose_in_training_forward_and_contributions():
    """A fitted clip bounds every input the same way: an unseen clip 400 sd out on a column
    scores as one at the bound, and its linear contributions still sum to the raw output."""
    from models.contributions import feature_contributions

    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 8))
    y = np.clip(0.5 + 0.08 * x[:, :5] + rng.normal(0, 0.03, (60, 5)), 0, 1)
    model = classical.FunctionalsRidge(classical.RidgeConfig(clip_options=(3.0,), folds=3))
    facts = model.fit(x, y, np.arange(60) // 3)
    assert facts["clip"] == model.config.chosen_clip == 3.0
    far, bound = np.zeros((1, 8)), np.zeros((1, 8))
    far[0, 1], bound[0, 1] = 400.0, 3.0
    score = [model({"functionals": torch.from_numpy(v)}) for v in (far, bound)]
    assert torch.equal(score[0], score[1])
    part = feature_contributions(model, {"functionals": torch.from_numpy(far)}, "functionals",
                                 [f"c{k}" for k in range(8)])
    assert np.allclose(part["raw_output"], score[0][0].numpy())
    assert part["values"][1] == pytest.approx(3.0 * model.weight[1].numpy())
    for bad in ((-1.0,), 3, None, (float("nan"),), (True,)):
        with pytest.raises(ValueError, match="clip_options must be a list of numbers >= 0"):
            classical.RidgeConfig(clip_options=bad)
    with pytest.raises(ValueError, match="chosen_clip must be a number >= 0, got -1"):
        classical.RidgeConfig(chosen_clip=-1.0)
    assert classical.RidgeConfig(clip_options=[0, 3]).clip_options == (0, 3)


def test_exported_trees_predict_like_sklearn():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1]
    cfg = classical.TreesConfig(max_trees=20, depth=3)
    gbr = classical._boost(x, y, cfg)
    arrays = classical.export_trees(gbr)
    cfg.n_trees, cfg.n_nodes = arrays["value"].shape
    model = classical.FunctionalsTrees(cfg)
    for name in model._ARRAYS:
        getattr(model, name)[0] = torch.from_numpy(arrays[name])
    model.init[0] = float(gbr.init_.constant_.ravel()[0])
    got = model({"functionals": torch.from_numpy(x)})[:, 0].numpy()
    assert np.allclose(got, gbr.predict(x), atol=1e-10)


def test_five_trait_ensembles_of_different_sizes_predict_like_sklearn():
    """Each trait's trees sit at their own flat addresses (trait, tree, node): five boosters of
    5-20 trees (padded to the largest), every trait against sklearn."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    targets = [np.sin(x[:, 0]), x[:, 1] ** 2, x[:, 2], x[:, 3] - x[:, 4], x[:, 5]]
    cfg = classical.TreesConfig(max_trees=20, depth=3)
    boosters = [classical._boost(x, y, cfg, n) for y, n in zip(targets, (20, 5, 12, 20, 8))]
    exported = [classical.export_trees(g) for g in boosters]
    cfg.n_trees = max(len(e["value"]) for e in exported)
    cfg.n_nodes = max(e["value"].shape[1] for e in exported)
    model = classical.FunctionalsTrees(cfg)
    for k, e in enumerate(exported):
        t, m = e["value"].shape
        for name in model._ARRAYS:
            getattr(model, name)[k, :t, :m] = torch.from_numpy(e[name])
        model.left[k, t:] = model.right[k, t:] = 0
        model.init[k] = float(boosters[k].init_.constant_.ravel()[0])
    got = model({"functionals": torch.from_numpy(x)}).numpy()  # (80, 5)
    want = np.stack([g.predict(x) for g in boosters], axis=1)
    assert np.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("name", ["functionals_ridge", "functionals_gbt"])
def test_closed_form_fit_checkpoint_round_trip(table_root, tmp_path, name):
    from models.engine import load_checkpoint, predict_videos
    from models.registry import build_model

    root, ids, y, subjects = table_root
    src, = build_sources(["functionals"], root=root, video_ids=ids, config={})
    model = build_model(name, **({"max_trees": 10} if name == "functionals_gbt" else {}))
    result = classical.fit_closed_form(
        model, [src], train_ids=ids[:30], train_targets=y[:30], groups=subjects[:30],
        val_ids=ids[30:35], val_targets=y[30:35], out_dir=tmp_path / "m",
        meta={"model_name": name, "inputs": ["functionals"],
              "source_config": for_inference({}, [src])})
    assert result["history"][0]["val_ccc"] > 0.3  # a linear signal in 5 of 6 columns
    loaded, ckpt = load_checkpoint(tmp_path / "m" / "best.pt")
    rebuilt = build_sources(["functionals"], root=root, video_ids=ids[35:],
                            config=for_inference(ckpt["source_config"]))
    want = predict_videos(model, [src], ids[35:])
    assert np.allclose(predict_videos(loaded, rebuilt, ids[35:]), want, atol=1e-9)


@pytest.mark.parametrize("name", ["functionals_ridge", "functionals_gbt"])
def test_refit_repeats_the_training_procedure(table_root, tmp_path, name):
    """refit (the explain stage's cross-fitting) on the train rows gives the checkpoint's model
    again, buffer for buffer (the same grid searched by the same grouped CV); on fewer rows it
    gives another model and leaves the trained one untouched."""
    from models.engine import load_checkpoint
    from models.registry import build_model

    root, ids, y, subjects = table_root
    src, = build_sources(["functionals"], root=root, video_ids=ids, config={})
    model = build_model(name, **({"max_trees": 10} if name == "functionals_gbt" else {}))
    classical.fit_closed_form(
        model, [src], train_ids=ids[:30], train_targets=y[:30], groups=subjects[:30],
        out_dir=tmp_path / "m", meta={"model_name": name, "inputs": ["functionals"],
                                      "source_config": for_inference({}, [src])})
    loaded, _ = load_checkpoint(tmp_path / "m" / "best.pt")
    trained = {k: v.clone() for k, v in loaded.state_dict().items()}
    config = dataclasses.asdict(loaded.config)
    x = classical._with_missing(classical._matrix([src], ids[:30]), src, ids[:30])  # (30, F)
    again = classical.refit(loaded, x, y[:30], subjects[:30], src.columns).state_dict()
    assert all(torch.equal(again[k], v) for k, v in trained.items())
    fewer = classical.refit(loaded, x[:20], y[:20], subjects[:20], src.columns).state_dict()
    assert not all(torch.equal(fewer[k], v) for k, v in trained.items())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
    assert dataclasses.asdict(loaded.config) == config  # its choices are its own


def _five_trait_trees(rng: np.random.Generator) -> tuple[classical.FunctionalsTrees, np.ndarray]:
    """A fitted functionals_gbt on 80 rows of 6 columns, five targets of different shapes."""
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] ** 2, x[:, 2], x[:, 3] - x[:, 4], x[:, 5]], axis=1)
    model = classical.FunctionalsTrees(classical.TreesConfig(max_trees=15, depth=3, folds=3))
    model.fit(x.astype(np.float64), y, np.arange(80) // 4)
    return model.eval(), x


def test_rescoring_only_the_trees_a_column_reaches_is_forward_to_the_bit():
    """rescored (permutation importance's shortcut for trees) walks again only the trees that
    split on the shuffled columns: the same bits as forward on the shuffled rows."""
    rng = np.random.default_rng(4)
    model, x = _five_trait_trees(rng)
    assert (model.value.abs().sum(-1) == 0).any()  # a trait with fewer trees: padding trees
    x = torch.from_numpy(np.concatenate([x] * 3))  # 240 rows: more than one 128-row block
    rng_rows = len(x)
    with torch.inference_mode():
        leaves = model.leaves(x)  # (80, K * N)
        for cols in ([0], [3, 4], [5], [0, 1, 2, 3, 4, 5]):
            shuffled = x.clone()
            shuffled[:, cols] = x[torch.from_numpy(rng.permutation(rng_rows))][:, cols]
            want = model({"functionals": shuffled})
            assert torch.equal(model.rescored(leaves, shuffled, cols), want)
            assert not torch.equal(want, model({"functionals": x}))  # the shuffle mattered
        assert torch.equal(model.rescored(leaves, x, [0]), model({"functionals": x}))


def test_permutation_importance_of_trees_is_the_same_with_the_shortcut(monkeypatch):
    import models.importance as importance

    model, x = _five_trait_trees(np.random.default_rng(5))
    views = {f"v{i}": {"functionals": torch.from_numpy(x[i:i + 1])} for i in range(len(x))}
    calls, rescored = [], model.rescored
    monkeypatch.setattr(model, "rescored", lambda *a: calls.append(a[2]) or rescored(*a))
    fast = importance.permuted_predictions(model, views, "functionals", repeats=3, seed=0)
    assert calls == [[f] for f in range(6)]  # the shortcut ran, once per column
    monkeypatch.setattr(importance, "_base_leaves", lambda *args: None)
    full = importance.permuted_predictions(model, views, "functionals", repeats=3, seed=0)
    assert fast.shape == (6, 3, 80, 5) and np.array_equal(fast, full)


def test_an_unreadable_audio_shard_is_an_error_naming_it(tmp_path):
    from personality.common import SchemaError

    folder = tmp_path / "data" / "audio"
    folder.mkdir(parents=True)
    (folder / "part-00000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match="part-00000.parquet: not a readable audio shard"):
        fx._audio_rows(tmp_path)


def test_an_au_only_source_gets_no_audio_functionals_rather_than_an_error(tmp_path, monkeypatch):
    """PerFeX and OpenFace-CSV datasets list no video, so the audio stage writes no shard: the
    stage failed on "no audio shards; run the audio stage first" and nothing could train. With
    no video in data/clips.parquet there are no audio functionals; with videos and no shard it
    is an error, as before."""
    from personality.common import StageInputError, read_artifact, write_artifact

    def clips(paths):
        write_artifact("clips", pd.DataFrame({
            "video_id": [f"v{i}" for i in range(len(paths))], "path": paths,
            "dataset": "perfex", "duration_s": 1.0, "fps": 30.0, "has_audio": False,
            "source_stat": ""}), path=tmp_path / "data" / "clips.parquet")

    def empty(name, path=None, columns=None):  # no AU or face rows: only the audio part matters
        if name == "clips":
            return read_artifact(name, path=path, columns=columns)
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns}).assign(video_id="")

    monkeypatch.setattr(fx, "read_artifact", empty)
    clips(["", ""])
    table = fx.compute(tmp_path, fx.FunctionalsParams())
    assert list(table["video_id"]) == ["v0", "v1"]
    assert not [c for c in table.columns if c.startswith(("fn_rms", "fn_f0", "egemaps_"))]
    clips(["videos/a.mp4", ""])
    with pytest.raises(StageInputError, match="no audio shards"):
        fx.compute(tmp_path, fx.FunctionalsParams())

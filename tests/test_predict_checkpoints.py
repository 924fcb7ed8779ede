"""predict and unusable checkpoints: a foreign, tampered or unfinished --model is one line naming
it with exit code 2, read before any work on a video (single and batch mode); a model whose output
is not finite (NaN weights) is an error naming the checkpoint, never printed or written as scores;
prediction.json is strict JSON; the report and prediction.json are never half-written or
mismatched."""
from __future__ import annotations

import json

import pytest
import torch

from models.engine import save_checkpoint
from models.registry import build_model
from stages import predict
from tests.conftest import real_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "perfex_cnn" / "best.pt",
                           model=build_model("perfex_cnn"), model_name="perfex_cnn",
                           train_mean=[0.5] * 5, inputs=["aus", "aus_mask"])


def tampered(good, tmp_path, name: str, **changes):
    ckpt = torch.load(good, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, tmp_path / f"{name}.pt")
    return tmp_path / f"{name}.pt"


def bad_checkpoints(good, tmp_path) -> dict:
    state = torch.load(good, weights_only=True)["state_dict"]
    first = next(iter(state))
    return {
        "bad_name": tampered(good, tmp_path, "bad_name", model_name="no_such_model"),
        "cfg_not_dict": tampered(good, tmp_path, "cfg_not_dict", model_config="width=8"),
        "bad_shape": tampered(good, tmp_path, "bad_shape",
                              state_dict={**state, first: torch.zeros(3, 3, 3)}),
        "unknown_input": tampered(good, tmp_path, "unknown_input", inputs=["no_such_source"]),
        "srccfg_str": tampered(good, tmp_path, "srccfg_str", source_config="aus"),
        "unknown_option": tampered(good, tmp_path, "unknown_option",
                                   source_config={"aus": {"no_such_option": 1}}),
        "unfinished": tampered(good, tmp_path, "unfinished", finished=False, epoch=3),
        "text": _text_file(tmp_path / "text.pt"),
    }


def _text_file(path):
    path.write_text("not a checkpoint\n")
    return path


@pytest.fixture
def no_front_end(monkeypatch):
    """Fail the test if any front-end work starts (it takes ~10 s a video)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the front-end ran before the checkpoint was checked")

    monkeypatch.setattr(predict, "run_front_end", refuse)


def test_bad_checkpoints_are_one_line_before_any_video_work(good, tmp_path, caplog,
                                                            no_front_end):
    video = real_fixture("single_face.mp4")
    for name, path in bad_checkpoints(good, tmp_path).items():
        caplog.clear()
        assert predict.main([str(video), "--out", str(tmp_path / "o"), "--model",
                             str(path)]) == 2, name
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and str(path) in errors[0] and "\n" not in errors[0], name
        assert not (tmp_path / "o").exists()


def test_batch_refuses_a_bad_checkpoint_at_once(good, tmp_path, caplog, no_front_end):
    evil = tampered(good, tmp_path, "bad_name", model_name="no_such_model")
    video = real_fixture("single_face.mp4")
    assert predict.main([str(video), str(video.parent / "no_face.mp4"), "--out",
                         str(tmp_path / "o"), "--model", str(evil)]) == 2
    assert str(evil) in caplog.text and not (tmp_path / "o" / "predictions.csv").exists()


def test_a_source_config_that_fails_to_build_names_the_checkpoint(good, tmp_path, monkeypatch):
    """Errors raised while building the checkpoint's inputs for the clip name the checkpoint."""
    from models.engine import EngineError

    bad = tampered(good, tmp_path, "no_aus", source_config={"aus": {"aus_path": "nowhere"}})
    loaded = predict.load_model(bad)  # a valid option; what it points at is read when built
    with pytest.raises(EngineError, match="no_aus.pt") as info:
        predict.model_scores(loaded, tmp_path, "clip", tmp_path / "clip.mp4")
    assert "nowhere" in str(info.value)


def test_a_bad_source_option_or_value_is_refused_when_the_checkpoint_is_read(good, tmp_path):
    """Unknown options and invalid values are found without data (before the front-end)."""
    from models.data import SourceError, check_source_options
    from models.engine import EngineError

    bad = tampered(good, tmp_path, "bad_option", source_config={"aus": {"no_such_option": 1}})
    with pytest.raises(EngineError, match="bad_option.pt.*no_such_option"):
        predict.load_model(bad)
    # the option and its value named (a generic "eval_mode full|centre|crops, on_missing ..."
    # listing every rule before, and "'<' not supported between 'str' and 'int'" for a type)
    with pytest.raises(SourceError, match=r"source_config.logmel.eval_mode: 'bogus' is not one "
                                          r"of 'full', 'centre', 'crops'"):
        check_source_options(["logmel"], {"logmel": {"eval_mode": "bogus"}})
    with pytest.raises(SourceError, match="source_config.face: .*size >= 8"):
        check_source_options(["face"], {"face": {"size": -1}})
    with pytest.raises(SourceError, match=r"source_config.face.size: expected an integer, got "
                                          r"str 'big'"):
        check_source_options(["face"], {"face": {"size": "big"}})
    with pytest.raises(SourceError, match=r"source_config.aus.seq_len: expected an integer"):
        check_source_options(["aus"], {"aus": {"seq_len": 1.5}})  # accepted before
    # sizes past any model's use: a tampered checkpoint's 10^5-pixel faces (30 GB a crop)
    with pytest.raises(SourceError, match=r"source_config.face.size: 100000 is over 1024"):
        check_source_options(["face"], {"face": {"size": 100_000}})
    bad = tampered(good, tmp_path, "huge", source_config={"aus": {"seq_len": 10**9}})
    with pytest.raises(EngineError, match=r"huge.pt.*seq_len: 1000000000 is over 100000"):
        predict.load_model(bad)
    check_source_options(["aus", "aus_mask", "logmel", "functionals"],
                         {"aus": {"seq_len": 16}, "logmel": {"eval_mode": "crops"}})


@pytest.mark.parametrize("key,option,value", [
    ("aus", "aus_path", "/elsewhere/data/aus"), ("aus", "augmented_path", "../../data/augmented"),
    ("face", "path", "/home/someone/data/faces"), ("logmel", "path", "data/../../audio"),
    ("functionals", "path", "/tmp/functionals.parquet")])
def test_a_source_folder_outside_the_root_is_refused_when_the_checkpoint_is_read(
        good, tmp_path, key, option, value):
    """A source's folder option (`aus_path`, `path`) is relative to the root predict builds the
    clip's inputs in: a checkpoint naming an absolute one or one through `..` would make predict
    read another folder's artifacts (another project's data/aus) as the clip's. Refused by name
    when the checkpoint is read, before the front-end; found by an audit (it used to load)."""
    from models.data import SourceError, check_source_options
    from models.engine import EngineError

    if key == "aus":  # the options of the sources the checkpoint's model reads
        bad = tampered(good, tmp_path, "outside", source_config={key: {option: value}})
        with pytest.raises(EngineError, match=f"outside.pt.*{option}.*data root") as info:
            predict.load_model(bad)
        assert value in str(info.value)
    with pytest.raises(SourceError, match=f"source_config.{key}.{option}: "):
        check_source_options([key], {key: {option: value}})
    check_source_options([key], {key: {option: "data/elsewhere"}})  # inside the root: fine


@pytest.fixture(scope="module")
def nan_checkpoint(good, tmp_path_factory):
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    path = tmp_path_factory.mktemp("nan") / "nan_weights.pt"
    torch.save(ckpt, path)
    return path


def test_nan_output_is_an_error_naming_the_checkpoint(nan_checkpoint, tmp_path, caplog, capsys):
    video = real_fixture("single_face.mp4")
    code = predict.main([str(video), "--out", str(tmp_path / "o"), "--model",
                         str(nan_checkpoint), "--no-explain"])
    assert code == 2 and "model output is not finite" in caplog.text
    assert str(nan_checkpoint) in caplog.text
    assert "nan" not in capsys.readouterr().out and not (tmp_path / "o").exists()
    # batch: an error row, not a row of NaN scores
    table = predict.predict_batch([video], tmp_path / "b", model=str(nan_checkpoint),
                                  explain=False)
    assert "model output is not finite" in table["error"].iloc[0]
    assert table[list("OCEAN")].isna().all(axis=None)


def _result(score: float = 0.5) -> dict:
    return {**{t: score for t in "OCEAN"}, "model": "perfex_cnn", "video": "clip.mp4",
            "fps": float("nan"), "warnings": [], "_report": {}}


def test_prediction_json_is_strict_json(tmp_path):
    predict.write_outputs(_result(), tmp_path)
    text = (tmp_path / "prediction.json").read_text()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(text, parse_constant=refuse)["fps"] is None


def test_outputs_are_never_half_written_nor_mismatched(tmp_path, monkeypatch):
    predict.write_outputs(_result(0.25), tmp_path)
    old = {n: (tmp_path / n).read_bytes() for n in ("prediction.json", "report.png")}

    def draw_half_then_fail(result, path):
        path.write_bytes(b"\x89PNG half")
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(predict, "draw_report", draw_half_then_fail)
    with pytest.raises(RuntimeError):
        predict.write_outputs(_result(0.75), tmp_path)
    monkeypatch.undo()

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict, "atomic_write_text", disk_full)
    with pytest.raises(OSError):  # the report is drawn, prediction.json cannot be written
        predict.write_outputs(_result(0.75), tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in old} == old  # the old pair, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prediction.json", "report.png"]


def test_batch_report_png_is_written_atomically(tmp_path, monkeypatch):
    report = tmp_path / "clip.png"
    predict.write_report(_result(), report)
    old = report.read_bytes()

    def write_half_then_fail(fig, path, **kwargs):
        open(path, "wb").write(b"\x89PNG half")
        raise RuntimeError("killed mid-savefig")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", write_half_then_fail)
    with pytest.raises(RuntimeError):
        predict.write_report(_result(0.9), report)
    assert report.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["clip.png"]
    assert old[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_without_inputs_is_chosen_by_its_models_inputs(tmp_path):
    """Model choice reads a checkpoint's registered inputs when it lists none (load_checkpoint
    fills them the same way): an audio model is no candidate for a silent clip."""
    from stages.predict_model import _inputs_of

    path = save_checkpoint(tmp_path / "best.pt", model=build_model("logmel_cnn"),
                           model_name="logmel_cnn", train_mean=[0.5] * 5, inputs=[])
    assert _inputs_of(path) == {"logmel"}


def test_models_are_ranked_by_their_own_checkpoints_when_the_metrics_are_another_runs(
        tmp_path, caplog):
    """metrics/evaluate.json is in git, the checkpoints in DVC: after a `git checkout` without
    `dvc checkout` the two describe different runs. A checkpoint that recorded its own val CCC
    and disagrees with the metrics is ranked by its own (and the log says so, once); one that
    agrees, or recorded none (a retrained model: no val split), by the metrics."""
    from stages.predict_model import validation_ranking

    own = {"stale": 0.50, "fresh": 0.30, "tuned+retrained": None}
    for name, ccc in own.items():
        folder = "retrained/models" if name.endswith("+retrained") else "models"
        history = [{"epoch": 1, "train_loss": 0.1, **({"val_ccc": ccc} if ccc else {})}]
        save_checkpoint(tmp_path / "data" / folder / name / "best.pt",
                        model=build_model("perfex_cnn"), model_name="perfex_cnn",
                        train_mean=[0.5] * 5, inputs=["aus", "aus_mask"], best_epoch=1,
                        history=history)
    metrics = {"stale": 0.10, "fresh": 0.30 + 5e-5, "tuned+retrained": 0.40}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(
        {"selection": {"val": {n: {"ccc": c} for n, c in metrics.items()}}}))
    for _ in range(2):  # a batch asks once per video
        ranked = validation_ranking(tmp_path, list(own))
    assert ranked == [("stale", 0.50), ("tuned+retrained", 0.40), ("fresh", 0.30 + 5e-5)]
    said = [r.getMessage() for r in caplog.records if "another run" in r.getMessage()]
    assert len(said) == 1 and "stale" in said[0] and "0.5000" in said[0]


def test_predict_breaks_a_tie_as_evaluate_does(tmp_path):
    """A val split of one clip gives every model CCC 0: predict's default model must be the one
    evaluate chose and register registered (the lower val MAE), not the first name."""
    from models.report import select_best
    from stages.predict_model import validation_ranking

    val = {"a_model": {"ccc": 0.0, "mae": 0.3}, "b_model": {"ccc": 0.0, "mae": 0.1}}
    for name in val:
        save_checkpoint(tmp_path / "data" / "models" / name / "best.pt",
                        model=build_model("perfex_cnn"), model_name="perfex_cnn",
                        train_mean=[0.5] * 5, inputs=["aus", "aus_mask"])
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"selection": {"val": val}}))
    assert [n for n, _ in validation_ranking(tmp_path, list(val))] == ["b_model", "a_model"]
    assert select_best(val) == "b_model"

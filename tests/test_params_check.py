"""params.yaml mistakes that no stage re-run would read are refused first, by the `inputs` stage
(every train@<model> stage depends on single train keys: a mistyped key there re-ran nothing and
an experiment "succeeded" with the baseline's metrics); a bad model config is one line naming it,
not a traceback; a stage stopped by SIGTERM unwinds: one line, exit 143, MLflow run KILLED;
base.log_level is in force."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from models.train_params import check_model_config
from personality.common import ParamsError
from stages.inputs import check_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _with(section: str, **changes) -> dict:
    params = copy.deepcopy(PARAMS)
    for key, value in changes.items():
        node = params[section]
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return params


def test_the_repository_params_pass():
    check_params(PARAMS)


@pytest.mark.parametrize("section, changes, named", [
    ("train", {"learning_rate": 0.01}, "train.learning_rate: unknown key"),
    ("train", {"model_config__functionals_rigde": {"alphas": [1.0]}},
     "'functionals_rigde' is not a registered model (did you mean 'functionals_ridge'?"),
    ("train", {"models": ["functionals_ridge", "resnet99_face"]}, "train.models: 'resnet99_face'"),
    ("train", {"source_config__facee": {"size": 32}}, "train.source_config"),
    ("train", {"source_config__face": {"sizee": 32}}, "sizee"),
    ("train", {"model_config__perfex_cnn__train": {"lrr": 0.1}},
     "train.model_config.perfex_cnn.train.lrr"),
    ("train", {"epochs": 0}, "train.epochs: 0 trains nothing"),
    ("train", {"model_config__perfex_cnn__train": {"epochs": 0}},
     "train.model_config.perfex_cnn.train.epochs: 0 trains nothing"),
    ("train", {"num_workers": -2}, "train.num_workers"),
    ("train", {"lr": "abc"}, "train.lr"),
    # torch refused these only when the optimizer was built (a traceback mid-stage), and took a
    # gamma <= 0 silently (multistep: a negative lr after the first milestone)
    ("train", {"weight_decay": -1e-4}, "weight_decay"),
    ("train", {"momentum": -0.5}, "momentum"),
    ("train", {"schedule": "multistep", "gamma": -0.1}, "train.gamma must be > 0"),
    ("train", {"model_config__perfex_cnn__train": {"gamma": 0.0}},
     "train.model_config.perfex_cnn.train.gamma must be > 0"),
    ("train", {"warmup_epochs": -2}, "warmup_epochs"),
    # taken silently until 2026-12-06: never stopping, a milestone at epoch 1, a warm-up that
    # never ended; and a model's own bad value was named as train's ("train: epochs must be
    # >= 0, batch_size and views_per_video >= 1", all three at once)
    ("train", {"patience": -1}, "train.patience must be >= 0"),
    ("train", {"schedule": "multistep", "milestones": [-5]}, "train.milestones must be epochs"),
    ("train", {"warmup_epochs": 40}, "train.warmup_epochs must be under epochs (30)"),
    ("train", {"model_config__perfex_cnn__train": {"batch_size": 0}},
     "train.model_config.perfex_cnn.train.batch_size must be >= 1, got 0"),
    ("retrain", {"models": ["perfex_cnn", "resnet34_face"]},
     "retrain.models: ['resnet34_face'] not in train.models"),
    ("base", {"device": "cuda"}, "base.device: unknown key"),
    ("base", {"log_level": "LOUD"}, "base.log_level"),
])
def test_a_mistake_no_stage_would_read_is_named(section, changes, named):
    with pytest.raises(ParamsError) as caught:
        check_params(_with(section, **changes))
    assert named in str(caught.value)


@pytest.mark.parametrize("section, named", [
    ("ingst", "ingst: unknown params.yaml section, read by no stage of dvc.yaml (did you mean "
              "'ingest'?)"),
    ("nosuch", "nosuch: unknown params.yaml section")])
def test_a_section_no_stage_reads_is_named(section, named):
    """A misspelt section is read by no stage: the run would quietly use the defaults."""
    params = {**copy.deepcopy(PARAMS), section: {"a": 1}}
    with pytest.raises(ParamsError) as caught:
        check_params(params)
    assert named in str(caught.value)


def test_every_section_is_some_stages_whole_dependency_or_checked_by_inputs():
    """Why checking sections suffices: a key inside a section is checked by the stage that
    depends on the whole section (DVC re-runs it on any change), or, for `base` and `train`,
    by inputs itself."""
    from stages.inputs import dvc_sections

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    whole = {entry for stage in stages.values() for entry in stage.get("do", stage).get(
        "params") or [] if isinstance(entry, str) and "." not in entry}
    assert set(PARAMS) == dvc_sections(REPO / "dvc.yaml")
    assert set(PARAMS) - whole <= {"base", "train"}


def test_a_models_own_source_options_merge_over_the_shared_ones():
    """DeepPersonality's CNN-LSTMs read one frame per segment of the whole clip: params.yaml
    gives them face_seq sampling `segments` (they read 6 consecutive frames, 0.75 s, before);
    the other face_seq models keep the shared options."""
    from models.train_params import TrainParams, for_model
    from personality.common import build_dataclass

    p = build_dataclass(TrainParams, PARAMS["train"], "train")
    for name in ("bimodal_lstm", "cnn_lstm_face_seq"):
        own, overrides = for_model(p, name)
        assert own.source_config["face_seq"] == {**PARAMS["train"]["source_config"]["face_seq"],
                                                 "sampling": "segments"}
        assert "source_config" not in overrides  # not a model config field
    assert "sampling" not in for_model(p, "vat_face_seq")[0].source_config["face_seq"]
    with pytest.raises(ParamsError, match=r"train.model_config.bimodal_lstm.source_config.*"
                                          r"samplng"):
        check_params(_with("train", model_config__bimodal_lstm__source_config={
            "face_seq": {"samplng": "segments"}}))
    # an input the model does not read: the options would change nothing (accepted silently)
    with pytest.raises(ParamsError, match=r"train.model_config.perfex_cnn.source_config.face_seq: "
                                          r"perfex_cnn reads no face_seq input \(its sources "
                                          r"take: aus, aus_mask\)"):
        check_params(_with("train", model_config__perfex_cnn__source_config={
            "face_seq": {"sampling": "segments"}}))


def test_epochs_zero_is_fine_for_scoring_a_checkpoint():
    check_params(_with("train", epochs=0, test_only=True))


def test_an_experiment_of_other_models_skips_retrain_rather_than_failing():
    check_params(_with("train", models=["resnet34_face"]))


@pytest.mark.parametrize("name, overrides, named", [
    ("functionals_ridge", {"bogus": 1}, "bogus"),
    ("functionals_ridge", {"alphas": "abc"}, "alphas must be numbers > 0"),
    ("functionals_gbt", {"max_trees": "many"}, "train.model_config.functionals_gbt"),
    ("audio_fn_linear", {"hiden": 16}, "unknown config key 'hiden'"),
])
def test_a_bad_model_config_is_one_error_naming_it(name, overrides, named):
    with pytest.raises(ParamsError) as caught:
        check_model_config(name, overrides)
    assert str(caught.value).startswith(f"train.model_config.{name}: ") and named in str(caught.value)


def test_checking_a_model_config_leaves_the_random_state_alone():
    import torch

    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    check_model_config("perfex_cnn", {})
    assert torch.equal(torch.rand(3), want)


# A training crop under the network's minimum length failed mid-training, after the data was
# read, in torch's pooling ("Output size is too small"); now the train stage refuses it first,
# naming the key, the value and the minimum.
@pytest.mark.parametrize("model, shared, own, config, named", [
    ("logmel_cnn", {"logmel": {"frames": 8}}, {}, {},
     "train.source_config.logmel.frames: 8 is under the 16 steps logmel_cnn takes"),
    ("bimodal_lstm", {"logmel": {"frames": 300}}, {"logmel": {"frames": 100}},
     {"width": 8, "audio_widths": [8, 16, 32], "time_pool": 4},
     "train.model_config.bimodal_lstm.source_config.logmel.frames: 100 is under the 174 steps"),
    ("audio_interpret_net", {"wave": {"samples": 3000}}, {}, {},
     "train.source_config.wave.samples: 3000 is under the 3660 steps audio_interpret_net"),
    ("audio_interpret_net", {}, {}, {"downsample": 60},  # 915 x 60 = 54,900 > 48,000
     "train.source_config.wave.samples (its default): 48000 is under the 54900 steps"),
    # a face crop per segment: 8 segments of a 6-frame clip failed in bimodal_lstm's features
    ("bimodal_lstm", {}, {"face_seq": {"sampling": "segments"}},
     {"width": 8, "audio_widths": [8, 16, 32], "time_pool": 4, "segments": 8},
     "train.source_config.face_seq.length (its default): 6 is under the 8 steps bimodal_lstm"),
    ("bimodal_lstm", {"face_seq": {"length": 8}}, {"face_seq": {"length": 4}}, {},
     "train.model_config.bimodal_lstm.source_config.face_seq.length: 4 is under the 6 steps"),
])
def test_a_training_crop_under_the_networks_minimum_is_refused_before_any_data(
        tmp_path, model, shared, own, config, named):
    from models.train_params import TrainParams
    from personality.common import BaseParams
    from stages.train import run

    p = TrainParams(models=[model], mlflow=False, source_config=shared,
                    model_config={model: {**config, "source_config": own} if own else config})
    with pytest.raises(ParamsError) as caught:  # tmp_path has no data: refused before reading
        run(p, BaseParams(), root=tmp_path)
    assert str(caught.value).startswith(named) and "min_lengths" in str(caught.value)


# vat_face_seq learns a position per frame up to max_len: a longer clip failed with its own
# ValueError at the first training batch, after the front-end's data was read
@pytest.mark.parametrize("shared, own, named", [
    ({"face_seq": {"length": 72}}, {}, "train.source_config.face_seq.length: 72 is over the 64 "),
    ({}, {"face_seq": {"length": 9}}, "train.model_config.vat_face_seq.source_config.face_seq."
                                      "length: 9 is over the 8 "),
])
def test_a_training_clip_over_the_networks_maximum_is_refused_before_any_data(
        tmp_path, shared, own, named):
    from models.train_params import TrainParams, check_model_config
    from personality.common import BaseParams
    from stages.train import run

    config = {"max_len": 8, "source_config": own} if own else {}
    p = TrainParams(models=["vat_face_seq"], mlflow=False, source_config=shared,
                    model_config={"vat_face_seq": config})
    with pytest.raises(ParamsError) as caught:  # tmp_path has no data: refused before reading
        run(p, BaseParams(), root=tmp_path)
    assert str(caught.value).startswith(named) and "max_lengths" in str(caught.value)
    at_most = TrainParams(models=["vat_face_seq"], source_config={"face_seq": {"length": 64}})
    check_model_config("vat_face_seq", {}, at_most)  # at the maximum: passes


def test_a_crop_at_the_minimum_passes_and_scoring_a_checkpoint_makes_no_crop():
    from models.train_params import TrainParams, check_model_config

    at = TrainParams(models=["logmel_cnn"], source_config={"logmel": {"frames": 16}})
    check_model_config("logmel_cnn", {}, at)
    short = TrainParams(models=["logmel_cnn"], source_config={"logmel": {"frames": 8}},
                        epochs=0, test_only=True)
    check_model_config("logmel_cnn", {}, short)  # test_only scores with the checkpoint's config


def test_the_repository_params_give_every_sequence_model_crops_it_takes():
    from models.train_params import TrainParams, check_model_config, for_model
    from personality.common import build_dataclass

    p = build_dataclass(TrainParams, PARAMS["train"], "train")
    for name in ("logmel_cnn", "bimodal_resnet", "bimodal_lstm", "crnet", "wave_resnet1d",
                 "audio_interpret_net", "cnn_lstm_face_seq", "r3d_face_seq", "vat_face_seq",
                 "slow_fast_face_seq", "tpn_face_seq", "perfex_cnn", "perfex_hybrid",
                 "spectrum_model"):
        check_model_config(name, for_model(p, name)[1], p)


def _repo_with(tmp_path: Path, params: dict) -> Path:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _stage(root: Path, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for inherited in ("DVC_ROOT", "PERSONALITY_LOG_LEVEL", "DVC_EXP_NAME",
                      "MLFLOW_TRACKING_URI"):  # mlflow.set_tracking_uri in this process sets it
        env.pop(inherited, None)
    return subprocess.Popen([sys.executable, *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=kw.pop("stderr", subprocess.PIPE),
                            **kw)


def test_the_inputs_stage_refuses_a_train_typo_in_one_line(tmp_path):
    root = _repo_with(tmp_path, _with("train", learning_rate=0.01))
    out, err = _stage(root, "-m", "stages.inputs").communicate(timeout=120)
    assert "train.learning_rate: unknown key" in err and "Traceback" not in err
    assert not (root / "data" / "inputs.json").exists()


STOPPED = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell ignores it
    from personality.common import load_base, get_logger, mlflow_run, stage_errors
    with stage_errors("demo"):
        load_base()
        get_logger("demo").info("shown only at INFO")
        with mlflow_run("demo", run_name="demo:stopped"):
            print("running", flush=True)
            time.sleep(60)
""")


def _runs(root: Path) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return [r.info.status for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="attributes.run_name = 'demo:stopped'")]


@pytest.mark.parametrize("sig, said", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_a_stopped_stage_unwinds_says_so_and_dies_of_the_signal(tmp_path, sig, said):
    """Its MLflow run is KILLED (SIGTERM left it RUNNING for ever); it dies of the signal, not
    with an exit code, so that a shell loop of stages stops on Ctrl-C."""
    root = _repo_with(tmp_path, PARAMS)
    with open(tmp_path / "stderr.txt", "w") as log:  # read after: a full pipe would block it
        proc = _stage(root, "-c", STOPPED, env={"MLFLOW_DISABLE_TELEMETRY": "true"}, stderr=log)
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == -sig, err
    assert f"demo: stopped ({said})" in err and "Traceback" not in err
    assert "sqlalchemy" not in err  # its INFO log (2,300 lines of mapper set-up) stays off
    assert "shown only at INFO" in err
    assert _runs(root) == ["KILLED"]


LOADING = textwrap.dedent("""
    import signal, time
    import torch
    from personality.common import stage_errors
    from models.batching import epoch_loader

    class Slow(torch.utils.data.Dataset):  # each item says how its worker takes SIGTERM
        def set_epoch(self, epoch): pass
        def __len__(self): return 100_000
        def __getitem__(self, i):
            time.sleep(0.02)
            ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            return {"x": torch.tensor([float(ignored)]), "target": torch.zeros(5)}

    with stage_errors("demo"):
        for batch in epoch_loader(Slow(), batch_size=2, epoch=0, seed=0, num_workers=2):
            print("ignored" if batch["x"].all() else "default", flush=True)
""")


def test_a_stage_stopped_with_its_loader_workers_says_so_once(tmp_path):
    """Ctrl-C or `kill -- -PGID` reaches the DataLoader workers too: one dying of it first made
    the stage fail with a "worker exited unexpectedly" traceback (about 1 run in 20 with
    train.num_workers > 0). Workers now ignore the signal, and the stage stops them."""
    root = _repo_with(tmp_path, PARAMS)
    for attempt in range(5):
        with open(tmp_path / "stderr.txt", "w") as log:
            proc = _stage(root, "-c", LOADING, stderr=log, start_new_session=True)
            assert proc.stdout.readline().strip() == "ignored"  # the workers' own disposition
            os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as a terminal or `kill --`
            proc.communicate(timeout=60)
        err = (tmp_path / "stderr.txt").read_text()
        assert proc.returncode == -signal.SIGTERM, err
        assert "demo: stopped (SIGTERM)" in err and "Traceback" not in err, err



EARLY = textwrap.dedent("""
    import time
    import torch
    import models.batching as batching
    from personality.common import stage_errors

    own = batching.leave_stopping_to_the_stage
    def late(worker_id):  # a loaded machine: worker 1 reaches its init after the stop
        time.sleep(3 * worker_id)
        own(worker_id)
    batching.leave_stopping_to_the_stage = late

    class Items(torch.utils.data.Dataset):
        def set_epoch(self, epoch): pass
        def __len__(self): return 100
        def __getitem__(self, i): return {"x": torch.zeros(1), "target": torch.zeros(5)}

    with stage_errors("demo"):
        for batch in batching.epoch_loader(Items(), batch_size=2, epoch=0, seed=0,
                                           num_workers=2):  # worker 0's first batch
            print("batch", flush=True)  # the test stops the group now: worker 1 is not set up
            time.sleep(5)
""")


def test_a_stop_before_the_loader_workers_set_up_kills_none_of_them(tmp_path):
    """A group SIGTERM that lands between the workers' fork and their worker_init_fn (a busy
    machine: 1 in 5 tries of the test above under CI load) killed a worker, and the stage's exit
    printed torch's "DataLoader worker ... is killed by signal: Terminated" traceback. The
    workers are forked with SIGTERM and SIGINT blocked, so a stop waits for their init to
    ignore it."""
    root = _repo_with(tmp_path, PARAMS)
    with open(tmp_path / "stderr.txt", "w") as log:
        proc = _stage(root, "-c", EARLY, stderr=log, start_new_session=True)
        assert proc.stdout.readline().strip() == "batch"
        os.killpg(proc.pid, signal.SIGTERM)  # from outside, as a terminal or `kill --`
        proc.communicate(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == -signal.SIGTERM, err
    assert "demo: stopped (SIGTERM)" in err and "Traceback" not in err, err

DROPPED = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from personality.common import atomic_dir, stage_errors

    class Closes:
        def __del__(self):  # where Python drops an exception: a DataLoader iterator's end
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)

    with stage_errors("demo"):
        with atomic_dir(Path(sys.argv[1]) / "out") as staging:
            (staging / "a.txt").write_text("a")
            Closes()
            print("went on", flush=True)
""")


def test_a_sigterm_python_drops_still_keeps_the_output_out(tmp_path):
    proc = _stage(tmp_path, "-c", DROPPED, str(tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert "demo: stopped (SIGTERM)" in err
    assert not (tmp_path / "out").exists()


def test_base_log_level_is_in_force(tmp_path):
    root = _repo_with(tmp_path, _with("base", log_level="WARNING"))
    quiet = textwrap.dedent("""
        from personality.common import load_base, get_logger
        load_base()
        get_logger("demo").info("hidden at WARNING")
        get_logger("demo").warning("shown at WARNING")
    """)
    out, err = _stage(root, "-c", quiet).communicate(timeout=60)
    assert "shown at WARNING" in err and "hidden at WARNING" not in err


def test_debug_is_the_projects_own_log_not_the_libraries(tmp_path):
    root = _repo_with(tmp_path, _with("base", log_level="DEBUG"))
    loud = textwrap.dedent("""
        import logging
        from personality.common import load_base, get_logger
        load_base()
        get_logger("demo").debug("ours at DEBUG")
        logging.getLogger("numba.core.ssa").debug("numba at DEBUG")
    """)
    out, err = _stage(root, "-c", loud).communicate(timeout=60)
    assert "ours at DEBUG" in err and "numba at DEBUG" not in err

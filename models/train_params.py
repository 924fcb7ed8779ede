"""params.yaml's `train` section: its dataclass, the per-model overrides, and the checks of what
no stage re-run would read.

    p = build_dataclass(TrainParams, params["train"], "train")   # every key and type checked
    check_train_params(p)            # model names, per-model train keys, source options
    p_for_x, overrides = for_model(p, "perfex_cnn")
    check_model_config("perfex_cnn", overrides)   # the model's own config fields, by building it
    check_model_config("logmel_cnn", overrides, p)   # ... and its training crops' lengths

Why here and not in stages/train.py: each train@<model> stage depends on single `train.*` keys
(dvc.yaml), so a key it does not list (a hand-edited `train.learning_rate`, a
`model_config.functionals_rigde`, a `source_config.facee`) re-runs nothing and would pass
unseen. The `inputs` stage, which runs first on every `dvc repro`, calls `check_train_params`;
stage modules may not import one another (tests/test_layering.py), so the checks live in models/.
"""
from __future__ import annotations

import dataclasses
import difflib

from models.solver import EngineError, Solver, TrainConfig
from personality.common import ParamsError, build_dataclass, frontend_differences

__all__ = ["TrainParams", "PER_MODEL_TRAIN_KEYS", "for_model", "check_train_params",
           "check_resumable_data",
           "check_model_config", "check_train_lengths", "retrained_models"]


@dataclasses.dataclass(frozen=True)
class TrainParams(TrainConfig):
    """params.yaml:train. The solver and run knobs (epochs, lr, ..., seed, device, amp, ...) are
    TrainConfig's (models/solver.py), declared and validated there, once; these are the stage's."""
    models: list[str] = dataclasses.field(
        default_factory=lambda: ["perfex_cnn", "perfex_hybrid"])  # registry names
    threads: int = 1  # torch CPU threads (0: torch's default); 1: comparable timings (scaling.md)
    resume: str = ""  # checkpoint to continue from ("" = start fresh)
    test_only: bool = False  # evaluate a checkpoint, no training
    weights: str = ""  # initial weights (a checkpoint or a bare state_dict)
    weights_strict: bool = True
    use_augmented: bool = True  # AU models: training views from data/augmented
    mlflow: bool = True  # log to MLflow (sqlite:///mlflow.db)
    model_config: dict = dataclasses.field(default_factory=dict)  # {name: {field: value}}
    source_config: dict = dataclasses.field(default_factory=dict)  # {sample key: {option: value}}

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except EngineError as exc:  # "train.lr must be positive, ..."
            raise ParamsError(f"train.{exc}") from None
        if self.epochs == 0 and not (self.test_only or self.resume):
            raise ParamsError("train.epochs: 0 trains nothing (the model would be scored "
                              "untrained); to score a checkpoint set train.test_only")
        if self.num_workers < 0:
            raise ParamsError(f"train.num_workers: {self.num_workers}; it must be >= 0 "
                              "(0: batches are made in the training process)")


# Solver params a model may set for itself under train.model_config.<name>.train (DeepPersonality
# keeps lr, epochs, batch size per model config): the fields of models.solver.Solver.
PER_MODEL_TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(Solver))


def for_model(p: TrainParams, name: str) -> tuple[TrainParams, dict]:
    """(train params with `model_config.<name>.train` applied and `model_config.<name>.
    source_config` merged over train.source_config, option by option; the model's config
    overrides). A model's own source options: DeepPersonality's bimodal LSTM reads one frame per
    segment of the whole clip where the other face_seq models read consecutive frames."""
    overrides = dict(p.model_config.get(name) or {})
    solver = overrides.pop("train", None) or {}
    sources = overrides.pop("source_config", None) or {}
    for key, value in (("train", solver), ("source_config", sources)):
        if not isinstance(value, dict):
            raise ParamsError(f"train.model_config.{name}.{key}: expected a mapping, got "
                              f"{value!r}")
    bad = sorted(set(solver) - set(PER_MODEL_TRAIN_KEYS))
    if bad:
        raise ParamsError(f"train.model_config.{name}.train.{bad[0]}: not a per-model train "
                          f"param (allowed: {', '.join(PER_MODEL_TRAIN_KEYS)})")
    if sources:
        solver = {**solver, "source_config": _merged_sources(p.source_config, sources, name)}
    if not solver:
        return p, overrides
    merged = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)} | solver
    try:
        return build_dataclass(TrainParams, merged, "train"), overrides
    except ParamsError as exc:  # named where the user wrote it
        raise ParamsError(str(exc).replace("train.", f"train.model_config.{name}.train.", 1)
                          ) from None


def _merged_sources(shared: dict, own: dict, name: str) -> dict:
    """train.source_config with a model's own entries merged over it, option by option; each
    entry checked against its source's options (a SourceError names it where it was written)."""
    from models.data import SourceError, check_source_options, source_keys
    from models.registry import model_spec

    read = source_keys(model_spec(name).inputs)
    merged = {key: dict(value or {}) for key, value in shared.items()}
    for key, options in own.items():
        if key not in read:  # it would change nothing: say so, as for a mistyped key
            raise ParamsError(f"train.model_config.{name}.source_config.{key}: {name} reads no "
                              f"{key} input (its sources take: {', '.join(read)})")
        if not isinstance(options, dict):
            raise ParamsError(f"train.model_config.{name}.source_config.{key}: expected a "
                              f"mapping, got {options!r}")
        merged[key] = {**merged.get(key, {}), **options}
    try:
        check_source_options(list(own), merged)
    except SourceError as exc:
        raise ParamsError(f"train.model_config.{name}.{exc}" if str(exc).startswith(
            "source_config") else f"train.model_config.{name}.source_config: {exc}") from None
    return merged


def check_train_params(p: TrainParams) -> None:
    """ParamsError naming the key, for: a name in train.models or train.model_config that is no
    registered model (the closest one suggested), a bad per-model train key or value, a
    train.source_config entry for no input source or with a bad option."""
    from models.data import SourceError, check_source_options
    from models.registry import list_models

    registered = sorted(m["name"] for m in list_models())
    for key, names in (("train.models", p.models), ("train.model_config", p.model_config)):
        for name in names:
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=1)
                raise ParamsError(f"{key}: {name!r} is not a registered model ("
                                  + (f"did you mean {close[0]!r}? " if close else "")
                                  + "`python -m models` lists them)")
    for name in p.model_config:
        if not isinstance(p.model_config[name] or {}, dict):
            raise ParamsError(f"train.model_config.{name}: expected a mapping, got "
                              f"{p.model_config[name]!r}")
        for_model(p, name)
    try:
        check_source_options(list(p.source_config), p.source_config)
    except SourceError as exc:
        raise ParamsError(f"train.{exc}" if str(exc).startswith("source_config")
                          else f"train.source_config: {exc}") from None


def check_model_config(name: str, overrides: dict, p: TrainParams | None = None) -> None:
    """Build model `name` with `overrides` once, the global RNG state kept (the training's own
    build is seeded later): an unknown field or a bad value is a ParamsError naming
    train.model_config.<name> before any data is read, not a traceback after. With the train
    params `p` (unless test_only: no training view is made), the training crops are checked
    against the network's minimum input lengths too (check_train_lengths)."""
    import torch

    from models.registry import build_model

    with torch.random.fork_rng(devices=[]):
        try:
            model = build_model(name, **overrides)
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"train.model_config.{name}: {exc}") from None
    if p is not None and not p.test_only:
        check_train_lengths(name, model, p)


def check_train_lengths(name: str, model, p: TrainParams) -> None:
    """ParamsError naming the key, its value and the minimum when a training view of `model`
    (a log-mel crop of `frames` steps, a wave crop of `samples`, a face clip of `length` frames)
    is shorter than the network takes (models/inference.py, min_lengths): its pooling would fail
    mid-training with torch's "Output size is too small" (bimodal_lstm's segments with its own
    ValueError), or longer than it takes at most (max_lengths: vat_face_seq's `max_len`).
    Inference pads a short log-mel or wave (pad_short); training does not, as a crop is the
    length params ask for, not the clip's."""
    from models.data import train_lengths
    from models.inference import max_lengths, min_lengths

    need, most = min_lengths(model), max_lengths(model)  # {key: fewest steps}, {key: most}
    merged = for_model(p, name)[0].source_config  # the model's own options over the shared ones
    for key, (option, value) in train_lengths([*need, *most], merged).items():
        if value < need.get(key, 0):
            raise ParamsError(
                f"{_source_key(p, name, key, option)}: {value} is under the {need[key]} steps "
                f"{name} takes at least (fewer fail inside it: min_lengths); give {option} >= "
                f"{need[key]} or a model config that needs fewer")
        if key in most and value > most[key]:
            raise ParamsError(
                f"{_source_key(p, name, key, option)}: {value} is over the {most[key]} steps "
                f"{name} takes at most (max_lengths); give {option} <= {most[key]} or a model "
                "config that takes more")


def _source_key(p: TrainParams, name: str, key: str, option: str) -> str:
    """Where params.yaml sets source option `option` of `key` for model `name`: the model's own
    source_config, the shared one, or neither (the source's default)."""
    own = ((p.model_config.get(name) or {}).get("source_config") or {}).get(key) or {}
    if option in own:
        return f"train.model_config.{name}.source_config.{key}.{option}"
    shared = f"train.source_config.{key}.{option}"
    return shared if option in (p.source_config.get(key) or {}) else f"{shared} (its default)"


def retrained_models(retrain_models: list[str], trained: list[str] | None) -> list[str]:
    """The models of retrain.models that this experiment trains (`trained`: train.models; None:
    all): every one, or none (an experiment of other models, make zoo's, skips retrain). Only
    some is a mistake, a ParamsError: the inputs stage says so before any training, not the
    retrain stage after it."""
    names = [m for m in retrain_models if trained is None or m in trained]
    if names and len(names) < len(retrain_models):
        raise ParamsError(f"retrain.models: {sorted(set(retrain_models) - set(names))} not in "
                          f"train.models {trained}: train them too, or leave them out")
    return names


# what a resumed run must share with the run it continues, beyond what the engine's restored
# optimizer and schedule check (models/engine.py _check_resumable): the weights' start, the data
RESUMED_PARAMS = ("seed", "use_augmented", "model_config")


def check_resumable_data(prior: dict, meta: dict, path) -> None:
    """EngineError naming `path` when resume_differences finds any."""
    if differ := resume_differences(prior, meta):
        raise EngineError(f"{path}: resume continues its run, which had {'; '.join(differ[:4])}"
                          ": set them back, or start a new run from its weights (train.weights)")


def resume_differences(prior: dict, meta: dict) -> list[str]:
    """What the checkpoint a run resumes (`prior`) was trained with that this run (`meta`, the
    train stage's checkpoint fields) would not: the seed, the augmented views, the model's
    config, the front-end params and the sources' fitted config (the data read). Each would
    train the resumed epochs on other terms while the checkpoint records only the new ones, as
    if the whole run had them. [] when they agree, or the checkpoint does not say."""
    old, new = prior.get("params") or {}, meta["params"]
    out = [f"train.{k}: {old[k]!r} (the checkpoint's) against {new.get(k)!r}"
           for k in RESUMED_PARAMS if k in old and old[k] != new.get(k)]
    out += frontend_differences(prior["frontend"], meta["frontend"]) if "frontend" in prior \
        else []
    stored, here = prior.get("source_config"), meta["source_config"]
    if stored is not None and stored != here:
        keys = sorted(k for k in {*stored, *here} if stored.get(k) != here.get(k))
        out.append(f"source_config: {', '.join(keys)} (the sources' options or the statistics "
                   "fitted on the training data) differ")
    return out

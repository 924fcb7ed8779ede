"""The model registry: every architecture is selectable by name from params.yaml.

    from models import list_models, build_model

    list_models()                      # [{"name": "perfex_cnn", "modality": "au", "inputs": [...],
                                       #   "source": ..., "card": ...}, ...]
    model = build_model("perfex_hybrid", head="regression", lstm_hidden=64)

Registering a model (in its own module under models/, then listed in `_BUILTIN_MODULES`):

    @register("resnet18_face", modality="visual", inputs=("face",),
              source="DeepPersonality", card="ResNet-18 on aligned face crops, frame-averaged")
    def resnet18_face(**config) -> nn.Module: ...

The factory takes keyword arguments only (the model's config fields) and returns an `nn.Module` that
follows the one protocol the training engine relies on:

    outputs = model(batch)              # batch: dict of tensors keyed by sample keys (below)
    loss = model.loss(outputs, targets) # targets: (B, 5) scores in [0, 1], NaN = unlabelled
    scores = model.decode(outputs)      # (B, 5) in [0, 1]
    scores = model.predict(batch)       # decode(model(batch))

`inputs` names the sample keys the model reads from `batch`, so that data loading builds only those
(see `SAMPLE_KEYS`). Modules register themselves at import; this module imports them lazily on the
first lookup, so `import models.registry` stays cheap and free of cycles.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # torch is only needed by the factories themselves
    from torch import nn

__all__ = ["ModelSpec", "MODALITIES", "SAMPLE_KEYS", "register", "list_models", "model_spec",
           "build_model"]

MODALITIES = ("au", "visual", "audio", "audio-visual")

# The sample keys data loading knows how to build (documentation, not enforced: a new key is fine,
# as long as the loader learns it too).
SAMPLE_KEYS = {
    "aus": "(B, T, 17) float: OpenFace AU intensities (AU01_r ... AU45_r), zero-padded",
    "aus_mask": "(B, T) bool: True on real time steps, a prefix per row",
    "face": "(B, 3, H, W) uint8 from the sources: one aligned face crop per sample; float once "
            "ImageNet-normalised (models.batching.to_device and the models do it)",
    "face_seq": "(B, T, 3, H, W) uint8 from the sources: a clip of T aligned face crops; float "
                "once ImageNet-normalised",
    "frame": "(B, 3, H, W) uint8 from the sources: one full frame per sample; float once "
             "ImageNet-normalised",
    "logmel": "(B, n_mels, T) float: log-mel spectrogram, standardised per band (train split)",
    "wave": "(B, S) float: 16 kHz mono wave in [-1, 1]",
    "audio_fn": "(B, F) float: per-video audio functionals (fn_*), standardised (train split)",
    "functionals": "(B, F) float: per-video AU / head / blink / audio functionals "
                   "(data/functionals), standardised (train split)",
}

# Modules whose import registers models. Add yours here.
_BUILTIN_MODULES = ("models.perfex", "models.visual", "models.audio", "models.audiovisual",
                    "models.classical", "models.swin", "models.interpret", "models.video",
                    "models.spectral", "models.facenets")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    modality: str
    inputs: tuple[str, ...]
    source: str
    card: str

    def as_dict(self) -> dict:
        return {"name": self.name, "modality": self.modality, "inputs": list(self.inputs),
                "source": self.source, "card": self.card.strip().splitlines()[0]}


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register(name: str, *, modality: str, inputs: str | Sequence[str], source: str,
             card: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a keyword-only factory under `name`. Returns the factory unchanged.

    modality: one of MODALITIES. inputs: the sample key(s) the model reads. source: where the
    architecture comes from (paper / codebase). card: one line on what it is.
    """
    if not name or not name.isidentifier():
        raise ValueError(f"model name {name!r} must be a non-empty identifier")
    if modality not in MODALITIES:
        raise ValueError(f"model {name}: modality {modality!r} is not one of {', '.join(MODALITIES)}")
    keys = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if not keys or not all(isinstance(k, str) and k.isidentifier() for k in keys):
        raise ValueError(f"model {name}: inputs must be sample key names, got {inputs!r}")
    if not card or not card.strip():
        raise ValueError(f"model {name}: card must be a one-line description")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        prior = _REGISTRY.get(name)
        # the same function re-registered (a module reload) replaces itself; another one is a clash
        if prior is not None and (prior.factory.__module__, prior.factory.__qualname__) != (
                factory.__module__, factory.__qualname__):
            raise ValueError(f"model {name!r} is already registered "
                             f"(by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = ModelSpec(name, factory, modality, keys, source, card)
        return factory

    return decorator


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _LOADED = True


def list_models(*, modality: str | None = None) -> list[dict]:
    """All registered models as dicts (name, modality, inputs, source, card), sorted by name."""
    _load_builtin()
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
    return [spec.as_dict() for _, spec in sorted(_REGISTRY.items())
            if modality is None or spec.modality == modality]


def model_spec(name: str) -> ModelSpec:
    """The registration of `name`; ValueError listing the known names when there is none."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def build_model(name: str, **config) -> nn.Module:
    """Build model `name` with its config fields as keyword arguments (unknown key -> ValueError)."""
    return model_spec(name).factory(**config)

"""Architectures, their registry, losses, the training engine and metrics.

    from models import list_models, build_model
    model = build_model("perfex_cnn", head="classification")

`list_models` / `build_model` are resolved lazily (PEP 562), so `from models import metrics`, which
is pure numpy, does not pay for importing torch.
"""
from __future__ import annotations

__all__ = ["build_model", "list_models"]


def __getattr__(name: str):
    if name in __all__:
        from models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")

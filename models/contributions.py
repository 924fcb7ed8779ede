"""Each input feature's share of each trait for one clip: the "contributions" kind of predict's
explanations (models/explain.py, whose docstring says what each method means and costs).

    from models.contributions import feature_contributions
    part = feature_contributions(model, views, "aus", list(AU_INTENSITY))
    part["method"], part["values"]          # "integrated_gradients", (17, 5)

`views` are one clip's eval views ({key: (V, ...)}, models.explain.clip_views). Linear models get
coefficient x value, differentiable ones integrated gradients from the all-zero input; occlusion
(each feature at 0 in turn) stands in where the model is not differentiable (trees), declares them
unsuitable (`ig_unsuitable`, a reason: spectrum_model) or their sum misses a tenth of a trait's
score(x) - score(0); the entry's `method`, `instead_of` and `why` say so.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.data import InputSource
from models.explain import N_TRAITS, predict_views
from personality.explain_plots import UNACCOUNTED_SHARE, unaccounted_share
from personality.schemas import AU_INTENSITY, TRAIT_NAMES, TRAITS

__all__ = ["linear_terms", "integrated_gradients", "occlusion", "feature_contributions",
           "feature_names", "IG_RETRY"]

IG_RETRY = 4  # integrated gradients that leave UNACCOUNTED_SHARE out are run again with 4x steps


def linear_terms(model: nn.Module, key: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(W (F, 5), b (5,), units) of a model linear in views[key] (in `model.linear_input(x)`
    where it has one: the ridge's clipped z-scores), or None: functionals_ridge
    (units "score", before the clip to [0, 1]), audio_fn_linear with hidden=0 ("logit": before
    its sigmoid; "score" for the unbounded regression_z head)."""
    from models.audio import AudioFnMLP
    from models.classical import FunctionalsRidge

    if isinstance(model, FunctionalsRidge) and key == "functionals":
        return model.weight.double().cpu().numpy(), model.bias.double().cpu().numpy(), "score"
    if isinstance(model, AudioFnMLP) and key == "audio_fn" and model.config.hidden == 0:
        linear = next(m for m in model.head.mlp if isinstance(m, nn.Linear))
        units = "logit" if getattr(model.head, "bounded", False) else "score"
        return (linear.weight.detach().double().T.cpu().numpy(),
                linear.bias.detach().double().cpu().numpy(), units)
    return None


def _repeat(views: Mapping[str, Tensor], v: int, n: int) -> dict[str, Tensor]:
    """View v of every key, repeated n times: {key: (n, ...)}."""
    return {k: t[v:v + 1].expand(n, *t.shape[1:]).clone() for k, t in views.items()}


def integrated_gradients(model: nn.Module, views: Mapping[str, Tensor], key: str, *,
                         steps: int = 32) -> tuple[np.ndarray, np.ndarray] | None:
    """Integrated gradients of the 5 decoded scores w.r.t. views[key] from the all-zero input,
    mean over views: ((*shape, 5) attributions, (5,) score of the zero input); None when the
    output does not depend differentiably on the input (trees)."""
    model.eval()
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule
    x_all = views[key].float()  # (V, *shape)
    total, zero_scores = torch.zeros(*x_all.shape[1:], N_TRAITS), torch.zeros(N_TRAITS)
    for v in range(len(x_all)):
        batch = _repeat(views, v, steps + 1)
        path = alphas.view(-1, *[1] * (x_all.ndim - 1)) * x_all[v:v + 1]  # (steps, *shape)
        x = torch.cat([path, torch.zeros_like(x_all[v:v + 1])]).requires_grad_(True)
        with torch.enable_grad():
            scores = model.decode(model({**batch, key: x})).float()  # (steps + 1, 5)
            if not scores.requires_grad:
                return None
            for k in range(N_TRAITS):
                g, = torch.autograd.grad(scores[:steps, k].sum(), x, retain_graph=True)
                total[..., k] += (g[:steps].mean(dim=0) * x_all[v]).detach()
        zero_scores += scores[steps].detach()
    return (total / len(x_all)).numpy(), (zero_scores / len(x_all)).numpy()


def occlusion(model: nn.Module, views: Mapping[str, Tensor], key: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """score(x) - score(x with feature f at 0, along every other axis), per feature f of the last
    axis of views[key]: ((F, 5), score(x) (5,), score of the all-zero input (5,))."""
    x = views[key]  # (V, ..., F)
    n_feat = x.shape[-1]
    table = {"clip": dict(views), "zero": {**views, key: torch.zeros_like(x)}}
    for f in range(n_feat):
        xf = x.clone()
        xf[..., f] = 0
        table[f"f{f}"] = {**views, key: xf}
    preds = predict_views(model, table)  # (2 + F, 5)
    return preds[0][None] - preds[2:], preds[0], preds[1]


def _occlusion_part(model: nn.Module, views: Mapping[str, Tensor], key: str,
                    names: Sequence[str], why: str) -> dict:
    """Occlusion as a contributions entry, with how far its sum is from score(x) - score(0)
    (features that act together: their joint effect is in no single one's number)."""
    values, score, zero_score = occlusion(model, views, key)
    return {"method": "occlusion", "features": list(names), "values": values, "units": "score",
            "baseline_score": zero_score, "completeness_gap": score - zero_score - values.sum(0),
            "instead_of": "integrated_gradients", "why": why}


def _ig_part(model: nn.Module, views: Mapping[str, Tensor], key: str, names: Sequence[str],
             steps: int) -> dict | None:
    """Integrated gradients as a contributions entry; None where the score is not
    differentiable in the input."""
    ig = integrated_gradients(model, views, key, steps=steps)
    if ig is None:
        return None
    attr, zero_score = ig  # (*shape, 5), (5,)
    values = attr.reshape(-1, attr.shape[-2], N_TRAITS).sum(axis=0)  # over time: (F, 5)
    score = predict_views(model, {"clip": dict(views)})[0]
    return {"method": "integrated_gradients", "features": list(names), "values": values,
            "units": "score", "ig_steps": steps, "baseline_score": zero_score,
            "completeness_gap": score - zero_score - values.sum(axis=0)}


def _left_out(part: dict) -> float:
    """The largest share over traits of score(x) - score(0) that an entry's values leave out."""
    share = unaccounted_share(part["values"], part["completeness_gap"])  # (5,)
    return float(np.nanmax(share)) if np.isfinite(share).any() else 0.0


def _why_not(part: dict) -> str:
    """What integrated gradients left out, for the entry that replaces them."""
    share = unaccounted_share(part["values"], part["completeness_gap"])  # (5,)
    k = int(np.nanargmax(share))
    return (f"with {part['ig_steps']} steps they left {share[k]:.0%} of the "
            f"{TRAIT_NAMES[TRAITS[k]]} score change out")


def feature_contributions(model: nn.Module, views: Mapping[str, Tensor], key: str,
                          names: Sequence[str], *, ig_steps: int = 32) -> dict:
    """Each feature's contribution to each trait for one clip (module docstring):
    {"method", "features", "values": (F, 5), "units", ...}. Occlusion stands in for integrated
    gradients where the model is not differentiable, says they do not suit it
    (`ig_unsuitable`: why), or they leave UNACCOUNTED_SHARE of a trait's score change out even
    with IG_RETRY x the steps and occlusion leaves less; `why` says which (and
    `ig_completeness_gap` what they left out)."""
    x = views[key].double()  # (V, F) or (V, T, F)
    terms = linear_terms(model, key)
    if terms is not None:
        w, b, units = terms
        x = model.linear_input(x) if hasattr(model, "linear_input") else x  # the ridge's clip
        values = (x.mean(dim=0).numpy()[:, None] * w)  # (F, 5); V = 1 for vector sources
        return {"method": "linear", "features": list(names), "values": values, "units": units,
                "intercept": b, "raw_output": values.sum(axis=0) + b}
    unsuitable = getattr(model, "ig_unsuitable", "")
    part = None if unsuitable else _ig_part(model, views, key, names, ig_steps)
    if part is None:
        return _occlusion_part(model, views, key, names, unsuitable or
                               "the score is not differentiable in its input")
    if _left_out(part) >= UNACCOUNTED_SHARE:
        # a curved path that the midpoint sum cuts short (perfex_hybrid on a trait its clip
        # hardly moves) closes with more steps; a blind spot of the path does not
        part = _ig_part(model, views, key, names, ig_steps * IG_RETRY)
    if _left_out(part) < UNACCOUNTED_SHARE:
        return part
    occluded = _occlusion_part(model, views, key, names, _why_not(part))
    if _left_out(occluded) >= _left_out(part):  # features that act only together (an LSTM's)
        return part  # the report names the gap
    return {**occluded, "ig_completeness_gap": part["completeness_gap"]}


def feature_names(sources: Sequence[InputSource], key: str, n: int) -> list[str]:
    """The names of the last axis of `key`: AU channels, or the source's column list."""
    if key == "aus":
        return list(AU_INTENSITY)[:n]
    src = next((s for s in sources if key in s.keys), None)
    names = list(getattr(src, "columns", []) or [])
    return names if len(names) == n else [f"{key}_{i}" for i in range(n)]

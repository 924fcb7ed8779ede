"""Why a model scores one clip as it does: the per-clip explanations that `predict` draws.

    from models.explain import explain_clip
    explanation, images = explain_clip(model, sources, "clip_01", hop_s=0.01, sr=16000)
    explanation["gradcam"]["face"]["maps"]                 # (5, h, w): per trait, clip average
    explanation["audio_occlusion"]["logmel"]["delta"]      # (5, n_seconds)
    explanation["contributions"]["functionals"]["values"]  # (F, 5)

`sources` are the model's input sources built for the clip (models.data.build_sources), exactly
as predict builds them; every explanation is computed on the views the model scores (the
engine's eval views). One kind per input key the model reads, so an audio-visual model gets two:

- "gradcam" (face, frame, face_seq): Grad-CAM (Selvaraju et al. 2017) of each trait's decoded
  score. The layer is found from the module tree, not named per model: the module whose output is
  the last spatial map (4D, or 5D for 3D convolutions) computed from the image input, with both
  sides >= `cam_min_side` (4: a 2 x 2 map of a 64 px crop says little); a map laid out channels
  last, (N, h, w, C) as swin_face keeps it, is told by its sides (the image's aspect ratio) and
  turned channels first. Its channels are weighted
  by the spatially averaged gradient, summed, ReLU'd, and averaged over the clip's crops (and the
  frames of a face_seq clip). A model whose pathways reach the head side by side declares them
  (`cam_pathways`; slow_fast_face_seq: "slow", "fast"): the last such map of each is read (at
  64 px "slow.2 + fast.2", 4 x 4), and their terms, each channel weighted by its summed gradient
  so that Slow's T / alpha frames and Fast's T weigh alike, are added before the ReLU; the last
  map of all was a Fast-to-Slow lateral conv (or the Fast stage alone), which leaves Slow out.
  hrnet_face declares its last stage's branches ("stages.2.0 + stages.2.1 + stages.2.2", 16, 8
  and 4 px at 64 px): terms of different sizes are added on the finest grid, a coarse cell's
  share split over the cells it covers (until 2026-12-06 the coarsest branch alone was read). A
  model with its own `cam(x) -> (B, 5, h, w)` method is asked instead. Every kind explains the
  inputs as scored: an input under the network's minimum padded as models/inference.py pads it. `maps` are in the layer's
  resolution; the report upsamples them onto the model's input crop (`images[key]`, the middle
  view, de-normalised). Each map is relative: draw it normalised.
- "audio_occlusion" (logmel, wave): every `window_s` second of the clip in turn is muted: its
  log-mel frames set to the log-mel of digital silence (stages/audio.py: power_to_db re 1.0 with
  librosa's amin 1e-10 gives -100 dB, standardised with the checkpoint's band statistics) or its
  wave samples to 0; `delta` = score(clip) - score(clip with that second muted): positive = that
  second raised the trait. `baseline="mean"` uses the training mean instead (0 after
  standardisation). Silence is the default because muting is what "this second" means for a
  voice, and because a second that is already silent then moves nothing. Seconds outside the
  model's view (logmel `eval_mode: centre` sees the centre 3 s) are NaN; `seen` says which.
- "contributions" (aus, functionals, audio_fn; models/contributions.py): each input feature's
  share of each trait. Linear models (functionals_ridge; audio_fn_linear with hidden=0):
  coefficient x standardised value, which sums to the raw output minus the intercept (`units`:
  "score", or "logit" before audio_fn_linear's sigmoid). Other differentiable models: integrated
  gradients (Sundararajan et al. 2017) from the all-zero input (the train mean of standardised
  features; the neutral AU intensity), `ig_steps` midpoint steps, summed over time for AU
  sequences; they sum to score(x) - score(0) (`baseline_score`, `completeness_gap`). Occlusion,
  score(x) - score(x with that feature at 0 at every step), stands in for them (`method`
  "occlusion", `instead_of`, `why`; its own `baseline_score` and `completeness_gap`: features
  that act only together) where the model is not differentiable (functionals_gbt's trees), where
  it says they do not suit it (`ig_unsuitable`: spectrum_model, whose Fourier phase is the same
  all along the path from 0, so they left ~10x their sum out; each AU is its own there until
  the linear head, so occlusion sums to the change up to the sigmoid's curvature), or where they
  leave a tenth of some trait's score(x) - score(0) out (personality/explain_plots.py:
  UNACCOUNTED_SHARE, the share the report names) even when run again with 4x the steps (a
  curved path closes so: the default perfex_hybrid on some clips, `ig_steps` 128) and occlusion
  leaves less out (`ig_completeness_gap` keeps theirs); else they stay, their gap named.

Cost on a 10 s clip (data/videos/syn_0020.mp4, the default models' checkpoints), one torch
thread, measured with bench/explain_cost.py on the 2-core machine at rest (load average 0.5,
2026-12-05): functionals_ridge and audio_fn_linear 0.003 s, logmel_cnn (10 muted seconds)
0.008 s, hrnet_face (Grad-CAM, 10 crops) 0.018 s, functionals_gbt (occlusion of its
functionals) 0.037 s, bimodal_resnet (Grad-CAM + occlusion) 0.074 s, perfex_cnn (integrated
gradients, 32 steps) 0.17 s, perfex_hybrid 0.31 s (about 5 x that on a clip where 32 steps leave
a tenth out and 128 run). Under a load average of ~10 the same ran 4-10x slower (0.01-1.2 s).
The plain prediction takes 0.000-0.010 s, the front-end before it (frames, faces,
aus, audio) several seconds. `--no-explain` skips it all.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.batching import merge_views, normalise_image_keys
from models.data import InputSource, SourceError
from models.batching import IMAGENET_MEAN, IMAGENET_STD
from models.engine import predict_videos
from models.inference import min_lengths, pad_short
from personality.schemas import TRAITS

__all__ = ["ExplainError", "explain_clip", "clip_views", "predict_views", "cam_layer", "gradcam",
           "audio_occlusion", "SILENCE_DB", "IMAGE_KEYS", "AUDIO_KEYS", "FEATURE_KEYS"]

IMAGE_KEYS = ("face", "frame", "face_seq")
AUDIO_KEYS = ("logmel", "wave")
FEATURE_KEYS = ("aus", "functionals", "audio_fn")
# stages/audio.py: librosa.power_to_db(mel, ref=1.0, top_db=None) with librosa's default
# amin = 1e-10, so a band with no energy at all is 10 * log10(1e-10) dB
SILENCE_DB = -100.0
N_TRAITS = len(TRAITS)
OCCLUSION_BATCH = 256  # views (muted windows x the clip's V) held and scored at once


class ExplainError(SourceError):
    """An explanation that cannot be computed for this model or input (one line in predict)."""


# --------------------------------------------------------------------------------------------------
# views and predictions


class _Views(InputSource):
    """Serves fixed eval views per id: perturbed copies of a clip go through the engine's own
    batching and view averaging (models.engine.predict_videos)."""

    def __init__(self, views: Mapping[str, Mapping[str, Tensor]]):
        self.views = views
        self.keys = tuple(next(iter(views.values())).keys()) if views else ()

    def eval_items(self, video_id: str) -> dict[str, Tensor]:
        return dict(self.views[video_id])

    def fitted_config(self) -> dict[str, dict]:
        return {}


def clip_views(sources: Sequence[InputSource], video_id: str) -> dict[str, Tensor]:
    """The eval views of one clip, every source merged: {key: (V, ...)}, images normalised (float:
    Grad-CAM differentiates through them and `model.cam` takes them without the forward's hook)."""
    return normalise_image_keys(merge_views([s.eval_items(video_id) for s in sources], video_id))


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def predict_views(model: nn.Module, views: Mapping[str, Mapping[str, Tensor]], *,
                  batch_size: int = 256) -> np.ndarray:
    """Scores of each entry of `views` ({id: {key: (V, ...)}}), averaged over its V views, in
    the order of `views`: (n, 5)."""
    ids = list(views)
    return predict_videos(model, [_Views(views)], ids, batch_size=batch_size,
                          device=_device(model))


# --------------------------------------------------------------------------------------------------
# Grad-CAM


def _fits(h: int, w: int, image_hw: Sequence[int]) -> bool:
    """Could (h, w) be a map of an image of image_hw: no larger, about its aspect ratio."""
    H, W = image_hw
    return 0 < h <= H and 0 < w <= W and abs(h / w - H / W) <= 0.25 * H / W


def _channels_last(shape: Sequence[int], image_hw: Sequence[int]) -> bool:
    """A 4D map laid out (N, h, w, C) (Swin's blocks and final norm), not (N, C, h, w): its last
    two sides do not look like the image's, its middle two do."""
    return len(shape) == 4 and not _fits(shape[2], shape[3], image_hw) and \
        _fits(shape[1], shape[2], image_hw)


def _spatial(out: Any, min_side: int, image_hw: Sequence[int]) -> bool:
    if not (isinstance(out, Tensor) and out.ndim in (4, 5) and out.requires_grad):
        return False
    sides = out.shape[1:3] if _channels_last(out.shape, image_hw) else out.shape[-2:]
    return min(sides) >= min_side


def _cam_layers(model: nn.Module, views: Mapping[str, Tensor], key: str, *,
                min_side: int) -> list[str]:
    """Names of the modules Grad-CAM reads (see cam_layer): one, or one per pathway of a model
    that declares `cam_pathways`."""
    found: list[str] = []
    hw = tuple(views[key].shape[-2:])
    handles = [m.register_forward_hook(
        lambda _m, _i, out, name=name: found.append(name) if _spatial(out, min_side, hw) else None)
        for name, m in model.named_modules() if name]
    params = [p for p in model.parameters() if p.requires_grad]
    x = views[key].detach().clone().requires_grad_(True)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            model({**views, key: x})
    finally:
        for p in params:
            p.requires_grad_(True)
        for h in handles:
            h.remove()
    pathways = getattr(model, "cam_pathways", None) or ("",)
    layers = [next((n for n in reversed(found) if not way or n == way or
                    n.startswith(way + ".")), None) for way in pathways]
    if None in layers:
        where = f" in pathway {pathways[layers.index(None)]!r}" if pathways != ("",) else ""
        raise ExplainError(f"{type(model).__name__}: no layer{where} keeps a spatial map of at "
                           f"least {min_side} x {min_side} from input {key!r}; no Grad-CAM")
    return layers


def cam_layer(model: nn.Module, views: Mapping[str, Tensor], key: str, *,
              min_side: int = 4) -> str:
    """Name of the module whose output is the last spatial map (ndim 4 or 5, both spatial sides
    >= min_side) computed from views[key], in the order modules finish their forward: a residual
    stage counts after its blocks, so its output (identity path included) is chosen over a conv
    inside it, and a branch that does not see the image (bimodal_resnet's log-mel CNN) is never
    chosen. Found by one forward with only the image requiring gradients.

    A model whose pathways reach the head side by side (SlowFast's Slow and Fast) names their
    submodules in `cam_pathways`; the last such map of each is taken and the names are joined by
    " + " ("slow.2 + fast.2"). Together they are a cut: every path from the image to the score
    crosses one of them, where the last map of all (a Fast-to-Slow lateral conv, or the Fast
    stage) leaves the other pathway out."""
    return " + ".join(_cam_layers(model, views, key, min_side=min_side))


def _cam(a: Tensor, g: Tensor) -> Tensor:
    """Grad-CAM of activations a and their gradients g, (N, C, h, w) or (N, C, T, h, w) ->
    (N, h, w): channels weighted by the mean gradient, summed, ReLU (time averaged for 3D)."""
    dims = tuple(range(2, a.ndim))
    w = g.mean(dim=dims, keepdim=True)  # (N, C, 1, 1[, 1])
    cam = F.relu((w * a).sum(dim=1))  # (N, h, w) or (N, T, h, w)
    return cam.mean(dim=1) if cam.ndim == 4 else cam


def _cam_term(a: Tensor, g: Tensor) -> Tensor:
    """One pathway's part of a joint Grad-CAM, before the ReLU: (N, C, [T,] h, w) -> (N, h, w).
    Channels are weighted by their *summed* gradient (d score / d channel mean, whatever the
    pathway's frame count: the Slow pathway has T / alpha frames, the Fast one T), times the
    channel's mean over time, over h * w: each position's first-order share of the score, in the
    same units for every pathway, so the pathways' terms can be added."""
    dims = tuple(range(2, a.ndim))
    w = g.sum(dim=dims, keepdim=True)  # (N, C, 1, 1[, 1])
    term = (w * a).sum(dim=1)  # (N, [T,] h, w)
    term = term.mean(dim=1) if term.ndim == 4 else term  # (N, h, w)
    return term / (term.shape[-2] * term.shape[-1])


def _joint_cam(acts: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """Grad-CAM over one layer (_cam) or several pathways' (their terms added, then ReLU):
    (N, h, w), on the finest pathway's grid: a coarser term (HRNet's lower branches) is spread
    over it, each cell's share split evenly among the cells it covers (its total kept)."""
    if len(acts) == 1:
        return _cam(acts[0], grads[0])
    terms = [_cam_term(a, g) for a, g in zip(acts, grads)]  # each (N, h_i, w_i)
    h, w = max(t.shape[-2] for t in terms), max(t.shape[-1] for t in terms)
    return F.relu(sum(F.interpolate(t[:, None], size=(h, w), mode="nearest")[:, 0]
                      * (t.shape[-2] * t.shape[-1] / (h * w)) for t in terms))


def gradcam(model: nn.Module, views: Mapping[str, Tensor], key: str, *,
            min_side: int = 4) -> tuple[np.ndarray, str]:
    """Per-trait Grad-CAM over the views of views[key] ((V, 3, H, W) or (V, T, 3, H, W)):
    ((5, h, w) mean over views and frames, the layer's name, "a + b" for pathways)."""
    model.eval()
    views = dict(views)
    if hasattr(model, "cam"):  # the model's own class activation maps
        with torch.no_grad():
            maps = model.cam(views).float()  # (V, 5, h, w): cam reads views[key] itself
        return maps.mean(dim=0).cpu().numpy(), "model.cam"
    names = _cam_layers(model, views, key, min_side=min_side)
    modules = dict(model.named_modules())
    acts: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: acts[n].append(out))
               for n in names]
    try:
        with torch.enable_grad():
            scores = model.decode(model(views))  # (V, 5)
            # the last call: the map the head reads (a module run per frame counts once)
            a = [acts[n][-1] for n in names]
            # channels first for _cam: a (N, h, w, C) map (Swin) had its width taken for channels
            layout = [(lambda t: t.permute(0, 3, 1, 2)) if _channels_last(
                t.shape, views[key].shape[-2:]) else (lambda t: t) for t in a]
            maps = []
            for k in range(N_TRAITS):
                g = torch.autograd.grad(scores[:, k].sum(), a, retain_graph=k < N_TRAITS - 1)
                maps.append(_joint_cam([f(t.detach()) for f, t in zip(layout, a)],
                                       [f(t) for f, t in zip(layout, g)]).mean(dim=0))  # (h, w)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(maps).float().cpu().numpy(), " + ".join(names)  # (5, h, w)


def display_image(x: Tensor) -> np.ndarray:
    """The middle view (and middle frame) of an ImageNet-normalised (V, [T,] 3, H, W) input as
    uint8 (H, W, 3) RGB: what the Grad-CAM maps lie on."""
    img = x[len(x) // 2]
    if img.ndim == 4:
        img = img[len(img) // 2]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (img.detach().float().cpu() * std + mean).clamp(0, 1) * 255  # (3, H, W)
    return rgb.round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)


# --------------------------------------------------------------------------------------------------
# audio occlusion


def _audio_source(sources: Sequence[InputSource], key: str) -> InputSource:
    src = next((s for s in sources if key in s.keys), None)
    if src is None or not isinstance(getattr(src, "data", None), dict):
        raise ExplainError(f"audio occlusion of {key!r} needs a source holding each clip's "
                           "array (models/data_audio.py)")
    return src


def _muted(src: InputSource, key: str, baseline: str) -> Any:
    """The value a muted stretch takes: (n_mels, 1) standardised silence for logmel, 0 for wave."""
    if key == "wave" or baseline == "mean":
        return 0.0  # wave: silence (and ~ its mean); logmel: the train mean after standardising
    stats = (getattr(src, "fitted", None) or {}).get("logmel")
    if not stats:  # not standardised: the raw dB value
        return SILENCE_DB
    mean, std = (np.asarray(stats[k], np.float32)[:, None] for k in ("mean", "std"))
    return (np.float32(SILENCE_DB) - mean) / std  # (n_mels, 1)


def _with_array(src: InputSource, video_id: str, array: np.ndarray, **extra: Any) -> InputSource:
    """A shallow copy of `src` whose clip `video_id` is `array` (other attributes shared)."""
    out = copy.copy(src)
    out.data = {video_id: array}
    for name, value in extra.items():
        setattr(out, name, value)
    return out


def _seen(src: InputSource, video_id: str, key: str, n_steps: int) -> np.ndarray:
    """(n_steps,) bool: which time steps of the clip the model's eval view contains. Found by
    passing step numbers through the source's own cropping (a centre crop, a cap on frames)."""
    marker = np.arange(1, n_steps + 1)
    if key == "logmel":
        arr = np.zeros((src.n_mels, n_steps), np.float32)
        arr[0] = marker
        view = _with_array(src, video_id, arr).eval_items(video_id)["logmel"][:, 0]  # (V, L)
    else:
        view = _with_array(src, video_id, marker.astype(np.int32),
                           scales={video_id: 1.0}).eval_items(video_id)["wave"]  # (V, L)
    idx = view.reshape(-1).round().long()
    seen = np.zeros(n_steps, bool)
    seen[(idx[idx > 0] - 1).numpy()] = True
    return seen


def audio_occlusion(model: nn.Module, sources: Sequence[InputSource], video_id: str, key: str, *,
                    step_s: float, window_s: float = 1.0, baseline: str = "silence") -> dict:
    """Per-second occlusion of the clip's `key` ("logmel": step_s = hop_s; "wave": 1 / sr):
    {"delta": (5, n) score - score with the window muted (NaN outside the model's view),
     "seen": (n,) share of each window the model sees, "seconds": (n,) window starts,
     "audio_s": the audio's length, where the last window ends (it may be shorter than
     `window_s`: a 2.4 s track's third second is 0.4 s long), "score": (5,) the clip's score}."""
    if baseline not in ("silence", "mean"):
        raise ExplainError(f"audio occlusion baseline {baseline!r}: silence | mean")
    src = _audio_source(sources, key)
    full = src.data.get(video_id)
    if full is None:
        raise ExplainError(f"video {video_id!r} has no {key!r} array to occlude")
    others = [s for s in sources if s is not src]
    n_steps = full.shape[-1]
    per = max(1, int(round(window_s / step_s)))  # steps per window
    # a tail under a tenth of a window (the frame centred on the last sample) joins the last one
    n = max(1, math.ceil(n_steps / per - 0.1))
    spans = [(i * per, (i + 1) * per if i < n - 1 else n_steps) for i in range(n)]
    fill = _muted(src, key, baseline)
    seen = _seen(src, video_id, key, n_steps)
    share = np.array([seen[lo:hi].mean() for lo, hi in spans])
    clip = clip_views([*others, src], video_id)
    score = predict_views(model, {"clip": clip})[0]  # (5,)
    # only the windows the model hears are muted and scored (a muted second outside its view
    # moves nothing: NaN), a few at a time: each muted copy holds all V views of the clip, so
    # every window at once took (windows x V) views, 2 GB and a minute for a 48 s clip whose
    # 384 face crops are all scored (max_eval_views 0), far more for a longer one
    preds = np.full((n, N_TRAITS), np.nan)
    heard = np.flatnonzero(share > 0)
    per_call = max(1, OCCLUSION_BATCH // max(1, _n_views(clip)))
    for chunk in np.array_split(heard, math.ceil(len(heard) / per_call)) if len(heard) else []:
        views = {}
        for i in chunk:
            lo, hi = spans[i]
            arr = full.copy()
            arr[..., lo:hi] = fill
            views[f"w{i}"] = clip_views([*others, _with_array(src, video_id, arr)], video_id)
        preds[chunk] = predict_views(model, views)  # (len(chunk), 5)
    delta = (score[None] - preds).T  # (5, n), NaN where the model does not hear
    return {"delta": delta, "seen": share, "seconds": np.arange(n) * per * step_s,
            "window_s": per * step_s, "audio_s": _audio_seconds(key, n_steps, step_s),
            "score": score, "baseline": baseline}


def _audio_seconds(key: str, n_steps: int, step_s: float) -> float:
    """The audio's length from its `n_steps` steps: n / sr for a wave; for a log-mel, whose
    frame i is centred on i * hop_s (stages/audio.py: 1 + n // hop frames), the last frame's
    centre, (T - 1) hop_s (241 frames of a 2.4 s track: 2.40 s, not 2.41)."""
    return float(max(n_steps - 1, 1) * step_s if key == "logmel" else n_steps * step_s)


def _n_views(views: Mapping[str, Tensor]) -> int:
    """V, the views of one clip (clip_views: every key has the same first axis)."""
    return int(len(next(iter(views.values())))) if views else 1


# --------------------------------------------------------------------------------------------------
# one clip, every kind


def _json(value: Any) -> Any:
    """Arrays to nested lists of floats (6 significant digits, NaN -> None)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json(value.tolist())
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, np.integer):
        return int(value)
    return value


def explain_clip(model: nn.Module, sources: Sequence[InputSource], video_id: str, *,
                 hop_s: float = 0.01, sr: int = 16000, window_s: float = 1.0,
                 baseline: str = "silence", ig_steps: int = 32,
                 cam_min_side: int = 4) -> tuple[dict, dict]:
    """Every explanation the model's inputs allow, for one clip: (JSON-safe dict, images for
    drawing {key: uint8 (H, W, 3)}). The dict: {"kinds": [...], "<kind>": {key: {...}},
    "seconds": {"<kind>": cost}}; see the module docstring for each kind."""
    from models.contributions import feature_contributions, feature_names  # it imports this

    model.eval()
    keys = [k for s in sources for k in s.keys]
    # as scored: an input under the network's minimum padded (models/inference.py)
    views = pad_short(clip_views(sources, video_id), min_lengths(model), video_id=video_id,
                      model=type(model).__name__)
    out: dict = {"kinds": [], "seconds": {}}
    images: dict = {}
    for kind, wanted in (("gradcam", IMAGE_KEYS), ("audio_occlusion", AUDIO_KEYS),
                         ("contributions", FEATURE_KEYS)):
        started = time.perf_counter()
        for key in (k for k in keys if k in wanted):
            if kind == "gradcam":
                maps, layer = gradcam(model, views, key, min_side=cam_min_side)
                part = {"maps": maps, "layer": layer, "views": int(len(views[key]))}
                images[key] = display_image(views[key])
            elif kind == "audio_occlusion":
                part = audio_occlusion(model, sources, video_id, key, window_s=window_s,
                                       step_s=hop_s if key == "logmel" else 1.0 / sr,
                                       baseline=baseline)
            else:
                names = feature_names(sources, key, int(views[key].shape[-1]))
                part = feature_contributions(model, views, key, names, ig_steps=ig_steps)
            out.setdefault(kind, {})[key] = part
        if kind in out:
            out["kinds"].append(kind)
            out["seconds"][kind] = time.perf_counter() - started
    out["traits"] = list(TRAITS)
    return _json(out), images

"""predict's caveats on one model's scores for one clip: what makes them shaky, in plain words.

    warnings = model_warnings(loaded, sources, vid, facts)   # a clip far shorter than training's,
                                                            # features far outside, padded views,
                                                            # a face clip filled by repeated crops
    warnings += clipped_warnings(loaded.net, sources, vid)   # raw scores past the 0-1 scale

`loaded` is stages/predict_model.py's LoadedModel (the checkpoint read once), `sources` the input
sources model_scores scored the clip with. The clip's own lacks (no face, silent audio) are
stages/predict_model.py's clip_warnings. A module of its own so that predict_model.py stays under
the file-size limit; it imports no stage (tests/test_layering.py), only predict.py imports it.
"""
from __future__ import annotations

import numpy as np

from personality.schemas import TRAITS

__all__ = ["EXTREME_Z", "model_warnings", "padded_warnings", "face_clip_warnings", "CLIPPED_BY",
           "clipped_warnings"]


EXTREME_Z = 10.0  # sd from the training clips' mean; the default data's 150 clips have at most 4
# of 747 functionals there, a 0.3 s clip 100+ (its scores then only extrapolate)


def model_warnings(loaded: LoadedModel, sources: list, vid: str, facts: dict) -> list[str]:
    """What makes this model's scores for the clip shaky, in plain words: a clip far shorter than
    any it was trained on (the checkpoint's train_duration_s), feature vectors far outside its
    training clips' (standardised |z| over EXTREME_Z for over 2% of the features)."""
    out = []
    span = loaded.ckpt.get("train_duration_s") or []
    seconds = facts.get("duration_s")
    if len(span) == 2 and seconds is not None and seconds < 0.5 * span[0]:
        shown = f"{seconds:.1f}" if seconds >= 0.1 else f"{seconds:.3f}"  # a frame: not "0.0"
        out.append(f"the clip is {shown} s long; the model learnt from clips of "
                   f"{span[0]:.1f}-{span[1]:.1f} s: its scores rest on little")
    for source in sources:
        columns, data = getattr(source, "columns", None), getattr(source, "data", None)
        if not isinstance(columns, list) or not isinstance(data, dict) or vid not in data:
            continue
        z = np.abs(np.asarray(data[vid], dtype=float)).reshape(-1)  # (F,) standardised
        far = np.flatnonzero(z > EXTREME_Z) if len(z) == len(columns) else []
        if len(far) > max(5, 0.02 * len(columns)):
            k = int(far[np.argmax(z[far])])
            out.append(f"{len(far)} of its {len(columns)} {source.keys[0]} features lie over "
                       f"{EXTREME_Z:.0f} sd from the training clips' mean (the farthest: "
                       f"{columns[k]}, {z[k]:.0f} sd): the scores extrapolate")
    return out + padded_warnings(loaded.net, sources, vid) + face_clip_warnings(sources, vid)


def face_clip_warnings(sources: list, vid: str) -> list[str]:
    """A face-clip model (face_seq) given a video with fewer face crops than one of its clips
    spans: the source fills the clip by repeating crops (or taking them closer together:
    models/data_image.py, FaceSeqSource), so the motion the model sees is not what it learnt
    from; scored all the same (a 1-frame video is a still clip)."""
    out = []
    for source in sources:
        if getattr(source, "key", None) != "face_seq" or not source.has(vid):
            continue
        need = source.eval_span()
        n = len(source.store.get(vid))  # (N, 3, S, S) face crops
        if n < need:
            how = "repeated" if n < source.config.length else "taken closer together"
            out.append(f"the clip has {n} face crop(s) and the model reads clips spanning "
                       f"{need}: its crops were {how} to fill one, so the motion it sees is not "
                       "the motion it learnt from")
    return out


# per padded input: its name, the unit of its last axis, what a view shorter than the network
# takes is padded with (models/inference.py, pad_short: zeros, as the sources pad a short crop)
PADDING = {"logmel": ("log-mel", "frames", "each band's training mean, as a clip shorter than "
                      "the log-mel crop is padded,"),
           "wave": ("wave", "samples", "silence")}


def padded_warnings(net, sources: list, vid: str) -> list[str]:
    """The inputs of the clip too short for the network (a 0.1 s clip's log-mel in eval_mode
    "full": 11 frames, the log-mel CNN takes 16), which predict_videos padded to its minimum."""
    from models.inference import short_views

    out = []
    for key, (have, need) in short_views(net, sources, vid).items():
        name, unit, fill = PADDING.get(key, (key, "steps", "zeros"))
        step = next((getattr(s, "step_s", None) for s in sources if key in s.keys), None)
        out.append(f"the model hears {_span(have, unit, step)} of the clip's {name}, under the "
                   f"{_span(need, unit, step)} its network takes: padded with {fill} up to "
                   "that, so its scores rest on little audio")
    return out


def _span(steps: int, unit: str, step_s: float | None) -> str:
    return f"{steps * step_s:.2f} s ({steps} {unit})" if step_s else f"{steps} {unit}"


CLIPPED_BY = 0.05  # how far past the 0-1 scale a raw score lies before the warnings say so


def clipped_warnings(net, sources: list, vid: str) -> list[str]:
    """A model whose decode clips to the scale (`clamps_to_scale`: models/classical.py's
    regression heads) and whose raw scores for the clip lie past it: they were shown at its end
    without a word (a raw A of 1.34 read as 1.00, as sure as a score can be)."""
    if not getattr(net, "clamps_to_scale", False):
        return []
    import torch

    from models.engine import predict_videos

    class Undecoded(torch.nn.Module):  # the same views and averaging, without the clamp
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, batch):
            return self.net(batch)

        def decode(self, outputs):
            return outputs

    raw = np.asarray(predict_videos(Undecoded(), sources, [vid])[0], dtype=float)  # (5,)
    past = [f"{t} {r:.2f}" for t, r in zip(TRAITS, raw) if not -CLIPPED_BY <= r <= 1 + CLIPPED_BY]
    return [f"raw score(s) past the 0-1 scale, shown at its end: {', '.join(past)}: the clip is "
            "unlike the training clips for those traits"] if past else []

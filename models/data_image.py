"""Input sources of the image models: face (aligned face crops), frame (whole sampled frames) and
face_seq (clips of consecutive face crops), read from the faces and frames stages' Parquet.

    from models.data import build_sources
    src, = build_sources(["face"], root=root, video_ids=ids, config={"face": {"augment": "strong"}})
    src.train_item("syn_0003", np.random.default_rng(0))   # {"face": (3, 112, 112) uint8}
    src.eval_items("syn_0003")                              # {"face": (V, 3, 112, 112)}, V = frames

Sampling (ours; DeepPersonality's differs: docs/models.md, "Against DeepPersonality"):

| key      | train_item (one random view)                      | eval_items (all views, V)          |
|----------|---------------------------------------------------|------------------------------------|
| face     | one random crop with face_found, augmented        | every face crop, V = their count   |
| frame    | one random sampled frame, augmented               | every sampled frame                |
| face_seq | `clip`: T consecutive face crops from a random    | `clips`: every non-overlapping     |
|          | start; `segments`: one random crop per each of T  | clip (V = N // T); `even`: T evenly|
|          | equal segments (TSN); same augmentation per clip  | spaced crops (V = 1)               |

Videos without inputs: `has(video_id)` is False for a video with no face in any frame (face,
face_seq) or no sampled frame (frame); `train_item` / `eval_items` then raise `SourceError` naming
the video and why (the engine drops videos whose `has` is False, so it never meets the error).

Decoding (docs/models.md has the measurements): crops are decoded once (OpenCV / libjpeg-turbo,
RGB uint8, resized to `size`) and kept in a per-source LRU cache bounded by `cache_mb`; with
`preload: true` (the default) the builder decodes every video up front in the main process, so
DataLoader workers (fork) share the decoded tensors instead of re-decoding them every epoch.
Augmentation runs on the uint8 tensors, and the images leave the source as uint8: where the batch
lands, `models.batching.to_device` (or the model's own pre-hook) scales them to float and
ImageNet-normalises them, so loader workers and the host-to-device copy move a quarter of the
bytes (docs/models.md, "Decoding: where it belongs"). The audio sources are models/data_audio.py.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models import image_ops
from models.data import InputSource, SourceError, register_source, source_options
from personality.common import get_logger

__all__ = ["ImageSourceConfig", "FaceSeqSourceConfig", "ImageStore", "ImageSource",
           "FaceSeqSource", "augment_images"]

log = get_logger("data_image")

Augment = Literal["none", "standard", "strong"]


# --------------------------------------------------------------------------------------------------
# image transforms (training only), deterministic given the numpy rng


@dataclasses.dataclass(frozen=True)
class ImageSourceConfig:
    size: int = 112  # output side (face crops are stored at faces.size = 112; frames are resized
    #                  shorter side -> size, then centre-cropped square, at decode time)
    augment: Augment = "standard"  # standard: flip + random resized crop; strong: + colour
    #                                jitter + random erasing. Training views only.
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random resized crop: share of the area
    jitter: float = 0.4  # strong: brightness / contrast / saturation factors in 1 +- jitter
    erase_p: float = 0.25  # strong: probability of erasing one random rectangle (2-20% area)
    max_eval_views: int = 0  # > 0: at most this many evenly spaced frames at eval (0 = all)
    cache_mb: float = 1024.0  # bound of the decoded uint8 cache (default dataset: ~225 MB)
    preload: bool = True  # decode every video at build time (in the main process)
    path: str = ""  # artifact folder relative to the root ("" = data/faces or data/frames)

    def __post_init__(self) -> None:
        if self.size < 8 or self.augment not in ("none", "standard", "strong"):
            raise SourceError(f"image source: size >= 8 and augment in none/standard/strong "
                              f"(got {self.size}, {self.augment!r})")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 or self.cache_mb < 0:
            raise SourceError("image source: crop_scale in (0, 1], cache_mb >= 0")
        if not (0 <= self.jitter <= 1 and 0 <= self.erase_p <= 1):  # a factor 1 - jitter < 0
            raise SourceError(f"image source: jitter and erase_p in [0, 1] (got {self.jitter}, "
                              f"{self.erase_p}); a jitter over 1 would invert colours")


def augment_images(x: torch.Tensor, rng: np.random.Generator, cfg: Any) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, size, size); one draw of parameters for the whole
    stack (a clip gets the same flip / crop / jitter on every frame)."""
    size = cfg.size
    if cfg.augment == "none":
        return x if x.shape[-1] == size else image_ops.resize(x, size)
    H, W = x.shape[-2:]
    area = H * W * rng.uniform(*cfg.crop_scale)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = int(round(min(H, math.sqrt(area / ratio))))
    w = int(round(min(W, math.sqrt(area * ratio))))
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    flip = bool(rng.random() < 0.5)
    x = image_ops.resized_crop(x, top, left, h, w, size)
    if flip:
        x = image_ops.horizontal_flip(x)
    if cfg.augment == "strong":
        j = cfg.jitter
        b, c, s = rng.uniform(1 - j, 1 + j, size=3)
        for i in rng.permutation(3):
            x = (image_ops.adjust_brightness(x, float(b)) if i == 0 else
                 image_ops.adjust_contrast(x, float(c)) if i == 1 else
                 image_ops.adjust_saturation(x, float(s)))
        if rng.random() < cfg.erase_p:
            ea = size * size * rng.uniform(0.02, 0.2)
            er = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
            eh = int(min(size, round(math.sqrt(ea * er))))
            ew = int(min(size, round(math.sqrt(ea / er))))
            et, el = int(rng.integers(0, size - eh + 1)), int(rng.integers(0, size - ew + 1))
            x = x.clone()
            x[..., et:et + eh, el:el + ew] = torch.tensor([124, 116, 104], dtype=torch.uint8
                                                          ).view(3, 1, 1)  # the mean colour
    return x


# --------------------------------------------------------------------------------------------------
# decoded image store (LRU, bounded)


def _decode_many(blobs: Sequence[bytes], size: int, square_crop: bool) -> torch.Tensor:
    """JPEG bytes -> uint8 (N, 3, size, size) RGB (OpenCV / libjpeg-turbo)."""
    import cv2

    out = np.empty((len(blobs), size, size, 3), np.uint8)
    for i, b in enumerate(blobs):
        img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)  # (H, W, 3) BGR
        if img is None:
            raise SourceError("undecodable JPEG bytes")
        h, w = img.shape[:2]
        if square_crop and h != w:  # frames: shorter side -> size, centre square
            s = min(h, w)
            y0, x0 = (h - s) // 2, (w - s) // 2
            img = img[y0:y0 + s, x0:x0 + s]
        if img.shape[0] != size or img.shape[1] != size:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = img[:, :, ::-1]  # BGR -> RGB
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)


class ImageStore:
    """Decoded uint8 images per video from a per-frame artifact (faces: crops with face_found;
    frames: every jpeg), read one video at a time (personality.video_shards.index_videos / row
    groups), kept in an LRU cache of at most `cache_mb` megabytes."""

    def __init__(self, folder: Path, artifact: str, *, size: int, cache_mb: float,
                 video_ids: Sequence[str]):
        from personality.video_shards import index_videos

        self.folder, self.artifact, self.size = folder, artifact, size
        self.column = "crop" if artifact == "faces" else "jpeg"
        ids = set(video_ids)
        self.index = {v: p for v, p in index_videos(folder, artifact).items() if v in ids}
        self.limit = int(cache_mb * 2 ** 20)
        self.cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self.bytes = 0
        self.counts = self._count_usable()
        self.decodes = 0  # videos decoded so far (a cache miss decodes again)

    def _count_usable(self) -> dict[str, int]:
        """Frames with a usable image per video, reading only the small columns."""
        counts: dict[str, int] = {}
        cols = ["video_id", "face_found"] if self.artifact == "faces" else ["video_id"]
        for shard in sorted({s for parts in self.index.values() for s, _ in parts}):
            t = pq.read_table(shard, columns=cols)
            vids = np.asarray(t.column("video_id").to_pylist(), dtype=object)
            ok = (np.asarray(t.column("face_found").to_numpy(zero_copy_only=False), bool)
                  if self.artifact == "faces" else np.ones(len(vids), bool))
            for v, n in collections.Counter(vids[ok].tolist()).items():
                if v in self.index:
                    counts[v] = counts.get(v, 0) + n
        return {v: counts.get(v, 0) for v in self.index}

    def _read(self, video_id: str) -> torch.Tensor:
        cols = ["video_id", "frame_idx", self.column] + (
            ["face_found"] if self.artifact == "faces" else [])
        tables = [pq.ParquetFile(s).read_row_group(rg, columns=cols)
                  for s, rg in self.index[video_id]]
        t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        df = t.to_pandas()
        df = df[df["video_id"] == video_id]
        if self.artifact == "faces":
            df = df[df["face_found"].astype(bool) & df["crop"].notna()]
        df = df.sort_values("frame_idx", kind="stable")
        self.decodes += 1
        return _decode_many(df[self.column].tolist(), self.size,
                            square_crop=self.artifact == "frames")

    def get(self, video_id: str) -> torch.Tensor:
        """uint8 (N, 3, size, size) of the video's usable frames, in time order."""
        x = self.cache.get(video_id)
        if x is not None:
            self.cache.move_to_end(video_id)
            return x
        x = self._read(video_id)
        n = x.numel()
        if n <= self.limit:
            while self.cache and self.bytes + n > self.limit:
                _, old = self.cache.popitem(last=False)
                self.bytes -= old.numel()
            self.cache[video_id] = x
            self.bytes += n
        return x

    def preload(self) -> None:
        for vid, n in self.counts.items():
            if n and self.bytes < self.limit:
                self.get(vid)


def _image_store(root: Path, artifact: str, cfg: Any, video_ids: Sequence[str]) -> ImageStore:
    folder = root / (cfg.path or f"data/{artifact}")
    store = ImageStore(folder, artifact, size=cfg.size, cache_mb=cfg.cache_mb, video_ids=video_ids)
    missing = sorted(set(video_ids) - set(store.index))
    empty = sorted(v for v, n in store.counts.items() if n == 0)
    if missing:
        log.warning("%s: %d video(s) not in %s (no input): %s", artifact, len(missing), folder,
                    ", ".join(missing[:10]))
    if empty:
        log.warning("%s: %d video(s) without a usable %s (no input): %s", artifact, len(empty),
                    "face" if artifact == "faces" else "frame", ", ".join(empty[:10]))
    if cfg.preload:
        store.preload()
    return store


def _even(n: int, k: int) -> np.ndarray:
    """k evenly spaced indices over range(n) (repeats when k > n)."""
    return np.linspace(0, n - 1, k).round().astype(int) if k > 1 else np.array([(n - 1) // 2])


class ImageSource(InputSource):
    """One image per view: `face` (aligned crops with face_found) or `frame` (sampled frames)."""

    def __init__(self, key: str, store: ImageStore, cfg: ImageSourceConfig):
        self.keys = (key,)
        self.key, self.store, self.config = key, store, cfg
        self.what = "face crop" if store.artifact == "faces" else "frame"

    def has(self, video_id: str) -> bool:
        return self.store.counts.get(video_id, 0) > 0

    def fitted_config(self) -> dict[str, dict]:
        return {}  # fixed ImageNet-style normalisation: nothing learnt from the data

    def _frames(self, video_id: str) -> torch.Tensor:
        if not self.has(video_id):
            why = ("is not in " + str(self.store.folder) if video_id not in self.store.index
                   else f"has no {self.what} (face_found is false in every frame)"
                   if self.store.artifact == "faces" else "has no sampled frame")
            raise SourceError(f"video {video_id!r} {why}: no {self.key!r} input")
        return self.store.get(video_id)

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        frames = self._frames(video_id)  # (N, 3, S, S) uint8
        x = frames[int(rng.integers(len(frames)))]  # (3, S, S)
        return {self.key: augment_images(x, rng, self.config)}  # (3, size, size) uint8

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        frames = self._frames(video_id)  # (N, 3, S, S)
        k = self.config.max_eval_views
        if 0 < k < len(frames):
            frames = frames[torch.from_numpy(_even(len(frames), k))]
        frames = augment_images(frames, np.random.default_rng(0), _no_aug(self.config))
        return {self.key: frames}  # (V, 3, size, size) uint8


def _no_aug(cfg: Any) -> Any:
    return dataclasses.replace(cfg, augment="none")


@register_source("face", options=ImageSourceConfig)
def face_source(*, root: Path, video_ids: list[str], config: dict) -> ImageSource:
    """data/faces crops (face_found only) for `video_ids`."""
    cfg = source_options(ImageSourceConfig, config, "source_config.face")
    return ImageSource("face", _image_store(root, "faces", cfg, video_ids), cfg)


@register_source("frame", options=ImageSourceConfig)
def frame_source(*, root: Path, video_ids: list[str], config: dict) -> ImageSource:
    """data/frames full frames (shorter side -> size, centre square) for `video_ids`."""
    cfg = source_options(ImageSourceConfig, config, "source_config.frame")
    return ImageSource("frame", _image_store(root, "frames", cfg, video_ids), cfg)


@dataclasses.dataclass(frozen=True)
class FaceSeqSourceConfig(ImageSourceConfig):
    length: int = 6  # T: frames per clip (at frames.fps = 5, 6 frames = 1.2 s consecutive)
    sampling: Literal["clip", "segments"] = "clip"  # train: T consecutive frames (every `stride`)
    #                                                 from a random start, or one random frame
    #                                                 in each of T equal segments (TSN)
    stride: int = 1  # clip: step between the clip's frames
    eval_mode: Literal["auto", "clips", "even"] = "auto"  # clips: every non-overlapping clip;
    #                                                     even: T evenly spaced frames (V = 1);
    #                                                     auto: clips for clip, even for segments
    # every view, training's and evaluation's, is `length` frames (a short video's crops are
    # repeated): under the network's min_lengths() train refuses it (models/train_params.py)
    train_length: ClassVar[dict[str, str]] = {"face_seq": "length"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 1 or self.stride < 1 or self.sampling not in ("clip", "segments") or \
                self.eval_mode not in ("auto", "clips", "even"):
            raise SourceError("face_seq source: length, stride >= 1; sampling clip|segments; "
                              "eval_mode auto|clips|even")


class FaceSeqSource(ImageSource):
    """A clip of `length` face crops per view: {"face_seq": (T, 3, size, size)}. Videos with fewer
    face crops than a clip needs repeat frames (evenly spaced indices)."""

    def __init__(self, store: ImageStore, cfg: FaceSeqSourceConfig):
        super().__init__("face_seq", store, cfg)

    def _clip_indices(self, n: int, start: int) -> np.ndarray:
        T, s = self.config.length, self.config.stride
        span = (T - 1) * s + 1
        if n < span:
            return _even(n, T)
        return start + np.arange(T) * s

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        frames = self._frames(video_id)  # (N, 3, S, S)
        n, T = len(frames), self.config.length
        if self.config.sampling == "segments":
            edges = np.linspace(0, n, T + 1)
            idx = np.array([int(rng.integers(int(lo), max(int(lo) + 1, int(math.ceil(hi)))))
                            for lo, hi in zip(edges[:-1], edges[1:])]).clip(0, n - 1)
        else:
            span = (T - 1) * self.config.stride + 1
            idx = self._clip_indices(n, int(rng.integers(max(n - span + 1, 1))))
        clip = frames[torch.from_numpy(idx)]  # (T, 3, S, S)
        return {"face_seq": augment_images(clip, rng, self.config)}  # (T, 3, size, size) uint8

    def eval_mode(self) -> str:
        """"clips" or "even": eval_mode with "auto" resolved (clips for clip sampling)."""
        if self.config.eval_mode != "auto":
            return self.config.eval_mode
        return "clips" if self.config.sampling == "clip" else "even"

    def eval_span(self) -> int:
        """The face crops one evaluation clip spans; a video with fewer has its clip filled by
        repeated crops, or crops closer together (eval_items; predict says so)."""
        T = self.config.length
        return T if self.eval_mode() == "even" else (T - 1) * self.config.stride + 1

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        frames = self._frames(video_id)
        n, T, s = len(frames), self.config.length, self.config.stride
        mode = self.eval_mode()
        span = (T - 1) * s + 1
        if mode == "even" or n < span:
            idx = _even(n, T)[None]  # (1, T)
        else:
            starts = np.arange(0, n - span + 1, span)
            if 0 < self.config.max_eval_views < len(starts):
                starts = starts[_even(len(starts), self.config.max_eval_views)]
            idx = starts[:, None] + np.arange(T)[None] * s  # (V, T)
        clips = frames[torch.from_numpy(idx)]  # (V, T, 3, S, S)
        clips = augment_images(clips, np.random.default_rng(0), _no_aug(self.config))
        return {"face_seq": clips}  # (V, T, 3, size, size) uint8


@register_source("face_seq", options=FaceSeqSourceConfig)
def face_seq_source(*, root: Path, video_ids: list[str], config: dict) -> FaceSeqSource:
    """Clips of data/faces crops (face_found only) for `video_ids`."""
    cfg = source_options(FaceSeqSourceConfig, config, "source_config.face_seq")
    return FaceSeqSource(_image_store(root, "faces", cfg, video_ids), cfg)

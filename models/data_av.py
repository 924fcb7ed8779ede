"""Input sources for the visual and audio models: face, face_seq, frame, logmel, wave, audio_fn.

    from models.data import build_sources
    src, = build_sources(["face"], root=root, video_ids=ids, config={"face": {"augment": "strong"}})
    src.train_item("syn_0003", np.random.default_rng(0))   # {"face": (3, 112, 112) uint8}
    src.eval_items("syn_0003")                              # {"face": (V, 3, 112, 112)}, V = frames

Sampling (DeepPersonality's):

| key      | train_item (one random view)                      | eval_items (all views, V)          |
|----------|---------------------------------------------------|------------------------------------|
| face     | one random crop with face_found, augmented        | every face crop, V = their count   |
| frame    | one random sampled frame, augmented               | every sampled frame                |
| face_seq | `clip`: T consecutive face crops from a random    | `clips`: every non-overlapping     |
|          | start; `segments`: one random crop per each of T  | clip (V = N // T); `even`: T evenly|
|          | equal segments (TSN); same augmentation per clip  | spaced crops (V = 1)               |
| logmel   | a random crop of `frames` steps (zero-padded)     | the whole clip (`full`) or the     |
|          |                                                   | centre crop (`centre`), V = 1      |
| wave     | a random crop of `samples` within the real audio  | the centre crop (or `full`), V = 1 |
| audio_fn | the standardised audio functionals vector (fn_*,  | the same, V = 1                    |
|          | egemaps_*, compare_*; `include` picks by prefix)  |                                    |

Videos without inputs: `has(video_id)` is False for a video with no face in any frame (face,
face_seq), no sampled frame (frame), or no usable audio (logmel / audio_fn: no stream, silent,
error; wave: no stream); `train_item` / `eval_items` then raise `SourceError` naming the video and
why (the engine drops videos whose `has` is False, so it never meets the error). Audio sources take
`on_missing: zeros` to feed such videos a neutral input instead (zeros after standardisation).

Decoding (docs/models.md has the measurements): crops are decoded once (OpenCV / libjpeg-turbo,
RGB uint8, resized to `size`) and kept in a per-source LRU cache bounded by `cache_mb`; with
`preload: true` (the default) the builder decodes every video up front in the main process, so
DataLoader workers (fork) share the decoded tensors instead of re-decoding them every epoch.
Augmentation runs on the uint8 tensors, and the images leave the source as uint8: where the batch
lands, `models.batching.to_device` (or the model's own pre-hook) scales them to float and
ImageNet-normalises them, so loader workers and the host-to-device copy move a quarter of the
bytes (docs/models.md, "Decoding: where it belongs").

Standardisation (logmel per band, audio_fn per feature) uses statistics of the train split:
`stats_split: train` reads data/manifest.parquet under the root and keeps the given videos of
that split ("" = all the given videos); `mean` / `std` in the config override them.

One file because every audio-visual input source shares the decoding, caching and
fitted-state helpers above its builders; splitting it waits for the fitted-state rework on main.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision.transforms.v2.functional as TF

from models.batching import IMAGENET_MEAN, IMAGENET_STD, normalise_images
from models.data import InputSource, SourceError, register_source, source_options
from personality.common import get_logger
from personality.schemas import AUDIO_FUNCTIONAL_PREFIXES

__all__ = ["ImageSourceConfig", "FaceSeqSourceConfig", "LogmelSourceConfig", "WaveSourceConfig",
           "AudioFnSourceConfig", "ImageStore", "ImageSource", "FaceSeqSource", "LogmelSource",
           "WaveSource", "AudioFnSource", "augment_images", "normalise_images", "IMAGENET_MEAN",
           "IMAGENET_STD"]

log = get_logger("data_av")

AUDIO_FUNCTIONALS = tuple(AUDIO_FUNCTIONAL_PREFIXES.values())  # fn_, egemaps_, compare_
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


def augment_images(x: torch.Tensor, rng: np.random.Generator, cfg: Any) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, size, size); one draw of parameters for the whole
    stack (a clip gets the same flip / crop / jitter on every frame)."""
    size = cfg.size
    if cfg.augment == "none":
        return x if x.shape[-1] == size else TF.resize(x, [size, size], antialias=True)
    H, W = x.shape[-2:]
    area = H * W * rng.uniform(*cfg.crop_scale)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = int(round(min(H, math.sqrt(area / ratio))))
    w = int(round(min(W, math.sqrt(area * ratio))))
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    flip = bool(rng.random() < 0.5)
    x = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
    if flip:
        x = TF.horizontal_flip(x)
    if cfg.augment == "strong":
        j = cfg.jitter
        b, c, s = rng.uniform(1 - j, 1 + j, size=3)
        for i in rng.permutation(3):
            x = (TF.adjust_brightness(x, float(b)) if i == 0 else
                 TF.adjust_contrast(x, float(c)) if i == 1 else TF.adjust_saturation(x, float(s)))
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
    frames: every jpeg), read one video at a time (personality.video_io.index_videos / row groups),
    kept in an LRU cache of at most `cache_mb` megabytes."""

    def __init__(self, folder: Path, artifact: str, *, size: int, cache_mb: float,
                 video_ids: Sequence[str]):
        from personality.video_io import index_videos

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

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        frames = self._frames(video_id)
        n, T, s = len(frames), self.config.length, self.config.stride
        mode = self.config.eval_mode
        if mode == "auto":
            mode = "clips" if self.config.sampling == "clip" else "even"
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


# --------------------------------------------------------------------------------------------------
# audio


def _read_audio(root: Path, path: str, video_ids: Sequence[str], columns: list[str]) -> pa.Table:
    from personality.common import SchemaError

    folder = root / (path or "data/audio")
    shards = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not shards:
        raise SchemaError(f"{folder}: artifact 'audio' not found; run the audio stage first")
    ids = list(dict.fromkeys(video_ids))
    tables = [pq.read_table(s, columns=["video_id", *columns],
                            filters=[("video_id", "in", ids)] if ids else None) for s in shards]
    return pa.concat_tables(tables, promote_options="permissive")


def _stats_ids(root: Path, video_ids: Sequence[str], split: str) -> list[str]:
    """The given videos of split `split` (data/manifest.parquet), or all of them when split is ""
    or the manifest is absent; none of that split is an error."""
    manifest = root / "data" / "manifest.parquet"
    if not split or not manifest.exists():
        return list(video_ids)
    m = pq.read_table(manifest, columns=["video_id", "split"]).to_pandas()
    chosen = set(m.loc[m["split"] == split, "video_id"])
    picked = [v for v in video_ids if v in chosen]
    if not picked:  # never fall back on val / test clips: statistics come from training data
        raise SourceError(f"no {split}-split video among the {len(video_ids)} given to fit the "
                          "standardisation on; give the statistics (mean, std: a checkpoint's "
                          "source_config) or set stats_split: ''")
    return picked


def _usable(row: dict) -> str:
    """'' when an audio row has features, else why not."""
    if not row.get("has_audio", True):
        return "has no audio stream"
    if row.get("error"):
        return f"audio error: {row['error']}"
    if row.get("silent"):
        return "is silent"
    return ""


@dataclasses.dataclass(frozen=True)
class LogmelSourceConfig:
    frames: int = 300  # train crop, in hop_s steps (300 x 10 ms = 3 s); shorter clips zero-padded
    eval_mode: Literal["full", "centre", "crops"] = "full"  # whole clip as one view, the centre
    #   crop of `frames`, or crops: V = ceil(T / frames) crops of `frames` steps, evenly spaced
    #   from the first step to the last (overlapping a little), predictions averaged over them
    max_frames: int = 1500  # eval "full": at most this many (centred): bounds memory
    normalise: bool = True  # per-band standardisation with train-split statistics
    stats_split: str = "train"  # split whose videos give the statistics ("" = all given)
    mean: tuple[float, ...] = ()  # per-band statistics given explicitly (n_mels values each)
    std: tuple[float, ...] = ()
    on_missing: Literal["error", "zeros"] = "error"  # videos without usable audio
    path: str = ""  # artifact folder ("" = data/audio)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.eval_mode not in ("full", "centre", "crops") or \
                self.on_missing not in ("error", "zeros") or len(self.mean) != len(self.std):
            raise SourceError("logmel source: frames >= 1, eval_mode full|centre|crops, "
                              "on_missing error|zeros, mean and std of equal length")


class _AudioBase(InputSource):
    key: str
    fitted: dict = {}  # standardisation statistics, for checkpoints (InputSource.fitted_config)

    def fitted_config(self) -> dict[str, dict]:
        return self.fitted

    def __init__(self, data: dict[str, np.ndarray], missing: dict[str, str], on_missing: str):
        self.data, self.missing, self.on_missing = data, missing, on_missing
        self.keys = (self.key,)

    def has(self, video_id: str) -> bool:
        return video_id in self.data or (self.on_missing == "zeros" and video_id in self.missing)

    def _get(self, video_id: str) -> np.ndarray | None:
        x = self.data.get(video_id)
        if x is not None:
            return x
        if self.on_missing == "zeros" and video_id in self.missing:
            return None
        why = self.missing.get(video_id, "is not in data/audio")
        raise SourceError(f"video {video_id!r} {why}: no {self.key!r} input")


def _crop(x: np.ndarray, length: int, start: int, axis_len: int) -> np.ndarray:
    """x[..., start:start + length] zero-padded to `length` along the last axis."""
    out = np.zeros((*x.shape[:-1], length), np.float32)
    piece = x[..., start:start + length]
    out[..., :piece.shape[-1]] = piece
    return out


def crop_starts(n: int, length: int) -> list[int]:
    """Starts of the fewest `length`-step crops that cover all `n` steps, evenly spaced from the
    first step to the last (neighbours overlap by less than a crop); [0] when n <= length."""
    if n <= length:
        return [0]
    count = -(-n // length)  # ceil
    return np.linspace(0, n - length, count).round().astype(int).tolist()


class LogmelSource(_AudioBase):
    """{"logmel": (n_mels, T) float32}, standardised per band."""

    key = "logmel"

    def __init__(self, data, missing, cfg: LogmelSourceConfig, n_mels: int):
        super().__init__(data, missing, cfg.on_missing)
        self.config, self.n_mels = cfg, n_mels

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        L = self.config.frames
        if x is None:
            return {"logmel": torch.zeros(self.n_mels, L)}
        start = int(rng.integers(max(x.shape[1] - L + 1, 1)))
        return {"logmel": torch.from_numpy(_crop(x, L, start, x.shape[1]))}  # (M, L)

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        full = self.config.eval_mode == "full"
        L = self.config.frames if not full else (
            min(x.shape[1], self.config.max_frames) if x is not None else self.config.frames)
        if x is None:
            return {"logmel": torch.zeros(1, self.n_mels, L)}
        if self.config.eval_mode == "crops":
            starts = crop_starts(x.shape[1], L)
        else:
            starts = [max((x.shape[1] - L) // 2, 0)]
        views = [_crop(x, L, start, x.shape[1]) for start in starts]
        return {"logmel": torch.from_numpy(np.stack(views))}  # (V, M, L)


@register_source("logmel", options=LogmelSourceConfig)
def logmel_source(*, root: Path, video_ids: list[str], config: dict) -> LogmelSource:
    cfg = source_options(LogmelSourceConfig, config, "source_config.logmel")
    t = _read_audio(root, cfg.path, video_ids, ["has_audio", "silent", "error", "n_frames",
                                                "n_mels", "logmel"])
    data, missing, n_mels = {}, {}, 64
    meta = t.drop_columns(["logmel"]).to_pylist()
    col = t.column("logmel")
    for i, row in enumerate(meta):
        why = _usable(row) or ("has no log-mel frames" if not row["n_frames"] else "")
        if why:
            missing[row["video_id"]] = why
            continue
        n_mels = int(row["n_mels"])
        v = np.asarray(col[i].values.to_numpy(zero_copy_only=False), np.float32)
        data[row["video_id"]] = np.ascontiguousarray(v.reshape(-1, n_mels).T)  # (T, M) -> (M, T)
    _report_missing("logmel", video_ids, data, missing)
    if cfg.normalise:
        if cfg.mean:
            mean = np.asarray(cfg.mean, np.float32)[:, None]
            std = np.asarray(cfg.std, np.float32)[:, None]
        else:
            fit = [data[v] for v in _stats_ids(root, video_ids, cfg.stats_split) if v in data]
            allx = np.concatenate(fit, axis=1) if fit else np.zeros((n_mels, 1), np.float32)
            mean, std = allx.mean(axis=1, keepdims=True), allx.std(axis=1, keepdims=True)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        data = {v: (x - mean) / std for v, x in data.items()}
    src = LogmelSource(data, missing, cfg, n_mels)
    if cfg.normalise:
        src.fitted = {"logmel": {"mean": mean.ravel().tolist(), "std": std.ravel().tolist()}}
    return src


def _report_missing(key: str, video_ids: Sequence[str], data: dict, missing: dict) -> None:
    for v in video_ids:
        if v not in data and v not in missing:
            missing[v] = "is not in data/audio"
    if missing:
        log.warning("%s: %d video(s) without usable audio: %s", key, len(missing),
                    "; ".join(f"{v} {w}" for v, w in list(missing.items())[:5]))


@dataclasses.dataclass(frozen=True)
class WaveSourceConfig:
    samples: int = 48000  # train crop (3 s at 16 kHz) within the real audio; zero-padded
    eval_mode: Literal["centre", "full"] = "centre"  # centre crop of `samples`, or all real audio
    on_missing: Literal["error", "zeros"] = "error"  # videos without an audio stream
    path: str = ""

    def __post_init__(self) -> None:
        if self.samples < 1 or self.eval_mode not in ("centre", "full") or \
                self.on_missing not in ("error", "zeros"):
            raise SourceError("wave source: samples >= 1, eval_mode centre|full, on_missing "
                              "error|zeros")


class WaveSource(_AudioBase):
    """{"wave": (S,) float32 in [-1, 1]}; kept as int16 (the real part) in memory."""

    key = "wave"

    def __init__(self, data, missing, scales: dict[str, float], cfg: WaveSourceConfig):
        super().__init__(data, missing, cfg.on_missing)
        self.scales, self.config = scales, cfg

    def _float(self, x: np.ndarray, video_id: str, start: int, length: int) -> torch.Tensor:
        return torch.from_numpy(_crop(x[None].astype(np.float32) * self.scales[video_id], length,
                                      start, len(x))[0])

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        L = self.config.samples
        if x is None:
            return {"wave": torch.zeros(L)}
        return {"wave": self._float(x, video_id, int(rng.integers(max(len(x) - L + 1, 1))), L)}

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        x = self._get(video_id)
        L = self.config.samples if self.config.eval_mode == "centre" or x is None else len(x)
        if x is None:
            return {"wave": torch.zeros(1, L)}
        return {"wave": self._float(x, video_id, max((len(x) - L) // 2, 0), L)[None]}  # (1, L)


@register_source("wave", options=WaveSourceConfig)
def wave_source(*, root: Path, video_ids: list[str], config: dict) -> WaveSource:
    cfg = source_options(WaveSourceConfig, config, "source_config.wave")
    t = _read_audio(root, cfg.path, video_ids, ["has_audio", "error", "wave", "wave_scale",
                                                "n_samples"])
    data, missing, scales = {}, {}, {}
    meta = t.drop_columns(["wave"]).to_pylist()
    col = t.column("wave")
    for i, row in enumerate(meta):
        n = int(row["n_samples"] or 0)
        if not row["has_audio"] or n == 0:
            missing[row["video_id"]] = ("has no audio stream" if not row["has_audio"]
                                        else "has no audio samples")
            continue
        w = col[i].values.to_numpy(zero_copy_only=False)[:n]
        data[row["video_id"]] = np.ascontiguousarray(w)
        scales[row["video_id"]] = float(row["wave_scale"])
    _report_missing("wave", video_ids, data, missing)
    return WaveSource(data, missing, scales, cfg)


@dataclasses.dataclass(frozen=True)
class AudioFnSourceConfig:
    # keep the functionals (fn_*, egemaps_*, compare_*: what audio.feature_sets wrote) whose name
    # starts with one of these (() = all of them); e.g. [egemaps_] or [fn_rms_db, fn_f0]
    include: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # the exact columns (fitted: what training used)
    stats_split: str = "train"  # standardisation statistics from this split ("" = all given)
    mean: tuple[float, ...] = ()  # explicit statistics (one per kept column)
    std: tuple[float, ...] = ()
    on_missing: Literal["error", "zeros"] = "error"  # silent / no-audio videos (NaN functionals)
    path: str = ""

    def __post_init__(self) -> None:
        if self.on_missing not in ("error", "zeros") or len(self.mean) != len(self.std):
            raise SourceError("audio_fn source: on_missing error|zeros, mean and std of equal "
                              "length")


class AudioFnSource(_AudioBase):
    """{"audio_fn": (F,) float32}: the standardised audio functionals; NaN entries -> 0."""

    key = "audio_fn"

    def __init__(self, data, missing, columns: list[str], cfg: AudioFnSourceConfig):
        super().__init__(data, missing, cfg.on_missing)
        self.columns, self.config = columns, cfg
        self.n_features = len(columns)

    def _vec(self, video_id: str) -> torch.Tensor:
        x = self._get(video_id)
        return torch.zeros(self.n_features) if x is None else torch.from_numpy(x)

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"audio_fn": self._vec(video_id)}

    def eval_items(self, video_id: str) -> dict[str, torch.Tensor]:
        return {"audio_fn": self._vec(video_id)[None]}  # (1, F)


@register_source("audio_fn", options=AudioFnSourceConfig)
def audio_fn_source(*, root: Path, video_ids: list[str], config: dict) -> AudioFnSource:
    cfg = source_options(AudioFnSourceConfig, config, "source_config.audio_fn")
    folder = root / (cfg.path or "data/audio")
    schema = pq.read_schema(sorted(folder.glob("*.parquet"))[0]) if folder.is_dir() and any(
        folder.glob("*.parquet")) else None
    if schema is None:
        _read_audio(root, cfg.path, video_ids, [])  # raises the "run the stage" error
    columns = list(cfg.columns) or [
        c for c in schema.names if c.startswith(AUDIO_FUNCTIONALS) and (
            not cfg.include or any(c.startswith(p) for p in cfg.include))]
    if not columns:
        raise SourceError(f"source_config.audio_fn.include {cfg.include}: no functional column "
                          f"({', '.join(p + '*' for p in AUDIO_FUNCTIONALS)}) matches")
    absent = [c for c in columns if c not in schema.names]
    if absent:
        raise SourceError(f"source_config.audio_fn: {len(absent)} columns absent from {folder} "
                          f"(e.g. {absent[0]}): params audio.feature_sets differ from training's")
    t = _read_audio(root, cfg.path, video_ids, ["has_audio", "silent", "error", *columns])
    df = t.to_pandas()
    values = df[columns].to_numpy(np.float64)  # (n, F)
    data_raw, missing = {}, {}
    for i, row in enumerate(df[["video_id", "has_audio", "silent", "error"]].to_dict("records")):
        why = _usable(row) or ("has no functionals" if np.isnan(values[i]).all() else "")
        if why:
            missing[row["video_id"]] = why
        else:
            data_raw[row["video_id"]] = values[i]
    _report_missing("audio_fn", video_ids, data_raw, missing)
    if cfg.mean:
        if len(cfg.mean) != len(columns):
            raise SourceError(f"source_config.audio_fn.mean: {len(cfg.mean)} values for "
                              f"{len(columns)} columns")
        mean, std = np.asarray(cfg.mean), np.asarray(cfg.std)
    else:
        fit = np.array([data_raw[v] for v in _stats_ids(root, video_ids, cfg.stats_split)
                        if v in data_raw]).reshape(-1, len(columns))
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(fit, axis=0)) if len(fit) else np.zeros(len(columns))
            std = np.nan_to_num(np.nanstd(fit, axis=0)) if len(fit) else np.ones(len(columns))
    std = np.where(std > 1e-8, std, 1.0)
    data = {v: np.nan_to_num((x - mean) / std).astype(np.float32) for v, x in data_raw.items()}
    src = AudioFnSource(data, missing, columns, cfg)
    src.mean, src.std = mean.astype(np.float32), std.astype(np.float32)
    # float64, as used above: float32 copies would move standardised values by ~1e-5
    src.fitted = {"audio_fn": {"mean": mean.tolist(), "std": std.tolist(),
                               "include": list(cfg.include), "columns": columns}}
    return src

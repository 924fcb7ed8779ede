"""Pay one-time costs at install time: numba's JIT for librosa (cached in NUMBA_CACHE_DIR) and a
check that the face landmarker bundle is present and official.

    python -m personality.warmup          # `make install` runs it
"""
from __future__ import annotations

import time


def main() -> None:
    t0 = time.perf_counter()
    import numpy as np

    from personality.facemodel import find_task_file

    print(f"face_landmarker.task: {find_task_file()}")
    try:
        import librosa
    except ImportError:
        return
    y = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    librosa.feature.melspectrogram(y=y, sr=16000, n_mels=64)
    librosa.feature.mfcc(y=y, sr=16000)
    librosa.yin(y, fmin=60, fmax=400, sr=16000)
    print(f"warm-up done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

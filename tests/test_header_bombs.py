"""Small untrusted files whose headers declare absurd sizes, so that reading them would cost far
more memory or time than their bytes: each crafted here for real and refused by name before the
cost. Found by a security review of how the project treats untrusted files.
"""
from __future__ import annotations

import numpy as np
import pytest

from personality.common import StageInputError


def _pcm_mkv(path, rate: int, n_samples: int):
    """A Matroska file holding one frame of `n_samples` silent 16-bit mono samples at `rate` Hz
    (FFmpeg's Matroska muxer takes any positive rate)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, n_samples), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_audio_declaring_an_absurdly_low_sample_rate_is_refused_before_resampling(tmp_path):
    """Resampling multiplies a frame's samples by 16000 / its declared rate in one allocation: a
    10 KB file of 5000 samples at 1 Hz took 2.3 GB and 4.7 s to read (this test uses 500
    samples, which decoded to 4.8 million before the fix)."""
    from stages.audio import MIN_SOURCE_SR, decode_audio

    bomb = _pcm_mkv(tmp_path / "bomb.mkv", 1, 500)
    with pytest.raises(StageInputError, match=r"bomb\.mkv: the audio stream declares a sample "
                                              r"rate of 1 Hz, under the 2000 Hz"):
        decode_audio(bomb, sr=16000, max_seconds=300.0)
    # the lowest rate accepted still decodes, to its length at 16 kHz
    low = _pcm_mkv(tmp_path / "low.mkv", MIN_SOURCE_SR, MIN_SOURCE_SR)
    assert decode_audio(low, sr=16000, max_seconds=300.0).size == pytest.approx(16000, abs=64)


def test_an_openface_csv_a_million_columns_wide_is_refused_before_parsing(tmp_path):
    """pandas builds objects per column: an 18 MB OpenFace CSV of a million columns and 3 rows
    took 88 s and 1.4 GB to parse (a real one of 300 rows and 714 columns: 0.3 s). Here 100,000
    columns (1.7 MB), which took 9.7 s; the header alone refuses it now."""
    import time

    from personality.openface import read_openface_csv
    from personality.schemas import AU_INTENSITY, AU_PRESENCE

    columns = ["frame", "timestamp", "confidence", "success", *AU_INTENSITY, *AU_PRESENCE]
    padding = [f"x_{i}" for i in range(100_000 - len(columns))]
    path = tmp_path / "wide.csv"
    path.write_text(", ".join(columns + padding) + "\n" + "\n".join(
        ", ".join([str(k + 1), f"{k / 30:.3f}", "0.9", "1"] + ["0.5"] * 34 + ["0"] * len(padding))
        for k in range(3)) + "\n")
    start = time.perf_counter()
    with pytest.raises(StageInputError, match=r"wide\.csv: a header of 100000 columns, over "
                                              r"5000 \(OpenFace writes 714 at most\)"):
        read_openface_csv(path, video_id="wide")
    assert time.perf_counter() - start < 1.0
    # a header longer than the bytes looked at is counted as far as they go
    path.write_text(",".join(["AU01_r"] * 600_000) + "\n")
    with pytest.raises(StageInputError, match=r"a header of \d+ or more columns"):
        read_openface_csv(path, video_id="wide")

"""Untrusted media files that name other files: FFmpeg reads an HLS playlist (`.m3u8`) or an
ffconcat list (whatever its name, `.mp4` too) by opening the files it lists, and a file whose name
starts with a protocol (`subfile,,start,0,end,0,,:x.mp4`) by opening another file. Each went past
the dataset-root checks (safe_join checks the file a label row or a dataset tree names, not what
FFmpeg opens from it): a dataset could feed the pipeline, and a served request the scorer, a
video outside the folder. Found by an audit; personality.common.open_media now reads media
containers from local files only, and the file is refused by name, the others go on.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from personality.common import StageInputError
from tests.conftest import real_fixture, write_video


@pytest.fixture
def outside(tmp_path) -> Path:
    """A real video outside the dataset folder, as MPEG-TS (an HLS segment) and MP4."""
    write_video(tmp_path / "outside" / "secret.ts", n_frames=12)
    return write_video(tmp_path / "outside" / "secret.mp4", n_frames=12)


def _hls(ds: Path, outside: Path) -> Path:
    """A playlist in the dataset whose one segment is an absolute path outside it."""
    path = ds / "clip.m3u8"
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n"
                    f"{outside.with_suffix('.ts')}\n#EXT-X-ENDLIST\n")
    return path


def _ffconcat(ds: Path, outside: Path) -> Path:
    """A list named .mp4 whose entry is a symlink in the dataset pointing out of it (FFmpeg's
    safe mode refuses only absolute and dotted entries)."""
    (ds / "part.dat").symlink_to(outside)
    path = ds / "clip.mp4"
    path.write_text("ffconcat version 1.0\nfile part.dat\n")
    return path


def _protocol_name(ds: Path, outside: Path) -> Path:
    """A 1-byte file whose relative name is an FFmpeg protocol URL of a file beside it."""
    (ds / "inner.mp4").symlink_to(outside)
    name = "subfile,,start,0,end,0,,:inner.mp4"
    (ds / name).write_bytes(b"x")
    return Path(name)  # given relative, as `predict .` in the folder lists it


@pytest.mark.parametrize("make", [_hls, _ffconcat, _protocol_name])
def test_a_media_file_that_names_another_file_is_refused(tmp_path, outside, monkeypatch, make):
    from personality.video_io import iter_frames, probe
    from stages.audio import decode_audio

    ds = tmp_path / "ds"
    ds.mkdir()
    monkeypatch.chdir(ds)
    video = make(ds, outside)
    with pytest.raises(StageInputError, match="not a media file .*refused") as info:
        probe(video)
    assert str(video) in str(info.value)
    with pytest.raises(StageInputError, match="not a media file"):
        next(iter(iter_frames(video, per_video=2)))
    with pytest.raises(StageInputError, match="not a media file"):
        decode_audio(video, sr=16000, max_seconds=1.0)


def test_the_folder_source_reports_a_playlist_row_and_keeps_the_others(tmp_path, outside):
    from stages.ingest import probe_video, read_labels_csv

    ds = tmp_path / "ds"
    write_video(ds / "good.mp4", n_frames=12)
    _hls(ds, outside)
    (ds / "labels.csv").write_text("video,O,C,E,A,N\ngood.mp4,.5,.5,.5,.5,.5\n"
                                   "clip.m3u8,.5,.5,.5,.5,.5\n")
    rows, problems = read_labels_csv(ds / "labels.csv")
    assert not problems and len(rows) == 2  # the playlist itself is in the folder
    assert probe_video(rows["abs_path"][0])["duration_s"] > 0
    with pytest.raises(StageInputError, match="clip.m3u8: not a media file"):
        probe_video(rows["abs_path"][1])


def test_ordinary_media_still_open(tmp_path):
    """Containers the project reads: MP4, Matroska, AVI, MPEG-TS, WAV (audio only)."""
    from personality.video_io import probe
    from stages.audio import decode_audio
    from tests.conftest import real_fixture

    for suffix in (".mp4", ".mkv", ".avi", ".ts"):
        assert probe(write_video(tmp_path / f"v{suffix}", n_frames=6)).width == 64
    wav = real_fixture("librivox_speech_16k.wav")
    assert decode_audio(wav, sr=16000, max_seconds=0.5).size == 8000
    assert os.path.getsize(wav) > 0


def test_a_raw_audio_file_is_named_as_audio_not_as_a_playlist(tmp_path):
    """A raw AC-3 / E-AC-3 / Sun AU file (a camcorder's or a DVD's sound, saved alone) holds its
    own data: it opens for the audio stage, and given as a video it is 'no video stream'. Its
    demuxer was off the list, so it read as 'FFmpeg takes it for a playlist, a list of other
    files or a protocol URL', which it is not."""
    import av

    from personality.video_io import probe
    from stages.audio import decode_audio

    for fmt, codec in (("ac3", "ac3"), ("eac3", "eac3"), ("au", "pcm_s16be")):
        path = tmp_path / f"sound.{fmt}"
        with av.open(str(path), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=48000)
            stream.layout = "mono"
            size = stream.codec_context.frame_size or 1024
            resampler = av.AudioResampler(format=stream.codec_context.format.name,
                                          layout="mono", rate=48000)
            for start in range(0, 48000, size):
                tone = np.sin(np.arange(start, start + size) / 20.0).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(0.3 * tone, format="flt", layout="mono")
                frame.sample_rate, frame.pts = 48000, start
                for part in resampler.resample(frame):
                    out.mux(stream.encode(part))
            out.mux(stream.encode())
        assert decode_audio(path, sr=16000, max_seconds=5).size > 15000, fmt
        with pytest.raises(StageInputError, match=rf"sound.{fmt}: no video stream"):
            probe(path)


def test_a_still_image_is_named_as_one_not_as_a_playlist(tmp_path):
    """A photo given as a clip (a JPEG sent to the served model, a PNG in a batch folder) read
    as 'FFmpeg takes it for a playlist, a list of other files or a protocol URL': its demuxer
    (image2) is off the list for good reason, but the file is just a picture."""
    import cv2

    from personality.common import open_media

    image = cv2.imread(str(real_fixture("single_face.jpg")))
    for suffix, kind in ((".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".webp", "WebP")):
        path = tmp_path / f"photo{suffix}"
        cv2.imwrite(str(path), image)
        with pytest.raises(StageInputError, match=rf"photo\{suffix}: a still image \({kind}\), "
                                                  "not a video"):
            open_media(path)

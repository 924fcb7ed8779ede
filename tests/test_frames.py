"""frames stage: decoding, sampling, rotation, bad inputs, the stage end to end.

Test videos are written here with PyAV: each frame carries its own index as its brightness, so
that the decoded order and the sampled indices are checked exactly, and a bright block in one
corner, so that orientation is checked too.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personality.common import BaseParams, StageInputError, read_artifact, write_artifact
from stages.frames import FramesParams, extract_video, run
from stages.ingest import write_manifest
from personality.video_io import (decode_jpeg, iter_frames, probe, sample_indices, target_size)


def frame_image(k: int, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8: grey level 20 + 8 k (unique for k < 25), a white top-left block."""
    img = np.full((h, w, 3), 20 + (8 * k) % 200, np.uint8)
    img[: h // 4, : w // 4] = 255
    return img


def write_video(path: Path, *, n: int = 10, w: int = 64, h: int = 48, fps: int = 25,
                codec: str = "libx264", pix_fmt: str = "yuv420p", times: list[float] | None = None,
                rotation: int | None = None, audio: bool = False) -> Path:
    """A small real video file. `times` (s) gives variable-frame-rate pts; `rotation` writes a
    display matrix (degrees counter-clockwise, as PyAV reads it back)."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps, options={"threads": "1"} if codec.startswith("lib")
                            else {})
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if times is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            vs.set_display_rotation(rotation)
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(frame_image(k, w, h), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = int(round(times[k] * 1000)), Fraction(1, 1000)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if audio:
            write_audio_into(out)
    return path


def write_audio_into(out, seconds: float = 0.5, sr: int = 16000) -> None:
    import av

    st = out.add_stream("aac", rate=sr, layout="mono")
    wave = (0.1 * np.sin(np.arange(int(seconds * sr)) * 0.05)).astype(np.float32)
    for i in range(0, len(wave), 1024):
        fr = av.AudioFrame.from_ndarray(wave[None, i: i + 1024].copy(), format="fltp",
                                        layout="mono")
        fr.sample_rate, fr.pts = sr, i
        for packet in st.encode(fr):
            out.mux(packet)
    for packet in st.encode():
        out.mux(packet)


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        write_audio_into(out)
    return path


def brightness(img: np.ndarray) -> float:
    h, w = img.shape[:2]
    return float(img[h // 2:, w // 2:].mean())  # away from the corner block


def index_of(img: np.ndarray) -> int:
    return int(round((brightness(img) - 20) / 8))


# --------------------------------------------------------------------------------------------------
# pure helpers


def test_sample_indices_properties():
    for n, k in [(1, 100), (7, 100), (100, 100), (450, 100), (451, 7)]:
        idx = sample_indices(n, k)
        assert len(idx) == min(n, k)
        assert idx[0] == 0 and idx[-1] == n - 1
        assert np.all(np.diff(idx) > 0)
    assert len(sample_indices(0, 10)) == 0


def test_target_size_keeps_aspect_and_never_upscales():
    assert target_size(1280, 720, 640) == (640, 360)
    assert target_size(3840, 2160, 640) == (640, 360)
    assert target_size(320, 240, 640) == (320, 240)
    assert target_size(720, 1280, 640) == (360, 640)
    assert target_size(1280, 720, 0) == (1280, 720)


# --------------------------------------------------------------------------------------------------
# decoding


def test_fps_sampling_is_exact(tmp_path):
    path = write_video(tmp_path / "a.mp4", n=20, fps=25)
    got = list(iter_frames(path, fps=5))
    assert [i for i, _, _ in got] == [0, 5, 10, 15]
    assert np.allclose([t for _, t, _ in got], [0.0, 0.2, 0.4, 0.6], atol=1e-3)
    assert [index_of(img) for _, _, img in got] == [0, 5, 10, 15]  # right frames, right order


def test_per_video_sampling_is_uniform(tmp_path):
    path = write_video(tmp_path / "a.mp4", n=20, fps=25)
    got = list(iter_frames(path, per_video=4))
    assert [i for i, _, _ in got] == list(sample_indices(20, 4))
    assert [index_of(img) for _, _, img in got] == list(sample_indices(20, 4))
    assert len(list(iter_frames(path))) == 20  # no sampling: every frame


def test_variable_frame_rate_uses_pts(tmp_path):
    times = [0.0, 0.05, 0.30, 0.31, 0.32, 0.70, 0.71, 1.20]
    path = write_video(tmp_path / "vfr.mkv", n=len(times), times=times, fps=25)
    got = list(iter_frames(path))
    assert np.allclose([t for _, t, _ in got], times, atol=2e-3)
    # ticks every 0.25 s: first frame at or after 0, 0.25, 0.5, 0.75, 1.0 -> 0.0, 0.30, 0.70, 1.20
    sampled = list(iter_frames(path, fps=4))
    assert np.allclose([t for _, t, _ in sampled], [0.0, 0.30, 0.70, 1.20], atol=2e-3)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    path = write_video(tmp_path / "rot.mp4", n=3, w=64, h=32, rotation=rotation)
    info = probe(path)
    _, _, img = next(iter_frames(path))
    if rotation == 180:
        assert img.shape[:2] == (32, 64)
    else:
        assert img.shape[:2] == (64, 32) and (info.width, info.height) == (32, 64)
    # the source's top-left white block, rotated counter-clockwise by `rotation` degrees
    expected = np.rot90(frame_image(0, 64, 32), (rotation // 90) % 4)
    corner = [np.unravel_index(np.argmax(m.mean(2) > 200), m.shape[:2]) for m in (expected, img)]
    assert corner[0] == corner[1]


@pytest.mark.parametrize("codec,suffix,pix_fmt", [("libx265", "mp4", "yuv420p"),
                                                   ("libvpx-vp9", "webm", "yuv420p"),
                                                   ("mjpeg", "avi", "yuvj420p")])
def test_other_codecs(tmp_path, codec, suffix, pix_fmt):
    path = write_video(tmp_path / f"c.{suffix}", n=6, codec=codec, pix_fmt=pix_fmt)
    got = list(iter_frames(path))
    assert len(got) == 6
    assert [index_of(img) for _, _, img in got] == list(range(6))


def write_webm_with_opus(path: Path, *, n: int, fps: int = 25) -> Path:
    """VP9 + Opus in WebM, as a browser's recorder or `ffmpeg -c:a libopus` writes it: Matroska
    declares no per-stream duration, and its container's covers the audio too."""
    import av

    with av.open(str(path), "w", options={"cluster_time_limit": "500"}) as out:  # 0.5 s clusters
        vs = out.add_stream("libvpx-vp9", rate=fps, options={"threads": "1", "g": str(fps)})
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        st = out.add_stream("libopus", rate=48000, layout="mono")
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(frame_image(k, 64, 48), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        wave = (0.1 * np.sin(np.arange(int(n / fps * 48000)) * 0.05)).astype(np.float32)
        for i in range(0, len(wave), 960):
            fr = av.AudioFrame.from_ndarray(wave[None, i: i + 960].copy(), format="flt",
                                            layout="mono")
            fr.sample_rate, fr.pts = 48000, i
            out.mux(st.encode(fr))
        out.mux(st.encode())
    return path


def test_webm_with_audio_has_a_duration(tmp_path):
    """Matroska gives no per-stream duration: the clip's length (the manifest's duration_s,
    predict's "the clip is 0.3 s long" and audio-cut warnings, train's clip-length span) was NaN
    for every WebM / MKV with a sound track, so those warnings never fired for one."""
    from stages.ingest import probe_video

    path = write_webm_with_opus(tmp_path / "clip.webm", n=10)
    assert probe(path).duration_s == pytest.approx(10 / 25, abs=0.005)
    assert probe_video(path)["duration_s"] == pytest.approx(0.4, abs=0.005)

def test_dv_frame_rate_is_the_codecs_not_the_clock(tmp_path):
    """A DV file's average rate is its 1/60000 s time base (60000 fps): the manifest's fps, which
    the aus stage's OpenFace span check divides frame counts by, said 60000 for a 25 fps tape."""
    import av
    from stages.ingest import probe_video

    path = tmp_path / "tape.dv"
    with av.open(str(path), "w", format="dv") as out:
        vs = out.add_stream("dvvideo", rate=25)
        vs.width, vs.height, vs.pix_fmt = 720, 576, "yuv420p"  # DV's PAL frame
        for k in range(5):
            frame = av.VideoFrame.from_ndarray(frame_image(k, 720, 576), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    assert probe(path).fps == 25.0
    assert probe_video(path)["fps"] == 25.0
    assert [t for _, t, _ in iter_frames(path)] == pytest.approx([0, 0.04, 0.08, 0.12, 0.16])
    # a high-speed camera's rate is a rate, not a clock (a cap at 1000 fps made it nan)
    fast = write_video(tmp_path / "fast.mp4", n=5, fps=2000)
    assert probe(fast).fps == 2000.0



def test_bad_files_raise_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 50)
    audio = write_audio_only(tmp_path / "audio_only.m4a")
    for path, words in [(empty, "empty"), (junk, "junk.mp4"), (audio, "no video stream"),
                        (tmp_path / "missing.mp4", "not found")]:
        with pytest.raises(StageInputError, match=words):
            list(iter_frames(path))


def test_extract_video_resizes_and_encodes(tmp_path):
    path = write_video(tmp_path / "big.mp4", n=3, w=320, h=240)
    df, report = extract_video(video_id="v", path=path, params=FramesParams(max_side=160))
    assert list(df["frame_idx"]) == [0]  # 3 frames at 25 fps, one tick of 5 fps
    assert (df["width"].iloc[0], df["height"].iloc[0]) == (160, 120)
    assert decode_jpeg(df["jpeg"].iloc[0]).shape == (120, 160, 3)
    assert 1 <= report["decoded"] <= 3  # H.264: frames nobody keeps may be skipped undecoded


# --------------------------------------------------------------------------------------------------
# the stage


def manifest_for(root: Path, videos: dict[str, Path]) -> None:
    n = len(videos)
    write_manifest(pd.DataFrame({
        "video_id": list(videos), "path": [str(p) for p in videos.values()],
        "split": "train", "subject_id": list(videos), "dataset": "test",
        **{t: np.full(n, 0.5) for t in "OCEAN"}, "duration_s": np.ones(n), "fps": np.full(n, 25.0),
        "has_audio": np.zeros(n, bool)}), root)


def test_stage_survives_bad_inputs(tmp_path):
    """Truncated, empty, audio-only, one-frame, rotated and 4K files among good ones: each is
    processed correctly or reported by name, and the stage finishes for the others."""
    src = tmp_path / "src"
    src.mkdir()
    good = write_video(src / "good.mp4", n=30, fps=25)
    full = write_video(src / "full.mp4", n=40, w=160, h=120).read_bytes()
    (src / "truncated.mp4").write_bytes(full[: len(full) // 2])
    (src / "zero.mp4").write_bytes(b"")
    videos = {
        "good": good,
        "truncated": src / "truncated.mp4",
        "zero": src / "zero.mp4",
        "audio_only": write_audio_only(src / "audio_only.mp4"),
        "one_frame": write_video(src / "one.mp4", n=1),
        "rotated": write_video(src / "rotated.mp4", n=5, w=64, h=32, rotation=-90),
        "uhd": write_video(src / "uhd.mp4", n=2, w=3840, h=2160),
    }
    root = tmp_path / "root"
    manifest_for(root, videos)
    summary = run(FramesParams(fps=5, max_side=640), BaseParams(workers=2), root=root)
    frames = read_artifact("frames", path=root / "data" / "frames")
    by = {v: g for v, g in frames.groupby("video_id")}
    # a list, not a map: DVC would show each failed video as a column of its own
    failed = {row["video_id"]: row["error"] for row in summary["failed"]}
    assert len(failed) == len(summary["failed"]) and set(failed) >= {"zero", "audio_only"}
    assert "zero.mp4" in failed["zero"]
    assert "audio_only.mp4" in failed["audio_only"]
    # truncated: either some frames or reported by name, never silence
    assert "truncated" in by or "truncated.mp4" in failed["truncated"]
    assert list(by["good"]["frame_idx"]) == [0, 5, 10, 15, 20, 25]
    assert list(by["one_frame"]["frame_idx"]) == [0] and by["one_frame"]["t"].iloc[0] == 0.0
    assert (by["rotated"]["width"].iloc[0], by["rotated"]["height"].iloc[0]) == (32, 64)
    assert (by["uhd"]["width"].iloc[0], by["uhd"]["height"].iloc[0]) == (640, 360)
    assert decode_jpeg(by["uhd"]["jpeg"].iloc[0]).shape == (360, 640, 3)
    assert summary["n_failed"] == len(summary["failed"])
    assert (root / "metrics" / "frames.json").exists()


def test_a_video_over_its_time_limit_is_a_failed_row_and_the_others_go_on(tmp_path, monkeypatch):
    """The limit scales with the clip's duration (clips.parquet): at a scale of 1e-6 the
    0-second clip gets 0.6 ms from its start (seen within 0.2 s) and is stopped mid-decode (600
    frames at 640 x 480, about a second); the 1e9-second one keeps hours and decodes."""
    write_video(tmp_path / "good.mp4", n=10, fps=25)
    write_video(tmp_path / "hung.mp4", n=600, w=640, h=480, fps=25)
    manifest_for(tmp_path, {"good": tmp_path / "good.mp4", "hung": tmp_path / "hung.mp4"})
    clips = read_artifact("clips", path=tmp_path / "data" / "clips.parquet")
    clips["duration_s"] = [1e9, 0.0]
    clips.to_parquet(tmp_path / "data" / "clips.parquet", index=False)
    monkeypatch.setenv("PERSONALITY_TIME_LIMIT_SCALE", "1e-6")
    summary = run(FramesParams(), BaseParams(workers=2), root=tmp_path)
    [failed] = summary["failed"]
    assert failed["video_id"] == "hung"
    assert "ran over its time limit of 0 s and was stopped" in failed["error"]
    assert set(read_artifact("frames", path=tmp_path / "data" / "frames")["video_id"]) == {"good"}


def test_stage_fails_when_nothing_decodes(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    manifest_for(tmp_path, {"zero": tmp_path / "zero.mp4"})
    with pytest.raises(StageInputError, match="no video could be decoded"):
        run(FramesParams(), BaseParams(workers=1), root=tmp_path)
    assert not (tmp_path / "data" / "frames").exists()  # nothing half-written


def test_stage_on_tiny_dataset(tiny_dataset, tmp_path):
    manifest = read_artifact("manifest", path=tiny_dataset / "data" / "manifest.parquet")
    manifest_for(tmp_path, {r.video_id: tiny_dataset / r.path for r in manifest.itertuples()})
    summary = run(FramesParams(per_video=8), BaseParams(workers=1), root=tmp_path)
    frames = read_artifact("frames", path=tmp_path / "data" / "frames")
    assert summary["n_failed"] == 0
    assert frames.groupby("video_id").size().to_dict() == {v: 8 for v in manifest["video_id"]}
    assert (frames["width"] == 320).all() and (frames["height"] == 240).all()
    for _, g in frames.groupby("video_id"):
        assert g["t"].is_monotonic_increasing and g["frame_idx"].is_unique


def write_moving_h264(path: Path, n_frames: int = 60) -> Path:
    """An H.264 clip whose content moves, so that libx264 uses B-frames (64x48, 25 fps)."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (48, 256, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=Fraction(25), options={"bf": "3"})
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            img = np.ascontiguousarray(texture[:, 2 * i:2 * i + 64])
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
    return path


@pytest.mark.parametrize("sampling", [{"fps": 5.0}, {"per_video": 7}])
def test_skipping_frames_nobody_keeps_gives_the_same_frames(tmp_path, monkeypatch, sampling):
    """H.264: the packet scan plans the kept frames and the decoder skips the non-reference
    others; indices, times and pixels are those of a full decode, with fewer frames decoded
    (no_face.mp4's edit list discards 3 priming packets: they are not frames)."""
    from personality import video_io
    from tests.conftest import real_fixture

    for path in (write_moving_h264(tmp_path / "moving.mp4"), real_fixture("no_face.mp4"),
                 real_fixture("single_face.mp4")):
        skipped, full = {}, {}
        fast = list(iter_frames(path, report=skipped, **sampling))
        with monkeypatch.context() as m:
            m.setattr(video_io, "SKIPPABLE_CODECS", ())
            slow = list(iter_frames(path, report=full, **sampling))
        assert [(i, t) for i, t, _ in fast] == [(i, t) for i, t, _ in slow], path.name
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(fast, slow)), path.name
        assert skipped["decoded"] < full["decoded"] and skipped["errors"] == 0, path.name
        if "per_video" in sampling:
            assert len(fast) == 7, path.name  # every sample is a shown frame


def _mpegts(path: Path, n: int = 30) -> Path:
    """n frames of 64x48 H.264 at 25 fps in an MPEG-TS (~55 kB)."""
    import av

    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(n):
            image = av.VideoFrame.from_ndarray(frame_image(k, 64, 48), format="rgb24")
            for packet in stream.encode(image):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_a_damaged_stretch_of_an_mpegts_is_named_not_decoded_as_whole(tmp_path):
    """The TS demuxer resynchronises past zeroed bytes without an error: 40% of the file lost
    used to decode with errors 0 and no warning. The packets' times show the hole."""
    from stages.frames import damaged_video_note

    whole = _mpegts(tmp_path / "whole.ts")
    data = bytearray(whole.read_bytes())
    lo, hi = int(0.3 * len(data)), int(0.7 * len(data))
    data[lo:hi] = bytes(hi - lo)
    (tmp_path / "damaged.ts").write_bytes(data)
    _, report = extract_video(video_id="w", path=whole, params=FramesParams())
    assert "gaps" not in report
    _, report = extract_video(video_id="d", path=tmp_path / "damaged.ts", params=FramesParams())
    assert report["gaps"] == 1 and 0.3 < report["missing_s"] < 0.6 and report["errors"] == 0
    note = damaged_video_note(report, 4)
    assert "s of video missing in 1 stretch(es), the first at" in note

"""A cut MPEG-TS, M2TS, MPEG-PS, NUT or GIF file (containers that declare no length) is named as
cut by its bytes (personality/container_end.py), by the frames stage and by predict; a whole one
never is. The files are the face fixture's own packets remuxed (TS, M2TS, NUT) or re-encoded
small (MPEG-1 in MPEG-PS, GIF), then cut at many places.

    pytest tests/test_container_end.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personality.container_end import cut_short
from personality.video_io import iter_frames
from tests.conftest import real_fixture
from tests.test_predict_inputs import cut_remux, frames_summary, predicted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TS_PACKET = {"ts": 188, "m2ts": 192}


def encoded(path: Path, fmt: str, codec: str, pix_fmt: str) -> Path:
    """The face fixture's frames re-encoded at 96x72, 25 fps, into `path`."""
    import av

    with av.open(str(real_fixture("single_face.mp4"))) as src, \
            av.open(str(path), "w", format=fmt) as dst:
        stream = dst.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 72, pix_fmt
        for i, frame in enumerate(src.decode(video=0)):
            rgb = frame.to_ndarray(width=96, height=72, format="rgb24")
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            out.pts = i
            for packet in stream.encode(out):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return path


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict[str, Path]:
    """kind -> a whole file of that kind."""
    folder = tmp_path_factory.mktemp("whole")
    made = {}
    for kind, options in (("ts", {"format": "mpegts"}), ("nut", {"format": "nut"}), (
            "m2ts", {"format": "mpegts", "options": {"mpegts_m2ts_mode": "1"}})):
        (folder / kind).mkdir()
        cut_remux(folder / kind, f"cut.{kind}", **options)  # writes whole.<kind> beside it
        made[kind] = folder / kind / f"whole.{kind}"
    made["mpg"] = encoded(folder / "whole.mpg", "mpeg", "mpeg1video", "yuv420p")
    made["gif"] = encoded(folder / "whole.gif", "gif", "gif", "rgb8")
    return made


def cuts(data: bytes, folder: Path, suffix: str, n: int = 60) -> list[tuple[int, Path]]:
    """`n` files of `data` cut at evenly spaced places past its first kB, and odd places."""
    places = np.unique(np.r_[np.linspace(1024, len(data) - 1, n).astype(int), len(data) - 1])
    out = []
    for k in places:
        (folder / f"{k}{suffix}").write_bytes(data[:k])
        out.append((int(k), folder / f"{k}{suffix}"))
    return out


def test_whole_files_are_not_cut(whole, tmp_path):
    for kind, path in whole.items():
        assert cut_short(path) is None, kind
    for name in ("single_face.mp4", "no_face.mp4", "librivox_speech_16k.wav"):
        assert cut_short(real_fixture(name)) is None, name
    (tmp_path / "empty.ts").write_bytes(b"")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    assert cut_short(tmp_path / "empty.ts") is None and cut_short(tmp_path / "noise.bin") is None


@pytest.mark.parametrize("kind", ["ts", "m2ts"])
def test_a_transport_stream_cut_inside_a_packet_is_named(whole, tmp_path, kind):
    """Every cut off a packet boundary is named with the bytes into its packet; one on a
    boundary leaves whole packets, which no check can tell from a whole file, and so does one
    inside an M2TS packet's 4-byte time stamp, before its sync byte."""
    packet, before_sync = TS_PACKET[kind], 4 if kind == "m2ts" else 0
    for k, path in cuts(whole[kind].read_bytes(), tmp_path, "." + kind):
        into = k % packet
        assert cut_short(path) == (f"ends {into} bytes into a {packet}-byte transport-stream "
                                   "packet" if into > before_sync else None)
    boundary = tmp_path / f"boundary.{kind}"
    boundary.write_bytes(whole[kind].read_bytes()[:packet * 20])
    assert cut_short(boundary) is None


def test_a_nut_file_cut_anywhere_lacks_its_index(whole, tmp_path):
    for _, path in cuts(whole["nut"].read_bytes(), tmp_path, ".nut"):
        assert cut_short(path).startswith("ends without the index a whole NUT file closes with")


def test_a_gif_cut_anywhere_lacks_its_trailer(whole, tmp_path):
    data = whole["gif"].read_bytes()
    said = {cut_short(path) for _, path in cuts(data, tmp_path, ".gif")}
    assert None not in said and all(s.endswith(", without the GIF trailer") for s in said)
    assert "ends inside image 1, without the GIF trailer" in said
    (tmp_path / "last.gif").write_bytes(data[:-1])  # every image whole, the trailer gone
    assert cut_short(tmp_path / "last.gif").startswith("ends after ")


@pytest.mark.parametrize("copies", [1, 60])
def test_a_program_stream_cut_inside_a_unit_is_named(whole, tmp_path, copies):
    """MPEG-PS: cut inside a pack or packet, the walk names it. 60 copies end to end (one
    longer program stream, past the 256 kB the walk reads back) start the walk mid-payload."""
    data = whole["mpg"].read_bytes() * copies
    said = [(k, cut_short(path)) for k, path in cuts(data, tmp_path, ".mpg", n=120)]
    missed = [k for k, s in said if s is None]
    # a cut on a unit boundary leaves whole units, which no check tells from a whole file; on
    # this file none of the 120 places is one, but a new encoder may move the units a little
    assert len(missed) <= 1, missed
    assert all(s.startswith("ends inside an MPEG program-stream ") for _, s in said if s)
    (tmp_path / "whole.mpg").write_bytes(data)
    assert cut_short(tmp_path / "whole.mpg") is None


def test_the_decoder_marks_a_cut_file_truncated_and_says_why(whole, tmp_path):
    for kind in ("ts", "nut", "gif"):
        data = whole[kind].read_bytes()
        (tmp_path / f"cut.{kind}").write_bytes(data[: int(len(data) * 0.4) + 7])
        report: dict = {}
        assert list(iter_frames(tmp_path / f"cut.{kind}", fps=8.0, max_side=32, report=report))
        assert report["truncated"] and report["cut"] == cut_short(tmp_path / f"cut.{kind}")
        report = {}
        list(iter_frames(whole[kind], fps=8.0, max_side=32, report=report))
        assert not report["truncated"] and "cut" not in report, kind


def test_the_frames_stage_and_predict_name_a_cut_transport_stream(whole, tmp_path):
    cut = tmp_path / "cut.ts"
    cut.write_bytes(whole["ts"].read_bytes()[: 188 * 300 + 40])
    (tmp_path / "stage").mkdir()
    [warning] = frames_summary(tmp_path / "stage", cut, whole["ts"])["warnings"]
    assert warning["video_id"] == "cut" and warning["warning"].startswith(
        "the video stream breaks off early (the file ends 40 bytes into a 188-byte "
        "transport-stream packet): scores rest on the ")

    result = predicted(cut, tmp_path / "predict")
    assert result["truncated"] is True and "ends_at_s" not in result
    said = [w for w in result["warnings"] if "truncated" in w or "breaks off" in w]
    assert said == ["the file ends 40 bytes into a 188-byte transport-stream packet: it looks "
                    "truncated"], result["warnings"]


def test_bytes_after_the_last_whole_unit_that_start_none_are_no_cut(whole, tmp_path):
    """A whole file with an ID3 tag, a newline or zero padding after it is whole: the part
    after a TS's last packet starts with no sync byte, a program stream's is zeros, a GIF's
    follows its trailer. A NUT file without its index is named, saying why it may lack one."""
    for kind, tail in (("ts", b"\n"), ("ts", b"ID3\x04\x00" + bytes(30)), ("m2ts", bytes(7)),
                       ("mpg", bytes(2)), ("mpg", bytes(700)), ("gif", bytes(9))):
        (tmp_path / f"padded.{kind}").write_bytes(whole[kind].read_bytes() + tail)
        assert cut_short(tmp_path / f"padded.{kind}") is None, (kind, tail[:5])
    data = whole["nut"].read_bytes()
    (tmp_path / "no_index.nut").write_bytes(data[:len(data) - 12])
    assert cut_short(tmp_path / "no_index.nut").endswith("told to: -write_index 0)")


def test_a_gif_of_one_gif_per_frame_is_walked_whole(tmp_path):
    """FFmpeg's `gifimage` option writes a whole GIF (header and all) per frame, the trailer
    after the last: a header where a block should be starts the next frame's."""
    import av

    path = tmp_path / "frames.gif"
    with av.open(str(path), "w", format="gif") as dst:
        stream = dst.add_stream("gif", rate=10, options={"gifimage": "1"})
        stream.width, stream.height, stream.pix_fmt = 32, 24, "rgb8"
        for i in range(6):
            image = np.full((24, 32, 3), 40 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="rgb8")
            frame.pts = i
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    data = path.read_bytes()
    assert data.count(b"GIF89a") == 6 and cut_short(path) is None
    for k in np.linspace(len(data) // 6, len(data) - 1, 20).astype(int):
        (tmp_path / "cut.gif").write_bytes(data[:k])
        assert cut_short(tmp_path / "cut.gif").endswith("without the GIF trailer"), k


def test_a_crafted_program_stream_tail_is_walked_once(tmp_path, monkeypatch):
    """256 kB of pack headers that end in junk: every one starts a walk to the end, which
    re-walked the same units from each (quadratic: ~100 s). A walk that reaches a place an
    earlier one lost its way from stops there, so each unit is parsed about once."""
    from personality import container_end

    pack = b"\x00\x00\x01\xba" + bytes([0x44, 0, 4, 0, 4, 1, 0, 0, 3, 0xF8])  # MPEG-2, 14 bytes
    (tmp_path / "crafted.mpg").write_bytes(pack * (256 * 1024 // 14) + b"\xff" * 4)
    parsed = []
    real = container_end._ps_unit
    monkeypatch.setattr(container_end, "_ps_unit", lambda tail, pos: (
        parsed.append(pos), real(tail, pos))[1])
    assert cut_short(tmp_path / "crafted.mpg") is None  # no walk reaches the end: can't tell
    assert len(parsed) < 3 * (256 * 1024 // 14), len(parsed)

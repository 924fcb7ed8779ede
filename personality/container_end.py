"""Whether a media file's bytes stop where a whole file of its kind could not: the cut-off check
for containers that declare no length anywhere (MPEG-TS / M2TS, MPEG-PS, NUT, GIF).

A file cut off part-way (a half-finished download or copy, a recording that lost power) decodes
without an error, and where the container declares its length `video_io.ends_short` compares the
two. These four declare none, so a cut one read as a shorter whole video. Each does end in a
known way, which its bytes show without decoding anything:

- MPEG-TS: a whole file is whole 188-byte packets (192 in M2TS / AVCHD, 204 with Reed-Solomon
  bytes); a cut one ends inside a packet, which starts with its sync byte (bytes after the last
  packet that do not, an ID3 tag or padding, are no cut). A cut on a packet boundary passes:
  1 in 188 places, 1 in 47 of those on 4 KiB blocks (1 in 3 for M2TS).
- MPEG-PS (.mpg, .vob): packs and packets that state their own length; a cut one ends inside
  one. Walked from a pack header near the end (`_PS_TAIL` bytes), checked against the walk.
  FFmpeg writes 2048-byte packs, so a cut on a 2 or 4 KiB boundary (a disk block, a write
  buffer: where copies and downloads often stop) leaves whole packs and passes.
- NUT: closes with its index, whose last 12 bytes point back to the index's start code; FFmpeg
  writes it even to a pipe, unless told not to (`-write_index 0`: such a whole file is named).
- GIF: a chain of blocks closed by the trailer byte 0x3B; a cut one ends inside an image's data.

    from personality.container_end import cut_short
    cut_short("clip.ts")  # "ends 40 bytes into a 188-byte transport-stream packet", or None

Only the header's magic bytes choose the check (a file of another kind gets None), and nothing
is decoded: MPEG-TS and NUT read a few bytes at either end, MPEG-PS its last 256 kB, a GIF's
walk touches every page of the file (0.6 s for 200 MiB). Not told apart: raw streams (H.264,
HEVC, MPEG video), Ogg, cuts in a file's first kB. `python -m pytest tests/test_container_end.py`
exercises it.

Damage inside a file is the other thing a TS / PS demuxer hides: it resynchronises past bad
bytes without an error. `missing_stretches` finds the hole from the packets' times (iter_frames
reports it; the frames stage and predict warn).
"""
from __future__ import annotations

import mmap
import os
import numpy as np
from pathlib import Path

__all__ = ["cut_short"]

_TS_SYNC = 0x47
# (packet size, bytes before the sync byte): plain TS, M2TS's 4-byte arrival time stamp first,
# TS with 16 Reed-Solomon bytes after each packet
_TS_LAYOUTS = ((188, 0), (192, 4), (204, 0))
_PS_PACK, _PS_END = 0xBA, 0xB9  # MPEG-PS start codes 00 00 01 xx: pack header, program end
_PS_TAIL = 256 * 1024  # the bytes an MPEG-PS walk reads back from the end (packs are ~2 kB)
_NUT_MAGIC = b"nut/multimedia container\0"
_NUT_INDEX = bytes.fromhex("4e58dd672f23e64e")  # the NUT index's start code, "NX" + 6 bytes
_GIF_TRAILER, _GIF_IMAGE, _GIF_EXTENSION = 0x3B, 0x2C, 0x21
_GIF_MAGIC = (b"GIF87a", b"GIF89a")


def cut_short(path: str | os.PathLike) -> str | None:
    """Why `path` ends where no whole file of its kind ends, in plain words ("ends 40 bytes into
    a 188-byte transport-stream packet"), else None: whole, or a kind this cannot tell."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(1024)
        size = os.fstat(f.fileno()).st_size
        if head.startswith(_GIF_MAGIC):
            return _gif_cut(f, size)
        if head.startswith(_NUT_MAGIC):
            return _nut_cut(f, size)
        if head.startswith(b"\x00\x00\x01\xba"):
            return _ps_cut(f, size)
        layout = _ts_layout(head)
        return _ts_cut(f, size, layout) if layout else None


# --------------------------------------------------------------------------------------------------
# MPEG-TS


def _ts_layout(head: bytes) -> tuple[int, int] | None:
    """(packet size, where the first packet starts) when `head` reads as a transport stream:
    the sync byte at the same place in four packets running (three when the head holds no
    more); None otherwise."""
    for size, before_sync in _TS_LAYOUTS:
        for sync in range(before_sync, size):
            seen = range(sync, len(head), size)
            if len(seen) >= 3 and all(head[i] == _TS_SYNC for i in seen[:4]):
                return size, sync - before_sync
    return None


def _ts_cut(f, size: int, layout: tuple[int, int]) -> str | None:
    """The last whole packet and the part after it must each start with a sync byte: else the
    stream lost its way before the end, or the bytes after it are no packet (an ID3 tag, a
    newline, padding): no cut to name."""
    packet, start = layout
    left = (size - start) % packet
    before_sync = 4 if packet == 192 else 0
    last_whole = size - left - packet
    if not left or left <= before_sync or last_whole < start:
        return None
    for packet_start in (last_whole, size - left):
        f.seek(packet_start + before_sync)
        if f.read(1) != bytes([_TS_SYNC]):
            return None
    return f"ends {left} bytes into a {packet}-byte transport-stream packet"


# --------------------------------------------------------------------------------------------------
# MPEG-PS


def _ps_unit(tail: bytes, pos: int) -> tuple[str, int] | None:
    """(what starts at `pos`, its length in bytes; 0 when too few bytes are left to say) of an
    MPEG-PS unit: a pack header, the program end code, or a packet with a 16-bit length (system
    header, PES); None when no unit starts there."""
    if tail[pos:pos + 3] != b"\x00\x00\x01":  # or fewer bytes left than a start code's
        return ("start code", 0) if b"\x00\x00\x01".startswith(tail[pos:]) else None
    if pos + 4 > len(tail):
        return "start code", 0
    code = tail[pos + 3]
    if code == _PS_END:
        return "program end code", 4
    if code == _PS_PACK:
        if pos + 14 > len(tail):
            return "pack header", 0
        mpeg2 = tail[pos + 4] & 0xC0 == 0x40  # MPEG-1 packs: '0010' there, 12 bytes, no stuffing
        if not mpeg2 and tail[pos + 4] & 0xF0 != 0x20:
            return None
        return "pack header", (14 + (tail[pos + 13] & 7)) if mpeg2 else 12
    if code < 0xBB:  # not a system start code: a video start code, or no unit at all
        return None
    if pos + 6 > len(tail):
        return "packet", 0
    length = int.from_bytes(tail[pos + 4:pos + 6], "big")
    return ("packet", 6 + length) if length else None  # 0 (unbounded): TS only, not here


def _ps_walk(tail: bytes, pos: int, lost: set[int]) -> tuple[str | None, int] | None:
    """Walk MPEG-PS units from `pos` to the end of `tail`: (None when the last unit ends with
    it, or only zero bytes follow it, else why it ends inside one; the units walked), or None
    when the walk loses its way. `lost`: the places earlier walks lost their way from; this
    walk's are added (a walk from there goes the same way: the scan stays linear)."""
    units, seen = 0, []
    while pos < len(tail):
        if units and tail[pos] == 0 and tail[pos:pos + 3] != b"\x00\x00\x01":
            ahead = tail.find(b"\x00\x00\x01", pos)  # zero stuffing (the VCD muxer's), or
            if ahead < 0 and not tail[pos:].strip(b"\x00"):  # the file's zero padding
                break
            if ahead > pos and not tail[pos:ahead].strip(b"\x00"):
                pos = ahead
        unit = None if pos in lost else _ps_unit(tail, pos)
        seen.append(pos)
        if unit is None:
            lost.update(seen)
            return None
        kind, length = unit
        if not length or pos + length > len(tail):
            have = len(tail) - pos
            return (f"ends inside an MPEG program-stream {kind} ({have} of its {length} bytes)"
                    if length else f"ends inside an MPEG program-stream {kind}"), units
        pos, units = pos + length, units + 1
    return None, units


def _ps_cut(f, size: int) -> str | None:
    """Walk from the first pack header in the last `_PS_TAIL` bytes that leads a walk of two
    units or more (a start code inside a packet's payload rarely does), or from the file's
    start: that walk's answer."""
    offset = max(0, size - _PS_TAIL)
    f.seek(offset)
    tail, lost = f.read(), set()
    pos = 0 if offset == 0 else tail.find(b"\x00\x00\x01\xba")
    while pos >= 0:
        walked = _ps_walk(tail, pos, lost)
        if walked is not None and (walked[1] >= 2 or offset + pos == 0):
            return walked[0]
        pos = tail.find(b"\x00\x00\x01\xba", pos + 1)
    return None


# --------------------------------------------------------------------------------------------------
# NUT


def _nut_cut(f, size: int) -> str | None:
    """A whole NUT file ends with its index: u64 index_ptr (bytes from the index's start code to
    the end of the file), then a 32-bit checksum."""
    if size >= 12 + len(_NUT_MAGIC):
        f.seek(size - 12)
        back = int.from_bytes(f.read(8), "big")
        if 12 < back <= size - len(_NUT_MAGIC):
            f.seek(size - back)
            if f.read(len(_NUT_INDEX)) == _NUT_INDEX:
                return None
    return ("ends without the index a whole NUT file closes with (FFmpeg leaves it out only "
            "when told to: -write_index 0)")


# --------------------------------------------------------------------------------------------------
# GIF


def _gif_cut(f, size: int) -> str | None:
    """Walk the GIF's blocks: header and screen descriptor (with its colour table), then images
    and extensions (each a run of length-prefixed sub-blocks ended by a 0) up to the trailer.
    A header where a block should be starts another GIF (FFmpeg's `gifimage` option writes
    one per frame, the trailer after the last)."""
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos, images, block = _after_header(data, 0), 0, _GIF_TRAILER
        while pos < size:
            block = data[pos]
            if data[pos:pos + 6] in _GIF_MAGIC:  # the next frame's GIF (gifimage)
                pos, block = _after_header(data, pos), _GIF_TRAILER
            elif block == _GIF_TRAILER:  # the end; bytes after it (padding) are no cut
                return None
            elif block == _GIF_EXTENSION:
                pos = _sub_blocks(data, pos + 2)
            elif block == _GIF_IMAGE:
                images += 1
                descriptor_end = pos + 10
                pos = _sub_blocks(data, descriptor_end + (
                    _colour_table(data[pos + 9]) + 1 if descriptor_end <= size else 0))
            else:
                return None  # not a block: damage inside, which decoding reports
    if pos == size:
        return f"ends after {images} image(s), without the GIF trailer"
    inside = {_GIF_IMAGE: f"image {images}", _GIF_EXTENSION: f"a block after image {images}",
              _GIF_TRAILER: "a GIF header or its colour table"}[block]
    return f"ends inside {inside}, without the GIF trailer"


def _after_header(data, pos: int) -> int:
    """Where the blocks start after a GIF header and screen descriptor at `pos` (with its
    global colour table); past the file's end when it ends inside them."""
    if pos + 13 > len(data):
        return len(data) + 1
    return pos + 13 + _colour_table(data[pos + 10])


def _colour_table(packed: int) -> int:
    """Bytes of the colour table a GIF descriptor's packed field announces (0: none)."""
    return 3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0


def _sub_blocks(data, pos: int) -> int:
    """Where a run of GIF sub-blocks starting at `pos` ends, past its 0 terminator; past the
    file's end (len(data) + 1 or more) when the file ends inside it."""
    size = len(data)
    while pos < size:
        length = data[pos]
        pos += 1 + length
        if not length:
            return pos
    return max(pos, size + 1)


# A stretch between two packets' times longer than this many frame periods (and GAP_MIN_S) is
# video missing from the stream: an MPEG-TS / PS demuxer resynchronises past damaged bytes
# without an error, so 0.6 s of lost frames would otherwise decode as if whole
GAP_PERIODS, GAP_MIN_S = 4.0, 0.2


def missing_stretches(pts: list[int], time_base) -> dict:
    """Stretches of a stream with no packet: {"gaps": how many, "missing_s": their length less
    one frame period each, "gap_at_s": the first one's start in seconds from the first packet},
    or {} when there is none. `pts`: the packets' presentation times in `time_base` units, in
    any order (video_io.iter_frames collects them while it decodes; for a clock that may jump,
    the frames' own times, time_base 1). The frame period is the median step, so a variable
    frame rate's jitter is no gap."""
    if len(pts) < 3 or not time_base:
        return {}
    t = np.sort(np.asarray(pts, np.float64)) * float(time_base)
    step = np.diff(t)
    period = float(np.median(step[step > 0])) if (step > 0).any() else 0.0
    gaps = step > max(GAP_PERIODS * period, GAP_MIN_S)
    if period <= 0 or not gaps.any():
        return {}
    return {"gaps": int(gaps.sum()), "missing_s": round(float((step[gaps] - period).sum()), 3),
            "gap_at_s": round(float(t[:-1][gaps][0] - t[0]), 3)}

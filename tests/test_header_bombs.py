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


def _h264(path, width: int, height: int, n_frames: int) -> bytes:
    """Raw H.264 (annex B) of `n_frames` black frames: streams of two sizes concatenated are one
    stream that changes size where the second begins."""
    import av

    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8),
                                               format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def test_a_video_over_8k_is_refused_by_its_header_and_mid_stream(tmp_path):
    """A frame's size costs far more than its bytes: a 415 KB H.264 file of 30 all-skip
    12000x12000 frames took 19 s and 740 MB to decode. A 4 KB Y4M file declaring that size is
    refused on its header (probe read it as a 12000x12000 video before); a stream that turns
    33.4 Mpx after 12 s of 64x48 (which probe's header sees) stops at that frame."""
    from personality.video_io import iter_frames, probe

    y4m = tmp_path / "huge.y4m"
    y4m.write_bytes(b"YUV4MPEG2 W12000 H12000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096))
    with pytest.raises(StageInputError, match=r"huge\.y4m: frames of 12000x12000 pixels "
                                              r"\(144\.0 Mpx\), over the 33\.2 Mpx of 8K"):
        probe(y4m)
    grows = tmp_path / "grows.h264"
    grows.write_bytes(_h264(tmp_path / "a.h264", 64, 48, 300)
                      + _h264(tmp_path / "b.h264", 7696, 4336, 1))
    assert (probe(grows).width, probe(grows).height) == (64, 48)
    kept = []
    with pytest.raises(StageInputError, match=r"grows\.h264: frames of 7696x4336 pixels"):
        kept.extend(iter_frames(grows, max_side=640))
    assert len(kept) == 300


def test_a_labels_csv_of_100000_columns_is_refused_by_its_header(tmp_path):
    """A labels CSV (folder / OpenFace labels, UDIVA parts and sessions, PerFeX) was parsed whole
    whatever its width, and its repeated-column check counted every column against every other:
    a crafted 1.3 MB CSV of 10,000 columns and 3 rows took 205 s in read_table (3.1 s in the
    folder source's reader), 100,000 columns hours. Over 5000 columns (OpenFace's own check) it
    is refused by its first line, naming the file and the count, in ingest's readers and in the
    inputs stage's; a wide one under the limit is read in well under a second."""
    import time

    from personality.csv_tables import read_table
    from personality.datasets_au import labels_records
    from stages.inputs import fingerprint

    def write(n_columns: int, repeated: str = "") -> object:
        path = tmp_path / f"labels_{n_columns}.csv"
        header = ["ID", "video", "O", "C", "E", "A", "N"]
        header += [f"x{i}" for i in range(n_columns - len(header) - bool(repeated))]
        header += [repeated] if repeated else []
        row = ["p1", "a.mp4", "0.5", "0.5", "0.5", "0.5", "0.5"] + ["1"] * (n_columns - 7)
        path.write_text(",".join(header) + "\n" + "\n".join([",".join(row)] * 3) + "\n")
        return path

    wide = write(100_000)
    message = (r"labels_100000\.csv: a header of 100000 columns, over 5000 \(a labels CSV has "
               r"tens, PerFeX's AU CSV under a hundred\); not read")
    start = time.perf_counter()
    with pytest.raises(StageInputError, match=message):
        read_table(wide, ["ID"])
    with pytest.raises(StageInputError, match=message):
        labels_records(wide)
    ingest = {"source": "folder", "folder": {"labels": str(wide)}}
    assert fingerprint(ingest, tmp_path)["n_files"] == 1  # the CSV hashed; no video listed
    assert time.perf_counter() - start < 2.0
    # under the limit: read, and a repeated column found without comparing every pair
    start = time.perf_counter()
    assert read_table(write(4000), ["ID"]).shape == (3, 4000)
    with pytest.raises(StageInputError, match=r"column\(s\) x0 given twice"):
        read_table(write(4001, repeated="x0 "), ["ID"])  # pandas renames an exact repeat
    with pytest.raises(StageInputError, match=r"column\(s\) x0 given twice"):
        labels_records(tmp_path / "labels_4001.csv")
    assert time.perf_counter() - start < 5.0


def test_a_csv_cell_or_row_over_its_limit_is_refused_by_line_before_pandas_reads_it(tmp_path):
    """pandas holds any cell whole: a labels CSV with one 200 MB cell took 2.4 s and 700 MB to
    read, and was accepted; an OpenFace CSV with one, 0.75 s and 310 MB. A cell over 64 Ki
    characters, or a row over 1 MiB (a line is read that far at most), is refused naming the
    file, the line and the limit, in every reader of a CSV, and a cell at the limit is read.
    Small files here: a 20 MB row costs the readers under 4 MB (it was read whole)."""
    import tracemalloc

    from personality.common import MAX_CELL_CHARS
    from personality.csv_tables import read_table
    from personality.datasets_au import is_perfex_sequences, labels_records
    from personality.openface import read_openface_csv
    from personality.schemas import AU_INTENSITY, AU_PRESENCE

    def labels(name: str, cell: str) -> object:
        path = tmp_path / name
        path.write_text(f"file,O,C,E,A,N\n\na.csv,0.5,0.5,0.5,0.5,0.5\n{cell},1,1,1,1,1\n")
        return path

    limits = r" characters \(a CSV here holds ids, paths and numbers: a cell at most 65,536"
    for path, what in ((labels("cell.csv", "x" * (MAX_CELL_CHARS + 1)), "a cell over 65,536"),
                       (labels("quoted.csv", '"' + "x,\n" * 50_000 + '"'), "a cell over 65,536"),
                       (labels("row.csv", "x" * 20_000_000), "a row over 1,048,576")):
        for read in (lambda p: read_table(p, ["file"]), labels_records):
            tracemalloc.start()
            with pytest.raises(StageInputError, match=rf"{path.name}: line 4: {what}{limits}"):
                read(path)
            assert tracemalloc.get_traced_memory()[1] < 4e6
            tracemalloc.stop()
    assert read_table(labels("limit.csv", "x" * MAX_CELL_CHARS), ["file"]).shape == (2, 6)
    # PerFeX's retraining CSV: its layout told by its header (pandas read a 200 MB header cell
    # whole: 3.1 s, 1.5 GB), then read_table says what is wrong
    (tmp_path / "study.csv").write_text("ID,File," + "x" * 20_000_000 + ",openness\n0,a,1,1\n")
    tracemalloc.start()
    assert not is_perfex_sequences(tmp_path / "study.csv")
    assert tracemalloc.get_traced_memory()[1] < 4e6
    tracemalloc.stop()
    # an OpenFace CSV: its bytes looked at first (no quote, no long line: the csv module not run)
    columns = ["frame", "timestamp", "confidence", "success", *AU_INTENSITY, *AU_PRESENCE, "x"]
    first, second = (",".join([str(k), f"{k / 25}", "0.9", "1"] + ["0.5"] * 34) for k in (1, 2))
    for name, cell in (("long.csv", "1" * (MAX_CELL_CHARS + 1)), ("ok.csv", "1" * 1000),
                       ("q.csv", '"' + "1,\n" * 30_000 + '"')):
        path = tmp_path / name
        path.write_text(f"{','.join(columns)}\n{first},1\n{second},{cell}\n")
        if name == "ok.csv":
            assert len(read_openface_csv(path, video_id="ok")) == 2
            continue
        with pytest.raises(StageInputError, match=rf"{name}: line 3: a cell over 65,536{limits}"):
            read_openface_csv(path, video_id="x")


def test_a_row_at_the_limit_is_read_whatever_ends_its_line(tmp_path):
    """A row of exactly MAX_ROW_CHARS characters is not over the limit: it is read whether its
    line ends with \\n, \\r\\n, \\r or the file's end (the terminator is no part of the row), and
    one character more is refused, as the message says ("a row over 1,048,576")."""
    from personality.common import MAX_ROW_CHARS
    from personality.csv_tables import csv_records

    row = ",".join(["y" * 65_000] * 16)  # cells under MAX_CELL_CHARS
    row += "," + "z" * (MAX_ROW_CHARS - len(row) - 1)  # (1,048,576 characters)
    for end in ("\n", "\r\n", "\r", ""):
        path = tmp_path / f"row{len(end)}{end == chr(13)}.csv"
        path.write_bytes(f"a{end or chr(10)}{row}{end}".encode())
        assert [(line, len(text.rstrip("\r\n"))) for line, _, text in csv_records(path)] == [
            (1, 1), (2, MAX_ROW_CHARS)], repr(end)
        path.write_bytes(f"a{end or chr(10)}{row}z{end}".encode())
        with pytest.raises(StageInputError, match="line 2: a row over 1,048,576"):
            list(csv_records(path))

"""The inputs stage: its fingerprint moves when a label or a video the source reads changes, and
only then; `dvc repro` re-ingests exactly then (tests/test_pipeline_sources.py runs the folder
source through DVC)."""
from __future__ import annotations

import os

from stages import inputs
from tests.conftest import write_video


def _dataset(tmp_path):
    write_video(tmp_path / "clips" / "a.mp4", n_frames=5)
    write_video(tmp_path / "clips" / "b.mp4", n_frames=5)
    csv = tmp_path / "labels.csv"
    csv.write_text("video,O,C,E,A,N\nclips/a.mp4,0.5,0.5,0.5,0.5,0.5\n"
                   "clips/b.mp4,0.5,0.5,0.5,0.5,0.5\nclips/gone.mp4,,,,,\n")
    return {"source": "folder", "folder": {"labels": str(csv)}}, csv


def test_fingerprint_follows_labels_and_videos(tmp_path):
    params, csv = _dataset(tmp_path)
    first = inputs.fingerprint(params, tmp_path)
    assert first["n_files"] == 4  # the CSV and the three videos it names
    assert first["files"]["clips/gone.mp4"] == {"missing": True}  # relative to the repository
    assert inputs.fingerprint(params, tmp_path) == first  # nothing changed: same bytes

    csv.write_text(csv.read_text().replace("clips/a.mp4,0.5", "clips/a.mp4,0.9"))
    relabelled = inputs.fingerprint(params, tmp_path)
    assert relabelled != first

    video = tmp_path / "clips" / "b.mp4"
    write_video(video, n_frames=7)  # replaced by another clip
    os.utime(video, ns=(1, 1))
    assert inputs.fingerprint(params, tmp_path)["files"]["clips/b.mp4"] != \
        relabelled["files"]["clips/b.mp4"]


def test_a_labels_file_saved_by_excel_still_fingerprints_its_videos(tmp_path):
    """A BOM (Excel's "CSV UTF-8") made the header's first column "\ufeffvideo": no video was
    fingerprinted, and a replaced clip never re-ran ingest (whose own parser reads the BOM)."""
    params, csv = _dataset(tmp_path)
    plain = inputs.fingerprint(params, tmp_path)
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes().replace(b"video,", b"video ,", 1))
    bom = inputs.fingerprint(params, tmp_path)
    assert bom["n_files"] == 4 and {k for k in bom["files"] if k.endswith(".mp4")} == \
        {k for k in plain["files"] if k.endswith(".mp4")}


def test_rows_ingest_refuses_never_crash_the_fingerprint(tmp_path):
    """A row naming a loop of links or holding a NUL byte is ingest's to report (it drops the
    row); the inputs stage, which runs first, crashed on both and nothing ran."""
    params, csv = _dataset(tmp_path)
    (tmp_path / "clips" / "loop.mp4").symlink_to("loop.mp4")
    csv.write_text(csv.read_text() + "clips/loop.mp4,,,,,\nclips/n\x00ul.mp4,,,,,\n")
    files = inputs.fingerprint(params, tmp_path)["files"]
    assert sum(v == {"missing": True} for v in files.values()) == 3  # gone, loop, NUL


def test_stage_writes_data_inputs_json(tmp_path):
    params, _ = _dataset(tmp_path)
    result = inputs.run(params, root=tmp_path)
    assert (tmp_path / "data" / "inputs.json").is_file() and result["source"] == "folder"
    synthetic = inputs.fingerprint({"source": "synthetic"}, tmp_path)
    assert synthetic["n_files"] == 2 and all("sha256" in e for e in synthetic["files"].values())


def test_the_fingerprint_is_the_same_in_another_checkout(tmp_path):
    """Keys relative to the repository (the packaged face photos by name): a clone elsewhere, or
    a queued experiment's temporary copy, must not re-run ingest for nothing."""
    import shutil

    params, csv = _dataset(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    moved = {"source": "folder", "folder": {"labels": "labels.csv"}}
    one = inputs.fingerprint(moved, tmp_path / "one")
    for name in ("a.mp4", "b.mp4"):  # a copy keeps the file's times, as a checkout's cache does
        st = os.stat(tmp_path / "one" / "clips" / name)
        os.utime(tmp_path / "two" / "clips" / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert inputs.fingerprint(moved, tmp_path / "two") == one
    synthetic = inputs.fingerprint({"source": "synthetic"}, tmp_path)
    assert all(k.startswith("synthetic:") for k in synthetic["files"])


def test_files_named_by_other_stages_params_get_their_own_fingerprints(tmp_path):
    """aus.openface_dir, deploy.corpus / deploy.model and train.weights / train.resume: a changed
    file moves only its reader's fingerprint (a training's, not the others')."""
    import json

    (tmp_path / "of").mkdir()
    (tmp_path / "of" / "v1.csv").write_text("frame,AU01_r\n1,0.5\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "perfex_cnn.pt").write_bytes(b"weights")
    params = {"aus": {"backend": "openface_csv", "openface_dir": "of"},
              "deploy": {"corpus": "of", "model": "ckpt/perfex_cnn.pt"},
              "train": {"models": ["perfex_cnn", "logmel_cnn"], "weights": "ckpt/{model}.pt",
                        "resume": ""}}
    inputs.write_param_files(params, tmp_path)
    data = tmp_path / "data"
    aus = json.loads((data / "inputs_aus.json").read_text())
    assert list(aus["files"]) == ["of/v1.csv"]
    deploy = json.loads((data / "inputs_deploy.json").read_text())
    assert sorted(deploy["files"]) == ["ckpt/perfex_cnn.pt", "of/v1.csv"]
    trained = {p.name: json.loads(p.read_text()) for p in (data / "inputs_train").iterdir()}
    assert trained["perfex_cnn.json"]["weights"]["path"] == "ckpt/perfex_cnn.pt"
    assert trained["logmel_cnn.json"]["weights"] == {"path": "ckpt/logmel_cnn.pt", "missing": True}
    before = {p: p.read_bytes() for p in data.rglob("*.json")}

    (tmp_path / "ckpt" / "perfex_cnn.pt").write_bytes(b"other weights")
    inputs.write_param_files(params, tmp_path)
    moved = {p.relative_to(data).as_posix() for p in before if p.read_bytes() != before[p]}
    assert moved == {"inputs_deploy.json", "inputs_train/perfex_cnn.json"}


def test_defaults_name_no_file_and_odd_model_names_are_refused(tmp_path):
    import json

    import pytest

    inputs.write_param_files({"train": {"models": ["perfex_cnn"]}}, tmp_path)
    assert json.loads((tmp_path / "data" / "inputs_aus.json").read_text())["files"] == {}
    assert json.loads((tmp_path / "data" / "inputs_deploy.json").read_text())["files"] == {}
    assert json.loads((tmp_path / "data" / "inputs_train" / "perfex_cnn.json").read_text()) == {}
    with pytest.raises(ValueError, match="not a model name"):
        inputs.write_param_files({"train": {"models": ["../escape"]}}, tmp_path)


def test_an_experiment_of_one_model_leaves_the_others_fingerprints(tmp_path):
    """`dvc exp run -S 'train.models=[x]'` must not delete the default models' files: the folder
    is no DVC cache output, so back on the default models `dvc status` reported their deps
    deleted until the next repro."""
    config = {"perfex_cnn": {}, "logmel_cnn": {}, "resnet34_face": {"width": 16}}
    inputs.write_param_files({"train": {"models": ["perfex_cnn", "logmel_cnn"],
                                        "model_config": config}}, tmp_path)
    folder = tmp_path / "data" / "inputs_train"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    inputs.write_param_files({"train": {"models": ["resnet34_face"], "model_config": config}},
                             tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(before) == ["logmel_cnn.json", "perfex_cnn.json", "resnet34_face.json"]


def test_each_reader_depends_on_its_fingerprint_in_dvc_yaml():
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["inputs"]["outs"]]
    assert {"data/inputs_aus.json", "data/inputs_deploy.json", "data/inputs_train"} <= set(outs)
    assert "data/inputs_aus.json" in stages["aus"]["deps"]
    assert "data/inputs_deploy.json" in stages["deploy"]["deps"]
    assert "data/inputs_train/${item}.json" in stages["train"]["do"]["deps"]


def test_a_labels_csv_of_many_rows_is_fingerprinted_one_row_at_a_time(tmp_path):
    """inputs keeps one cell of each row, not the row: every record of a labels CSV held at once
    took 0.76 GB a million rows (6.1 GB for 10 million in review). 50,000 rows of three videos:
    27 MB traced with every record held, 2.1 MB one record at a time."""
    import tracemalloc

    params, csv = _dataset(tmp_path)
    rows = "".join(f"clips/{'abc'[i % 3]}.mp4,0.5,0.5,0.5,0.5,0.{i % 10}\n" for i in range(50_000))
    csv.write_text("video,O,C,E,A,N\n" + rows)
    tracemalloc.start()
    try:
        files = inputs.fingerprint(params, tmp_path)["files"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(files) == ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4", "labels.csv"]
    assert files["clips/c.mp4"] == {"missing": True} and "size" in files["clips/a.mp4"]
    assert peak < 4e6, peak


def test_a_labels_csv_ingest_refuses_lists_no_video(tmp_path):
    """Read a record at a time, a fault after the header still fails the whole file, as it does
    for ingest (an unclosed quote in the last row); a file without the column lists none."""
    params, csv = _dataset(tmp_path)
    good = inputs.fingerprint(params, tmp_path)
    assert good["n_files"] == 4
    text = csv.read_text()
    csv.write_text(text + '"clips/c.mp4,0.5,0.5,0.5,0.5,0.5\n')
    assert list(inputs.fingerprint(params, tmp_path)["files"]) == ["labels.csv"]
    csv.write_text(text.replace("video,", "clip,", 1))
    assert list(inputs.fingerprint(params, tmp_path)["files"]) == ["labels.csv"]
    csv.write_text(text.replace("video,", "video,Video,", 1))  # a column given twice
    assert list(inputs.fingerprint(params, tmp_path)["files"]) == ["labels.csv"]


LABELS_TEXTS = {
    "excel": b"\xef\xbb\xbfVideo ,o,C,E,A,N,Subject\r\n\r\na.mp4,0.1,0.2,0.3,0.4,0.5,s1\r\n",
    "blank_and_quoted": b'\n \nvideo,O,C,E,A,N\n"b,\nc.mp4",1,1,1,1,1\n,\n\nshort.mp4,1\n',
    "extra_field": b"video,O,C,E,A,N\nx.mp4,1,1,1,1,1,extra\n",
    "no_header": b"\n  \n\t\n",
    "trailing_commas": b"\n,\n",
    "empty": b"",
    "repeated": b"video,O,C,E,A,N,o\nx.mp4,1,1,1,1,1,1\n",
    "unclosed_quote": b'video,O,C,E,A,N\nx.mp4,1,1,1,1,1\n"y.mp4,1,1,1,1,1\n',
    "binary": b"video,O\n\xff\xfe\x00\x01,1\n",
    "cell_over_limit": b"video,O\n" + b"v" * 70_000 + b",1\n",
}


def test_labels_records_one_at_a_time_are_labels_records(tmp_path):
    """iter_labels_records (inputs') reads the header and records that labels_records (ingest's)
    reads, and refuses a file with one fault with the same message."""
    import pytest

    from personality.common import StageInputError
    from personality.datasets_au import iter_labels_records, labels_records

    for name, data in [*LABELS_TEXTS.items(), ("missing", None)]:
        path = tmp_path / f"{name}.csv"
        if data is not None:
            path.write_bytes(data)
        try:
            expected = labels_records(path)
        except StageInputError as exc:
            with pytest.raises(StageInputError) as raised:
                header, records = iter_labels_records(path)
                list(records)
            assert str(raised.value) == str(exc), name
            continue
        header, records = iter_labels_records(path)
        assert (header, list(records)) == expected, name
    assert labels_records(tmp_path / "excel.csv")[0][:2] == ["video", "O"]

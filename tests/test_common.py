"""The shared helpers: typed params, schema-checked atomic artifacts, path safety, tracking root."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest

from personality import common
from personality.common import (ArtifactWriter, ParamsError, SchemaError, StageInputError,
                           build_dataclass, load_params, read_artifact, safe_join, write_artifact)
from stages.ingest import IngestParams


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 3
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Outer:
    lr: float = 0.1
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = dataclasses.field(default_factory=list)
    inner: Inner = Inner()
    maybe: str | None = None


def test_params_typed_and_nested():
    p = build_dataclass(Outer, {"lr": 1, "mode": "b", "sizes": [1, 2], "inner": {"size": 5}},
                        "train")
    assert p == Outer(lr=1.0, mode="b", sizes=[1, 2], inner=Inner(size=5), maybe=None)
    assert isinstance(p.lr, float)


@pytest.mark.parametrize("data, message", [
    ({"lr": "fast"}, "train.lr: expected a number"),
    ({"mode": "c"}, "train.mode: 'c' is not one of"),
    ({"sizes": [1, "2"]}, "train.sizes[1]: expected an integer"),
    ({"inner": {"sise": 4}}, "train.inner.sise: unknown key"),
    ({"learning_rate": 0.1}, "train.learning_rate: unknown key"),
    ({"inner": {"size": True}}, "train.inner.size: expected an integer"),
])
def test_params_errors_name_the_key(data, message):
    with pytest.raises(ParamsError) as err:
        build_dataclass(Outer, data, "train")
    assert message in str(err.value)


def test_repo_params_yaml_is_valid():
    """The committed params.yaml parses into every registered stage's dataclass."""
    root = Path(__file__).resolve().parents[1]
    p = load_params("ingest", IngestParams, path=root / "params.yaml")
    assert p.source == "synthetic" and p.synthetic.n_videos >= 100
    base = load_params("base", common.BaseParams, path=root / "params.yaml")
    assert isinstance(base.seed, int)


def test_params_file_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params("ingest", IngestParams, path=bad)
    bad.write_text("ingest:\n  synthetic:\n    n_videos: many\n")
    with pytest.raises(ParamsError, match="ingest.synthetic.n_videos: expected an integer"):
        load_params("ingest", IngestParams, path=bad)


def _manifest(n=3):
    return pd.DataFrame({
        "video_id": [f"v{i}" for i in range(n)], "path": [f"v{i}.mp4" for i in range(n)],
        "split": ["train"] * n, "subject_id": ["s"] * n, "dataset": ["t"] * n,
        **{t: [0.5] * n for t in "OCEAN"},
        "duration_s": [1.0] * n, "fps": [25.0] * n, "has_audio": [True] * n})


def test_artifact_roundtrip_and_schema_errors(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_artifact("manifest", _manifest(), path=path)
    assert read_artifact("manifest", path=path)["video_id"].tolist() == ["v0", "v1", "v2"]
    with pytest.raises(SchemaError, match=r"m2.parquet: missing column 'split' of artifact 'manifest'"):
        write_artifact("manifest", _manifest().drop(columns="split"), path=tmp_path / "m2.parquet")
    assert not (tmp_path / "m2.parquet").exists()
    wrong = _manifest().assign(duration_s=["long"] * 3)
    wrong.to_parquet(tmp_path / "m3.parquet")
    with pytest.raises(SchemaError, match=r"m3.parquet: column 'duration_s' has dtype"):
        read_artifact("manifest", path=tmp_path / "m3.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="junk.parquet: not a readable Parquet"):
        read_artifact("manifest", path=tmp_path / "junk.parquet")
    with pytest.raises(SchemaError, match="not found; run its stage first"):
        read_artifact("manifest", path=tmp_path / "absent.parquet")


def _frames(n, offset=0):
    return pd.DataFrame({"video_id": ["v"] * n, "frame_idx": range(offset, offset + n),
                         "t": [i / 5 for i in range(n)], "width": [4] * n, "height": [4] * n,
                         "jpeg": [b"\xff\xd8"] * n})


def test_sharded_writer_is_atomic(tmp_path):
    out = tmp_path / "frames"
    with ArtifactWriter("frames", path=out, rows_per_shard=4) as w:
        w.write(_frames(5))
        w.write(_frames(5, offset=5))
        assert not out.exists()  # nothing visible until the writer closes cleanly
    shards = sorted(out.glob("*.parquet"))
    assert len(shards) == 2  # each write of 5 rows passes rows_per_shard=4 and flushes a shard
    assert len(pd.read_parquet(out)) == 10  # pandas reads the folder whole
    assert read_artifact("frames", path=out)["frame_idx"].tolist() == list(range(10))

    # a stage that dies half-way leaves the previous artifact untouched and no temp folder
    with pytest.raises(RuntimeError):
        with ArtifactWriter("frames", path=out, rows_per_shard=2) as w:
            w.write(_frames(3))
            raise RuntimeError("killed")
    assert len(pd.read_parquet(out)) == 10
    assert not list(tmp_path.glob(".frames.tmp-*"))
    # a failure while flushing the last shard: the same (a schema error, a full disk)
    with pytest.raises(Exception):
        with ArtifactWriter("frames", path=out, rows_per_shard=100) as w:
            w.write(_frames(3))
            w._buffer.append(pd.DataFrame({"video_id": [object()]}))  # not writable as Parquet
    assert len(pd.read_parquet(out)) == 10 and not list(tmp_path.glob(".frames.tmp-*"))


def test_atomic_dir_swaps_whole_folders(tmp_path):
    from personality.common import atomic_dir

    out = tmp_path / "deploy"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    with atomic_dir(out) as tmp:  # a second run replaces the folder: a.txt does not linger
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "c.txt").write_text("3")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # meant
def test_a_ctrl_c_swallowed_on_the_way_never_lets_a_writer_commit(tmp_path):
    """Python drops an exception raised inside __del__ (and a library's bare `except:` can eat
    one): a Ctrl-C landing there would let the stage run on and swap in its output. The SIGINT
    handler counts interrupts and a writer refuses to commit after one during its block."""
    import signal

    # a run started in the background by a non-interactive shell inherits SIGINT ignored: give it
    # its default meaning here, as a terminal's Ctrl-C has it
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _refused_after_a_swallowed_interrupt(tmp_path)
    finally:
        signal.signal(signal.SIGINT, inherited)


def _refused_after_a_swallowed_interrupt(tmp_path: Path) -> None:
    import signal
    import threading
    import time

    from personality.common import atomic_dir, atomic_file

    class Swallows:
        def __del__(self):  # the interrupt lands here and Python prints it and drops it
            before = common._SIGINTS[0]
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            deadline = time.monotonic() + 5
            while common._SIGINTS[0] == before and time.monotonic() < deadline:
                time.sleep(0.001)  # the handler runs between two bytecodes of this loop

    out, single = tmp_path / "frames", tmp_path / "one.json"
    with atomic_dir(out):  # installs the counting handler (main thread, default handler)
        pass
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        with atomic_dir(out) as tmp:
            (tmp / "part.parquet").write_text("half")
            Swallows()  # dropped at once: its __del__ runs here
    assert sorted(p.name for p in out.iterdir()) == []  # the first (empty) output stays
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        with atomic_file(single) as tmp:
            tmp.write_text("{}")
            Swallows()
    assert not single.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
    with atomic_file(single) as tmp:  # an interrupt before the block does not concern it
        tmp.write_text("{}")
    assert single.exists()


def test_paths_cannot_escape(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert common.data_path("videos", "a.mp4") == (tmp_path / "data" / "videos" / "a.mp4")
    with pytest.raises(StageInputError, match="escapes the data root"):
        common.data_path("..", "etc", "passwd")
    assert safe_join(tmp_path, "a/b.mp4") == tmp_path / "a" / "b.mp4"
    with pytest.raises(StageInputError, match="escapes the dataset root"):
        safe_join(tmp_path / "ds", "../../x.mp4")
    with pytest.raises(StageInputError, match="escapes"):
        safe_join(tmp_path / "ds", "/etc/passwd")


def test_tracking_root_climbs_out_of_queued_experiment(tmp_path, monkeypatch):
    queued = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    monkeypatch.setenv("DVC_ROOT", str(queued))
    assert common.tracking_root() == tmp_path / "repo"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert common.tracking_root() == tmp_path / "repo"


def test_queued_experiment_writes_into_its_own_copy(tmp_path, monkeypatch):
    """DVC runs a queued experiment's stages in <repo>/.dvc/tmp/exps/<tmp>/ (the working
    directory) with DVC_ROOT=<repo>: data must go to the copy, MLflow to the repo's store."""
    repo = tmp_path / "repo"
    exps = repo / ".dvc" / "tmp" / "exps"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    for queued in (exps / "tmpabc123", exps / "standalone" / "tmpdef456"):  # --queue, --temp
        (queued / "data").mkdir(parents=True)
        (queued / "dvc.yaml").write_text("stages: {}\n")
        monkeypatch.chdir(queued)
        assert common.repo_root() == queued
        monkeypatch.chdir(queued / "data")
        assert common.repo_root() == queued
        assert common.tracking_root() == repo
    monkeypatch.chdir(tmp_path)  # a plain `dvc repro`: DVC_ROOT is the answer
    assert common.repo_root() == repo == common.tracking_root()


def test_stage_main_exits_cleanly_on_a_bad_param(tmp_path):
    """A stage run by DVC with a mistyped key ends with exit code 2 and one line naming the key."""
    import os
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("base: {seed: 1}\ningest:\n  source: synthetic\n"
                                          "  synthetic: {n_vidoes: 3}\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DVC_ROOT": str(tmp_path), "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "ingest.synthetic.n_vidoes: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()


def test_safe_join_refuses_paths_the_file_system_cannot_take(tmp_path):
    """A symlink loop, a NUL byte and a name too long are StageInputErrors naming the path (they
    were RuntimeError, ValueError and OSError, which took a whole ingest down)."""
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    for relative, message in (("loop1", "loop1: a symlink loop"),
                              ("a\x00.csv", "holds a NUL byte"),
                              ("x" * 300 + ".csv", "File name too long")):
        with pytest.raises(StageInputError, match=message):
            safe_join(tmp_path, relative)
    assert safe_join(tmp_path, "missing.csv") == tmp_path / "missing.csv"  # the caller's to say


def test_find_checkpoint_says_a_folder_is_a_folder(tmp_path):
    (tmp_path / "m.pt").mkdir()
    with pytest.raises(StageInputError, match="is a directory, not a checkpoint file"):
        common.find_checkpoint(str(tmp_path / "m.pt"))
    with pytest.raises(StageInputError, match="checkpoint not found"):
        common.find_checkpoint(str(tmp_path / "absent.pt"))


def test_a_relative_checkpoint_path_is_read_from_the_current_folder_first(tmp_path,
                                                                           monkeypatch):
    """`predict --model models/x.pt` run from the folder holding it (a user's own checkpoint):
    it was looked up under the repo root only, and not found."""
    root, here = tmp_path / "repo", tmp_path / "elsewhere"
    (here / "models").mkdir(parents=True)
    (here / "models" / "x.pt").write_bytes(b"weights")
    (root / "models").mkdir(parents=True)
    (root / "models" / "y.pt").write_bytes(b"weights")
    monkeypatch.chdir(here)
    assert common.find_checkpoint("models/x.pt", root) == here / "models" / "x.pt"
    assert common.find_checkpoint("models/y.pt", root) == root / "models" / "y.pt"
    with pytest.raises(StageInputError, match=f"nor under {here}"):
        common.find_checkpoint("models/z.pt", root)


def test_by_video_turns_a_map_into_a_sorted_list_dvc_shows_no_column_of():
    from personality.common import by_video

    assert by_video({"b": "moov atom missing", "a": "empty file"}, "error") == [
        {"video_id": "a", "error": "empty file"}, {"video_id": "b", "error": "moov atom missing"}]
    assert by_video({}, "error") == []
    root = Path("/home/someone/personality")
    named = {"a": f"{root}/data/videos/a.mp4: moov atom missing", "b": "/elsewhere/b.mp4: empty",
             "c": 0.5}
    assert by_video(named, "error", root=root) == [
        {"video_id": "a", "error": "data/videos/a.mp4: moov atom missing"},
        {"video_id": "b", "error": "/elsewhere/b.mp4: empty"}, {"video_id": "c", "error": 0.5}]


def test_a_missing_retrained_checkpoint_suggests_the_retrain_stage(tmp_path):
    """`dvc exp run -S 'train.models=[perfex_hybrid+retrained]'`, the suggestion it got, is
    refused: no model has that name."""
    with pytest.raises(common.StageInputError, match=r"train it: dvc repro retrain, with "
                                                     r"perfex_hybrid in retrain.models"):
        common.find_checkpoint("perfex_hybrid+retrained", tmp_path)
    with pytest.raises(common.StageInputError, match=r"dvc exp run -S 'train.models=\[hrnet_face\]'"):
        common.find_checkpoint("hrnet_face", tmp_path)

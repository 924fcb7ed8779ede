"""The served model reads only videos under its video root(s) (stages/serve.py, VideoScorer): a
client names server paths, so anything else, a relative path included, is refused with one
message that does not say whether the file exists. Fast: the front-end is never run here.

    .venv/bin/python -m pytest tests/test_serve_paths.py -q
"""
from __future__ import annotations

import json
import os
import time
import types

import numpy as np
import pandas as pd
import pytest

from personality.common import StageInputError
from stages import predict, serve

REFUSED = "not under the served video root(s); set PERSONALITY_VIDEO_ROOT"


@pytest.fixture
def reached(monkeypatch):
    """What got as far as predict_video: the bytes of the file it was given (the server's copy of
    the requested one); each then 'fails' with a StageInputError naming the file."""
    seen = []

    def fake_predict_video(video, **kw):
        seen.append(video.read_bytes())
        raise StageInputError(f"{video}: cannot be opened as media")

    monkeypatch.setattr(predict, "predict_video", fake_predict_video)
    return seen


def loaded_scorer() -> serve.VideoScorer:
    scorer = serve.VideoScorer()
    scorer.load_context(types.SimpleNamespace(artifacts={"checkpoint": "best.pt",
                                                         "params": "params.yaml"}))
    return scorer


def errors(scorer, videos: list[str]) -> list[str]:
    out = scorer.predict(None, pd.DataFrame({"video": videos}))
    assert list(out.columns) == serve.OUTPUT_COLUMNS and len(out) == len(videos)
    assert np.isnan(out["O"].astype(float)).all()
    return out["error"].tolist()


@pytest.fixture
def tree(tmp_path):
    """served/ (the root) with a clip and a symlink out of it; outside/ with a secret."""
    served, outside = tmp_path / "served", tmp_path / "outside"
    (served / "sub").mkdir(parents=True)
    outside.mkdir()
    (served / "sub" / "clip.mp4").write_bytes(b"clip")
    (outside / "secret.mp4").write_bytes(b"secret")
    (served / "link.mp4").symlink_to(outside / "secret.mp4")
    return served, outside


def test_paths_outside_the_root_are_refused_alike_and_never_opened(tree, reached, monkeypatch,
                                                                   tmp_path):
    served, outside = tree
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    monkeypatch.chdir(served)
    scorer = loaded_scorer()
    asked = [str(served / "sub" / "clip.mp4"),            # under the root: scored (here: fails)
             str(outside / "secret.mp4"),                 # exists, outside
             str(outside / "absent.mp4"),                 # does not exist, outside
             "/etc/hostname", "/no/such/file.mp4",
             str(served / "link.mp4"),                    # in the root, resolves outside it
             str(served / ".." / "outside" / "secret.mp4"),
             "sub/clip.mp4",                              # relative: refused even in the cwd
             "../outside/secret.mp4", "", "/a\x00b.mp4"]
    got = errors(scorer, asked)
    assert reached == [b"clip"]
    assert got[0] == f"{asked[0]}: cannot be opened as media"  # named as asked, not the copy
    for requested, error in zip(asked[1:], got[1:]):
        assert error == f"{requested}: {REFUSED}"  # the same words whether the file exists


def test_several_roots_and_the_working_folder_by_default(tree, reached, monkeypatch, tmp_path):
    served, outside = tree
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", os.pathsep.join([str(served), str(outside)]))
    errors(loaded_scorer(), [str(outside / "secret.mp4"), str(served / "link.mp4")])
    assert reached == [b"secret", b"secret"]
    reached.clear()
    monkeypatch.delenv("PERSONALITY_VIDEO_ROOT")
    monkeypatch.chdir(outside)  # read when the model is loaded: a later chdir changes nothing
    scorer = loaded_scorer()
    monkeypatch.chdir(served)
    got = errors(scorer, [str(outside / "secret.mp4"), str(served / "sub" / "clip.mp4")])
    assert reached == [b"secret"] and got[1].endswith(REFUSED)


@pytest.mark.parametrize("swapped", ["folder", "file"])
def test_a_path_swapped_for_a_symlink_after_the_check_is_not_read(tree, reached, monkeypatch,
                                                                  swapped):
    """A client that can write under the root swaps a component of the checked path for a
    symlink out of it between the check and the front-end's opens: the server read the file
    outside (the secret's bytes reached the front-end). Now it reads one checked descriptor."""
    served, outside = tree
    (outside / "clip.mp4").write_bytes(b"secret")
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    checked = serve.allowed_video

    def check_then_swap(requested, roots):
        answer = checked(requested, roots)
        if swapped == "folder":
            (served / "sub").rename(served / "old")
            (served / "sub").symlink_to(outside)
        else:
            (served / "sub" / "clip.mp4").unlink()
            (served / "sub" / "clip.mp4").symlink_to(outside / "clip.mp4")
        return answer

    monkeypatch.setattr(serve, "allowed_video", check_then_swap)
    asked = str(served / "sub" / "clip.mp4")
    assert errors(loaded_scorer(), [asked]) == [f"{asked}: {REFUSED}"]
    assert reached == []


def test_a_pipe_or_folder_under_the_root_is_a_row_with_its_error_not_a_hang(tree, reached,
                                                                         monkeypatch):
    """private_copy opened the requested path before looking at what it is: a named pipe under
    the root (no writer) blocked that open, and the request, for ever; a folder was refused as
    lying outside the roots. Each is a row saying what it is, as predict says it."""
    import threading

    served, _ = tree
    os.mkfifo(served / "pipe.mp4")
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    scorer, got = loaded_scorer(), []
    asked = [str(served / "pipe.mp4"), str(served / "sub")]
    worker = threading.Thread(target=lambda: got.extend(errors(scorer, asked)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the open so that the thread ends
        os.close(os.open(served / "pipe.mp4", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(30)
        pytest.fail("the request hung opening a named pipe")
    assert got == [f"{asked[0]}: not a regular file (a pipe or a device?)",
                   f"{asked[1]}: is a folder"]
    assert reached == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_no_request_leaves_a_file_descriptor_open(tree, reached, monkeypatch):
    """os.fdopen refuses a folder's descriptor without closing it: each request for a folder
    under the root left one open (a server runs out of them)."""
    served, outside = tree
    (outside / "clip.mp4").write_bytes(b"secret")
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    scorer = loaded_scorer()
    fds = len(os.listdir("/proc/self/fd"))
    errors(scorer, [str(served / "sub"), str(served / "sub" / "clip.mp4"),
                    str(served / "link.mp4")] * 10)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_errors_name_the_requested_file_when_the_temporary_folder_is_a_symlink(
        tree, monkeypatch, tmp_path):
    """The front-end resolves the video's path (predict_frontend: the manifest's path, the
    worker's job), so its errors name the copy's real path; through a symlinked temporary folder
    (macOS's /var -> /private/var, a TMPDIR link) only the unresolved name was replaced and the
    client read the server's private folder."""
    import tempfile

    served, _ = tree
    (tmp_path / "real_tmp").mkdir()
    (tmp_path / "tmp_link").symlink_to(tmp_path / "real_tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp_link"))

    def fake_predict_video(video, **kw):
        raise StageInputError(f"{video.resolve()}: no decodable frame")

    monkeypatch.setattr(predict, "predict_video", fake_predict_video)
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    asked = str(served / "sub" / "clip.mp4")
    assert errors(loaded_scorer(), [asked]) == [f"{asked}: no decodable frame"]


def test_an_error_naming_a_file_that_is_not_utf8_does_not_name_the_servers_copy(
        tree, monkeypatch):
    """A name that is not UTF-8 appears in errors with \\xNN escapes (shown_path), so replacing
    the copy's plain path missed it and the client read the server's temporary folder."""
    from personality.common import check_utf8_path

    served, _ = tree
    odd = served / os.fsdecode(b"caf\xe9.mp4")
    odd.write_bytes(b"clip")

    def fake_predict_video(video, **kw):
        check_utf8_path(video)  # predict's own first check

    monkeypatch.setattr(predict, "predict_video", fake_predict_video)
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    # as MLflow's JSON parsing hands it over: a Python str (pandas' default is Arrow's, UTF-8)
    out = loaded_scorer().predict(None, pd.DataFrame({"video": pd.Series([str(odd)],
                                                                         dtype=object)}))
    [error] = out["error"].tolist()
    assert "serve-" not in error and "is not valid UTF-8" in error, error


def test_a_relative_root_is_refused_when_the_model_loads(monkeypatch):
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", "videos")
    with pytest.raises(StageInputError, match="PERSONALITY_VIDEO_ROOT: 'videos' is not an "
                                              "absolute folder"):
        loaded_scorer()


def test_the_input_example_folder_is_served_while_mlflow_checks_it(monkeypatch, tmp_path):
    """register's input example is scored, not refused, whatever PERSONALITY_VIDEO_ROOT says;
    the variable is as it was afterwards."""
    from stages import serve

    monkeypatch.setenv(serve.VIDEO_ROOT_ENV, "/srv/videos")
    seen = {}

    class FakePyfunc:
        @staticmethod
        def log_model(**kwargs):
            seen["roots"] = os.environ[serve.VIDEO_ROOT_ENV]
            return "info"

    class FakeMlflow:
        pyfunc = FakePyfunc

    clip = tmp_path / "clips" / "a.mp4"
    (tmp_path / "params.yaml").write_text("base: {seed: 1}\n")  # the copy the model carries
    assert serve.log_pyfunc(FakeMlflow, tmp_path / "best.pt", tmp_path, str(clip)) == "info"
    assert seen["roots"] == os.pathsep.join(["/srv/videos", str(clip.parent)])
    assert os.environ[serve.VIDEO_ROOT_ENV] == "/srv/videos"


def test_a_dataset_without_videos_gives_no_input_example(tmp_path):
    """PerFeX / OpenFace-CSV manifests hold AU sequences with an empty `path`: that resolved to
    the repository's folder, logged as the input example, and its parent (say /tmp) became a
    served root while mlflow checked it."""
    (tmp_path / "data").mkdir()
    pd.DataFrame({"path": ["", ""], "split": ["test", "train"]}).to_parquet(
        tmp_path / "data" / "manifest.parquet")
    assert serve.example_video(tmp_path) is None
    pd.DataFrame({"path": ["", "clips/a.mp4"], "split": ["test", "train"]}).to_parquet(
        tmp_path / "data" / "manifest.parquet")
    assert serve.example_video(tmp_path) == str(tmp_path / "clips" / "a.mp4")


def test_a_file_over_the_size_limit_is_a_row_with_its_error_not_a_copy(tree, reached,
                                                                       monkeypatch):
    """Each request copies its file: a sparse 100 GB file under a root was written out in full
    (the server's disk, or RAM where /tmp is tmpfs). Over PERSONALITY_MAX_VIDEO_GB it is a row
    with its error, before anything is copied; the limit is read when the model loads."""
    served, _ = tree
    with open(served / "huge.mp4", "wb") as f:
        f.truncate(3 * 2**30)  # sparse: no block on disk
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    monkeypatch.setenv("PERSONALITY_MAX_VIDEO_GB", "2")
    scorer = loaded_scorer()
    monkeypatch.setenv("PERSONALITY_MAX_VIDEO_GB", "100")  # read at load: changes nothing now
    huge, clip = str(served / "huge.mp4"), str(served / "sub" / "clip.mp4")
    got = errors(scorer, [huge, clip])
    assert got[0] == f"{huge}: over the 2 GiB a served request may copy (set " \
                     "PERSONALITY_MAX_VIDEO_GB)"
    assert reached == [b"clip"]
    monkeypatch.setenv("PERSONALITY_MAX_VIDEO_GB", "lots")
    with pytest.raises(StageInputError, match="PERSONALITY_MAX_VIDEO_GB: 'lots' is not a "
                                              "positive number of GiB"):
        loaded_scorer()


def test_the_copy_stops_at_the_limit_when_the_file_grew_since_the_check(tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x" * 1000)
    assert serve.private_copy(video, (tmp_path,), tmp_path / "a", max_bytes=1000).stat().st_size \
        == 1000
    real_fstat = os.fstat

    def as_checked(fd):  # the size when it was checked: 10 bytes, then it grew to 1000
        facts = list(real_fstat(fd))
        facts[6] = 10
        return os.stat_result(facts)

    monkeypatch.setattr(serve.os, "fstat", as_checked)
    with pytest.raises(StageInputError, match="over the"):
        serve.private_copy(video, (tmp_path,), tmp_path / "b", max_bytes=999)
    assert (tmp_path / "b" / "clip.mp4").stat().st_size == 999  # read no further


def test_a_request_over_the_row_limit_is_refused_whole_before_any_work(tree, reached,
                                                                      monkeypatch):
    """Each row is scored in turn (~1.4 s for a 5 s clip; each copies its file, up to
    PERSONALITY_MAX_VIDEO_GB): a request of 10,000 rows was taken on whole. Over
    PERSONALITY_MAX_REQUEST_ROWS (read when the model loads) the request is refused before any
    file is opened, as MLflow refuses an input it cannot take: HTTP 400 with the reason."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    served, _ = tree
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    monkeypatch.setenv("PERSONALITY_MAX_REQUEST_ROWS", "3")
    scorer = loaded_scorer()
    clip = str(served / "sub" / "clip.mp4")
    with pytest.raises(MlflowException, match="a request of 4 videos; the served model scores "
                       "at most 3 per request .PERSONALITY_MAX_REQUEST_ROWS.: send them in "
                       "smaller requests") as refused:
        scorer.predict(None, pd.DataFrame({"video": [clip] * 4}))
    assert refused.value.get_http_status_code() == 400 and reached == []
    assert len(errors(scorer, [clip] * 3)) == 3 and len(reached) == 3
    # through the scoring server's own request handler: the client reads a 400 and the reason
    model = types.SimpleNamespace(predict=lambda data: scorer.predict(None, data),
                                  metadata=types.SimpleNamespace(get_input_schema=lambda: None))
    body = json.dumps({"dataframe_split": {"columns": ["video"], "data": [[clip]] * 4}})
    with pytest.raises(MlflowException, match="at most 3 per request") as answered:
        scoring_server.invocations(body, "application/json", model, None)
    assert answered.value.get_http_status_code() == 400 and len(reached) == 3
    for bad in ("0", "lots", "-1"):
        monkeypatch.setenv("PERSONALITY_MAX_REQUEST_ROWS", bad)
        with pytest.raises(StageInputError, match=f"PERSONALITY_MAX_REQUEST_ROWS: '{bad}' is not "
                                                  "a positive whole number of rows"):
            loaded_scorer()


def test_rows_left_when_the_servers_time_limit_passes_are_not_scored(tree, monkeypatch):
    """`mlflow models serve` answers 504 after MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (60 s), but
    the request's thread went on scoring every row for nobody: measured, a request of 200 clips
    kept the server scoring for 4-5 min after its 504 (10,000: hours, and each such request
    holds one of the server's few threads). A row whose turn comes after the limit is now a row
    with its error; the rows before are scored. Outside a scoring server (no such variable) every
    row is scored. A fake clock: each scored row takes 0.4 s."""
    served, _ = tree
    clock, seen = [100.0], []

    def slow_predict_video(video, **kw):
        seen.append(video.name)
        clock[0] += 0.4
        raise StageInputError(f"{video}: cannot be opened as media")

    monkeypatch.setattr(predict, "predict_video", slow_predict_video)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "1")
    clip = str(served / "sub" / "clip.mp4")
    got = errors(loaded_scorer(), [clip] * 5)
    assert len(seen) == 3  # began at 0, 0.4 and 0.8 s
    assert got[:3] == [f"{clip}: cannot be opened as media"] * 3
    assert got[3:] == [f"{clip}: not scored: the request had run past the server's 1 s "
                       "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) before its turn; send fewer "
                       "videos per request"] * 2
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
    seen.clear()
    errors(loaded_scorer(), [clip] * 5)
    assert len(seen) == 5


def test_a_server_without_a_concurrency_limit_is_warned_of_when_the_model_loads(monkeypatch,
                                                                             caplog):
    """MLflow's scoring server holds each request's body whole and takes every request that
    comes at once, each in a thread (their videos wait for one of the model's slots,
    PERSONALITY_MAX_CONCURRENT_VIDEOS); only uvicorn's UVICORN_LIMIT_CONCURRENCY bounds how many
    (tests/test_serve.py shows it through `mlflow models serve`). Loaded by such a server
    (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT set) without it, the model says so; not with it, nor
    outside a server (the register stage loads it)."""
    import logging

    monkeypatch.delenv("UVICORN_LIMIT_CONCURRENCY", raising=False)
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("PERSONALITY_MAX_CONCURRENT_VIDEOS", raising=False)
    with caplog.at_level(logging.WARNING, logger="serve"):
        loaded_scorer()
        assert "UVICORN_LIMIT_CONCURRENCY" not in caplog.text
        monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "60")
        loaded_scorer()
        assert ("UVICORN_LIMIT_CONCURRENCY unset: any number of requests taken at once, each "
                "body held whole, each waiting in a server thread (their videos are copied and "
                "scored 2 at a time: PERSONALITY_MAX_CONCURRENT_VIDEOS); set it (4: three at "
                "once, 503 to more)") in caplog.text
        caplog.clear()
        monkeypatch.setenv("UVICORN_LIMIT_CONCURRENCY", "4")
        loaded_scorer()
        assert "UVICORN_LIMIT_CONCURRENCY" not in caplog.text


def test_no_more_videos_than_the_limit_are_copied_and_scored_at_once(tree, monkeypatch):
    """MLflow's server scores each request in a thread of its own, as many as arrive: without
    UVICORN_LIMIT_CONCURRENCY, every one copied its video (up to 4 GiB) and ran the front end at
    once. PERSONALITY_MAX_CONCURRENT_VIDEOS=2 bounds the process: four requests at once (to two
    loaded models: the bound is the process's) never have more than two videos between the start
    of the copy and the end of the scoring, and every row is scored."""
    import threading

    served, _ = tree
    lock, inside, most, scored = threading.Lock(), [0], [0], []
    real_copy = serve.private_copy

    def counted_copy(*args, **kw):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        return real_copy(*args, **kw)

    def slow_predict_video(video, **kw):
        time.sleep(0.3)
        with lock:
            inside[0] -= 1
            scored.append(video.name)
        raise StageInputError(f"{video}: cannot be opened as media")

    monkeypatch.setattr(serve, "private_copy", counted_copy)
    monkeypatch.setattr(predict, "predict_video", slow_predict_video)
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "60")
    monkeypatch.setenv("PERSONALITY_MAX_CONCURRENT_VIDEOS", "2")
    scorers = [loaded_scorer(), loaded_scorer()]
    clip, got = str(served / "sub" / "clip.mp4"), []
    start = threading.Barrier(4)

    def request(i: int) -> None:
        start.wait()
        got.extend(errors(scorers[i % 2], [clip, clip]))

    threads = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert most[0] == 2 and len(scored) == 8
    assert got == [f"{clip}: cannot be opened as media"] * 8


def test_a_row_without_a_slot_before_the_time_limit_is_an_error_row_not_a_wait(tree,
                                                                               monkeypatch):
    """A row waits for a free slot only until its request's time limit (the server has answered
    504 by then): it is a row saying why, and the rows after it are late rows, as when the
    request's own rows took the time. Here one video holds the only slot."""
    import threading

    served, _ = tree
    holding, release = threading.Event(), threading.Event()

    def held_predict_video(video, **kw):
        holding.set()
        release.wait(10)
        raise StageInputError(f"{video}: cannot be opened as media")

    monkeypatch.setattr(predict, "predict_video", held_predict_video)
    monkeypatch.setenv("PERSONALITY_VIDEO_ROOT", str(served))
    monkeypatch.setenv("PERSONALITY_MAX_CONCURRENT_VIDEOS", "1")
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0.5")
    scorer, clip, first = loaded_scorer(), str(served / "sub" / "clip.mp4"), []
    holder = threading.Thread(target=lambda: first.extend(errors(scorer, [clip])), daemon=True)
    holder.start()
    assert holding.wait(10)
    began = time.monotonic()
    got = errors(scorer, [clip, clip, str(served / "nowhere.mp4")])
    waited = time.monotonic() - began
    release.set()
    holder.join(10)
    assert 0.4 < waited < 5 and first == [f"{clip}: cannot be opened as media"]
    assert got == [f"{clip}: not scored: the server was scoring 1 other video(s) "
                   "(PERSONALITY_MAX_CONCURRENT_VIDEOS) until the request's 0.5 s "
                   "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) had passed; send it again later",
                   f"{clip}: not scored: the request had run past the server's 0.5 s "
                   "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) before its turn; send fewer videos "
                   "per request",
                   f"{served / 'nowhere.mp4'}: not scored: the request had run past the "
                   "server's 0.5 s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) before its turn; send "
                   "fewer videos per request"]
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("PERSONALITY_MAX_CONCURRENT_VIDEOS", bad)
        with pytest.raises(StageInputError, match=f"PERSONALITY_MAX_CONCURRENT_VIDEOS: '{bad}' "
                                                  "is not a positive whole number of videos"):
            loaded_scorer()
    monkeypatch.delenv("PERSONALITY_MAX_CONCURRENT_VIDEOS")
    assert loaded_scorer().max_videos == 2  # the default


def test_the_readmes_table_of_server_limits_gives_the_codes_defaults():
    """README's table of the served model's limits: each PERSONALITY_* variable the code reads is
    a row, with the default the code applies."""
    import re

    from stages import serve_limits
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("The server's limits"):].split("\n\n")[1]  # the table after it
    rows = dict(re.findall(r"^\| `(PERSONALITY_\w+)` \| ([^|]+?) \|", table, re.M))
    assert rows == {serve.VIDEO_ROOT_ENV: "the folder the server started in",
                    serve_limits.MAX_GB_ENV: str(serve_limits.DEFAULT_MAX_GB),
                    serve_limits.MAX_ROWS_ENV: str(serve_limits.DEFAULT_MAX_ROWS),
                    serve_limits.MAX_VIDEOS_ENV: str(serve_limits.DEFAULT_MAX_VIDEOS)}

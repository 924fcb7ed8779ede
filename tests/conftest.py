"""Shared pytest fixtures: a tiny synthetic dataset, seeded RNG, the real-media fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# small real media that ships with the tests (provenance in tests/fixtures/README.md)
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))


# The test files that take longest (over a minute each on 2 cores), slowest first. `make test`
# runs files whole on two workers in collection order (pytest-xdist --dist loadfile
# --no-loadscope-reorder): started first, they run beside the many short files instead of
# leaving one worker alone with them at the end. The order changes no test's outcome.
SLOW_FILES = ("test_pipeline_sources.py", "test_cue_recovery.py", "test_executor.py",
              "test_repro_parallel.py", "test_executor_stages.py", "test_serve.py",
              "test_bench.py", "test_tracking.py", "test_retrain_deploy.py")


def pytest_collection_modifyitems(items: list) -> None:
    """The SLOW_FILES' tests first (a stable sort: each file's own order kept)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


def load_bench(name: str):
    """bench/<name>.py imported as a module (bench/ is no package): its functions to test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_fixture(name: str) -> Path:
    """Path to a file of tests/fixtures; a missing one is an error, not a skip."""
    path = FIXTURES / name
    assert path.is_file(), f"real-media fixture {path} is missing (see tests/fixtures/README.md)"
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for a test module (the machine's cores are shared; one thread also
    keeps float sums reproducible). Use: pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)


TINY_SYNTHETIC = dict(n_videos=6, n_subjects=3, min_seconds=2.0, max_seconds=2.5, fps=25.0,
                      width=320, height=240, sample_rate=16000, user_study_share=0.5,
                      n_raters=4, raters_per_video=3)


def make_tiny_dataset(root: Path, seed: int = 7, **overrides) -> Path:
    """Run the real ingest stage (synthetic source) into `root` with a handful of short clips."""
    from personality.common import BaseParams
    from stages.ingest import IngestParams, SyntheticParams, run

    root.mkdir(parents=True, exist_ok=True)
    params = IngestParams(source="synthetic", split=[0.34, 0.33, 0.33],
                          synthetic=SyntheticParams(**{**TINY_SYNTHETIC, **overrides}))
    run(params, BaseParams(seed=seed, workers=1), root=root)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A repo-like folder with data/manifest.parquet, data/videos/*.mp4 (6 clips of 2-2.5 s, 3
    subjects, one per split), data/user_study.parquet. Shared by the whole session: read only."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def write_video(path: Path, *, n_frames: int = 10, audio: bool = True, size=(64, 48),
                fps: int = 25) -> Path:
    """A tiny real H.264 mp4 (optionally with a 0.4 s AAC tone), written with PyAV."""
    from fractions import Fraction

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=Fraction(fps))
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(n_frames):
            img = np.full((size[1], size[0], 3), (i * 20) % 255, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            from personality.video_io import mux_mono_audio

            tone = (0.1 * np.sin(np.arange(6400) * 2 * np.pi * 220 / 16000)).astype(np.float32)
            mux_mono_audio(c, a, tone, 16000)
    return path

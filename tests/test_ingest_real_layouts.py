"""The chalearn16 reader on the layout the real release ships in (an audit of the ingest
readers against the distributed datasets): each test failed before its fix (the zips-left-in-
place one in its second half; its first half guards the fix against false alarms).

    pytest tests/test_ingest_real_layouts.py

Videos are copies of tests/fixtures/single_face.mp4. Layouts:
  - ChaLearn First Impressions V2: zip-in-zip; train-N.zip holds training80_01.zip ..., which
    extract to train/train-N/training80_XX/<YouTube video id>.NNN.mp4 (validation, test alike).
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from personality import datasets
from personality.common import BaseParams, StageInputError, read_artifact
from stages.ingest import IngestParams, run
from tests.conftest import real_fixture
from tests.test_datasets import chalearn_annotations, py2_pickle


def _ingest(tmp_path, **kw) -> dict:
    # a few subjects per fixture: no split is required to be filled
    return run(IngestParams(**{"required_splits": [], **kw}), BaseParams(seed=5, workers=1),
               root=tmp_path)


def _manifest(tmp_path) -> pd.DataFrame:
    return read_artifact("manifest", path=tmp_path / "data/manifest.parquet")


def _clip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return shutil.copyfile(real_fixture("single_face.mp4"), path)


# --------------------------------------------------------------------------------------------------
# ChaLearn First Impressions V2 (C1)

CHALEARN = {  # inner zip (relative to root, without .zip) -> its clips
    "train/train-1/training80_01": ["AAAAAAAAAAA.001.mp4", "BBBBBBBBBBB.001.mp4"],
    "train/train-2/training80_02": ["CCCCCCCCCCC.001.mp4"],
    "validation/val-1/validation80_01": ["DDDDDDDDDDD.001.mp4"],
    "test/test-1/test80_01": ["EEEEEEEEEEE.001.mp4"],
}
PICKLES = {"train": "annotation_training.pkl", "validation": "annotation_validation.pkl",
           "test": "annotation_test.pkl"}


def _chalearn(tmp_path, packed: set[str], keep_zips: bool = False) -> Path:
    """The release with the inner zips in `packed` left as zips, the others extracted (and
    their zips left beside the folder they extracted to, with `keep_zips`)."""
    root = tmp_path / "chalearn"
    scores: dict[str, dict[str, float]] = {}
    for inner, names in CHALEARN.items():
        for k, name in enumerate(names):
            scores.setdefault(inner.split("/")[0], {})[name] = 0.4 + 0.1 * k
            clip = _clip(root / inner / name)
            if inner in packed or keep_zips:
                with zipfile.ZipFile(root / f"{inner}.zip", "a") as z:
                    z.write(clip, name)  # flat, as the release's inner zips hold their clips
        if inner in packed:
            shutil.rmtree(root / inner)
    for folder, pickle in PICKLES.items():
        (root / pickle).write_bytes(py2_pickle(chalearn_annotations(scores[folder])))
    return root


def test_chalearn16_inner_zips_not_extracted_stop_the_stage_naming_them(tmp_path):
    # it stopped on "no usable video or sequence" and one "no such video" line per label
    root = _chalearn(tmp_path, packed=set(CHALEARN))
    with pytest.raises(StageInputError) as err:
        _ingest(tmp_path, source="chalearn16",
                chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    msg = str(err.value)
    assert msg == (f"4 archives not extracted under {root}, e.g. "
                   f"{root}/train/train-1/training80_01.zip: extract them (unzip, with the "
                   "password that comes with access)")
    assert not (tmp_path / "data/manifest.parquet").exists()


def test_chalearn16_partly_extracted_reports_the_zips_left_and_goes_on(tmp_path):
    # training80_02.zip's clips were lost with only a "no such video" line per clip
    root = _chalearn(tmp_path, packed={"train/train-2/training80_02"})
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert sorted(_manifest(tmp_path)["video_id"]) == [
        "AAAAAAAAAAA.001", "BBBBBBBBBBB.001", "DDDDDDDDDDD.001", "EEEEEEEEEEE.001"]
    assert summary["bad_rows"][0] == (
        f"1 archive not extracted under {root}/train, e.g. {root}/train/train-2/training80_02.zip"
        ": extract them (unzip, with the password that comes with access)")
    assert f"label for CCCCCCCCCCC.001.mp4 but no such video under {root}/train" in \
        summary["bad_rows"][1]
    assert summary["n_bad_rows"] == 2


def test_chalearn16_zips_left_beside_what_they_extracted_to_are_not_reported(tmp_path):
    """Not a finding, a guard on its fix: `unzip` leaves the archive in place, beside a folder
    of its name or (unzipped where it lies) beside its clips; neither is "not extracted"."""
    root = _chalearn(tmp_path, packed=set(), keep_zips=True)
    val = root / "validation/val-1"
    for clip in (val / "validation80_01").iterdir():
        clip.rename(val / clip.name)  # validation80_01.zip unzipped where it lies
    (val / "validation80_01").rmdir()
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert len(_manifest(tmp_path)) == 5 and summary["n_bad_rows"] == 0
    # a zip that cannot be read is no proof of anything: reported
    (root / "test/test-1/test80_02.zip").write_bytes(b"not a zip")
    summary = _ingest(tmp_path, source="chalearn16",
                      chalearn16=datasets.ChaLearnParams(root=str(root), split_mode="official"))
    assert summary["bad_rows"] == [f"1 archive not extracted under {root}/test, e.g. "
                                   f"{root}/test/test-1/test80_02.zip: extract them (unzip, "
                                   "with the password that comes with access)"]

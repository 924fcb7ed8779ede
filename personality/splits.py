"""Train / val / test splits, decided once at ingest and by subject: no person is in two splits.

    from personality.splits import assign_splits, kfold_splits, finish_splits
    assign_splits(["s1", "s2", "s3"], [0.7, 0.15, 0.15], seed=0)   # {"s1": "train", ...}

Nothing here runs on its own; stages/ingest.py applies these rules to every source's rows, and
personality/datasets.py's ChaLearn adapter uses the k-fold rule for its YouTube video ids
(`python -m pytest tests/test_ingest_folder.py tests/test_synthetic.py` exercises them). The
warnings ingest writes about subjects (too few per split; videos that are their own subject
because their source named none) are decided here too.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from personality.common import StageInputError
from personality.schemas import TRAITS

__all__ = ["assign_splits", "kfold_splits", "finish_splits", "check_subject_splits",
           "check_required_splits", "few_subject_warnings", "subject_warnings"]

MIN_SCORED_SUBJECTS = 3  # val / test: fewer labelled people and the scores' intervals say little


def assign_splits(subjects: list[str], fractions: list[float], seed: int) -> dict[str, str]:
    """Map each distinct subject to train/val/test, shuffled by `seed`, every split non-empty when
    there are at least three subjects. Sorting first makes the result independent of row order."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
        raise StageInputError(f"ingest.split: {fractions} must be three shares summing to 1")
    unique = sorted(set(subjects))
    order = np.random.default_rng([seed, 7]).permutation(len(unique))
    n = len(unique)
    n_val = max(1, round(fractions[1] * n)) if n >= 3 and fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 and fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return {unique[i]: names[k] for k, i in enumerate(order)}


def kfold_splits(subjects: list[str], *, n_folds: int, fold: int, seed: int) -> dict[str, str]:
    """By-subject k-fold: fold `fold` is test, fold `fold + 1` val, the rest train."""
    if n_folds < 3 or not 0 <= fold < n_folds:
        raise StageInputError(f"kfold: need n_folds >= 3 and 0 <= fold < n_folds "
                              f"(got {n_folds}, {fold})")
    unique = sorted(set(subjects))
    order = np.random.default_rng([seed, 11]).permutation(len(unique))
    fold_of = {unique[i]: k % n_folds for k, i in enumerate(order)}
    return {s: "test" if f == fold else "val" if f == (fold + 1) % n_folds else "train"
            for s, f in fold_of.items()}


def finish_splits(manifest: pd.DataFrame, assign: Callable[[list[str]], dict[str, str]], *,
                  where: str, kfold: bool = False, typed_ids: bool = False) -> pd.DataFrame:
    """Subjects that came with a split keep it; the others are assigned by subject (`assign`).
    With `kfold` (ingest.split_mode=kfold) no clip may come with a split: StageInputError.
    `typed_ids`: subject ids a person typed (a labels CSV), which may not differ only in case or
    spaces; a corpus's own ids (YouTube's, case-sensitive) are taken as they are."""
    manifest = manifest.copy()
    if typed_ids:  # only ids a person typed; one taken from the video's name is the file's own
        typed = manifest["subject_id"].astype(str)[manifest["subject_id"] != manifest["video_id"]]
        _check_subject_spelling(typed, where)
    manifest["split"] = manifest["split"].fillna("").astype(str)
    given = manifest[manifest["split"] != ""]
    if kfold and len(given):  # the folds would keep them: each fold would test the same people
        raise StageInputError(
            f"{where}: ingest.split_mode=kfold decides every subject's split, but {len(given)} "
            f"clip(s) of {given['subject_id'].nunique()} subject(s) come with one (its `split` "
            "column): leave that column empty for k-fold, or set ingest.split_mode: shares to "
            "keep the given splits")
    fixed = given.groupby("subject_id")["split"].agg(set)
    clash = [s for s, v in fixed.items() if len(v) > 1]
    if clash:
        raise StageInputError(f"{where}: subject(s) {', '.join(clash[:5])} appear in more than "
                              "one split; splits must be by subject")
    open_subjects = sorted(set(manifest["subject_id"]) - set(fixed.index))
    assigned = assign(open_subjects) if open_subjects else {}
    assigned.update({s: next(iter(v)) for s, v in fixed.items()})
    manifest["split"] = manifest["subject_id"].map(assigned)
    manifest["has_audio"] = manifest["has_audio"].astype(bool)
    return manifest


def _check_subject_spelling(subjects: pd.Series, where: str) -> None:
    """StageInputError for subject ids that differ only in case or spaces ("Alice", "alice "):
    as two subjects, one person's clips could land in train and test."""
    spellings: dict[str, set[str]] = {}
    for s in subjects.unique():
        spellings.setdefault(" ".join(s.split()).casefold(), set()).add(s)
    clash = [sorted(v) for v in spellings.values() if len(v) > 1]
    if clash:
        raise StageInputError(f"{where}: subject ids {' / '.join(map(repr, clash[0]))} differ "
                              f"only in case or spaces ({len(clash)} such group(s)): splits are "
                              "by subject, so write one person's id one way")


def check_subject_splits(manifest: pd.DataFrame) -> None:
    """StageInputError naming up to five subjects whose clips are in more than one split."""
    per_subject = manifest.groupby("subject_id")["split"].nunique()
    crossing = per_subject[per_subject > 1]
    if len(crossing):
        raise StageInputError(f"subjects in more than one split: {list(crossing.index[:5])}")


def check_required_splits(manifest: pd.DataFrame, required: list[str]) -> None:
    """StageInputError when a `required` split holds no subject, or no *labelled* one: a split of
    unlabelled clips only (NaN traits, kept for deploy / predict) would be trained or scored on
    nothing, and a CCC over no clip is no number."""
    fix = "change ingest.split / the labels' split column (or ingest.required_splits)"
    counts = manifest.groupby("split")["subject_id"].nunique()
    empty = [s for s in required if counts.get(s, 0) == 0]
    if empty:
        everyone = manifest["subject_id"].nunique()
        raise StageInputError(
            f"ingest: split(s) {', '.join(empty)} would be empty ({everyone} subject(s) in all; "
            f"splits are by subject): give more subjects, or {fix}")
    counts = _labelled_subjects(manifest)
    unlabelled = [s for s in required if counts.get(s, 0) == 0]
    if unlabelled:
        held = manifest[manifest["split"].isin(unlabelled)]
        raise StageInputError(
            f"ingest: split(s) {', '.join(unlabelled)} hold no labelled video ({len(held)} "
            f"unlabelled clip(s) of {held['subject_id'].nunique()} subject(s)): a model is "
            "trained on train, chosen on val and scored on test, each needs labels; give the "
            f"five traits for some of their videos, or {fix}")


def _labelled_subjects(manifest: pd.DataFrame) -> pd.Series:
    """split -> the number of subjects with at least one video rated on all five traits."""
    labelled = manifest[manifest[list(TRAITS)].notna().all(axis=1)]
    return labelled.groupby("split")["subject_id"].nunique()


def few_subject_warnings(manifest: pd.DataFrame) -> list[str]:
    """What a user should know before training: a val or test split of fewer than
    MIN_SCORED_SUBJECTS labelled subjects gives scores whose intervals over subjects rest on one
    or two people (none with one: evaluate writes null)."""
    counts = _labelled_subjects(manifest)
    return [f"split {split} holds {counts.get(split, 0)} labelled subject(s): its CCC rests on "
            f"so few people that its 95% interval over subjects says little (none with one); "
            f"{MIN_SCORED_SUBJECTS} or more give one worth reading"
            for split in ("val", "test") if 0 < counts.get(split, 0) < MIN_SCORED_SUBJECTS]


SUBJECT_FIX = {  # per source whose videos can lack a subject: how to give them one
    "folder": "give each video its `subject` in the labels CSV",
    "openface_csv": "give each file its `subject` in the labels CSV",
    "chalearn16": "name each clip <YouTube id>.NNN.mp4, as the release does (its subject is the "
                  "YouTube id)"}


def subject_warnings(manifest: pd.DataFrame, source: str) -> list[str]:
    """What a user should know about the subjects: a video whose source gives it none (a labels
    CSV without subjects or with empty cells, a ChaLearn clip not named <YouTube id>.NNN.mp4) is
    its own subject, so one person's clips can land in train and test (optimistic)."""
    fix = SUBJECT_FIX.get(source)
    alone = manifest["video_id"][manifest["subject_id"] == manifest["video_id"]]
    if fix is None or len(manifest) < 2 or len(alone) == 0:
        return []
    if len(alone) < len(manifest):
        which = (f"{len(alone)} of {len(manifest)} videos have no subject (e.g. {alone.iloc[0]}),"
                 " so each of them is its own subject: if one is a clip of a person with other "
                 "clips, they")
    else:
        which = ("no subject given for any video, so each video is its own subject: if a person "
                 "has several clips, they")
    return [f"{source}: {which} can land in different splits and the test scores are "
            f"optimistic; {fix}"]

"""Source adapters for real datasets: ChaLearn First Impressions V2 and UDIVA here, PerFeX and
OpenFace CSVs (AU sequences, no video) in personality/datasets_au.py.

Each adapter reads a dataset in its official layout and returns manifest rows (the columns of
`schemas.ARTIFACTS["manifest"]`) plus the problems it found, one message per bad item, naming the
file. `stages/ingest.py` chooses one by `ingest.source` and writes the artifacts:

    python -m stages.ingest     # with ingest.source: chalearn16 | udiva | perfex | openface_csv

Untrusted files are data, not code: label pickles go through personality/safe_pickle.py (dicts,
lists, strings and numbers only, numpy's numeric scalars as Python numbers), and every path read
from a label file must stay inside the dataset root.
The README's "Real datasets" section says where each dataset comes from and how to point at it.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Literal

import pandas as pd

from personality.archives import mac_leftover, unextracted_message, unextracted_zips
from personality.common import (StageInputError, check_utf8_path, get_logger, progress,
                                resolve_untrusted, safe_join)
from personality.csv_tables import read_table
from personality.safe_pickle import load_data_pickle
from personality.schemas import TRAITS
from personality.splits import kfold_splits

log = get_logger("datasets")

# --------------------------------------------------------------------------------------------------
# ChaLearn First Impressions V2 (ChaLearn LAP 2016)

CHALEARN_TRAITS = {"openness": "O", "conscientiousness": "C", "extraversion": "E",
                   "agreeableness": "A", "neuroticism": "N"}
_CHALEARN_CLIP = re.compile(r"^(?P<youtube>.+)\.(?P<n>\d{3})\.mp4$", re.IGNORECASE)  # .MP4 too


@dataclasses.dataclass(frozen=True)
class ChaLearnParams:
    root: str = ""  # the folder holding the extracted split folders and the annotation pickles
    train_dir: str = "train"  # mp4s anywhere below (the inner zips extract to training80_XX/)
    val_dir: str = "validation"
    test_dir: str = "test"
    train_labels: str = "annotation_training.pkl"
    val_labels: str = "annotation_validation.pkl"
    test_labels: str = "annotation_test.pkl"
    # kfold: by YouTube video id (the subject; one person may be in several videos, so this is a
    # proxy for by-person); official: the challenge's split, refused when a video has clips in
    # two splits (on the real data most do: the challenge split clips)
    split_mode: Literal["official", "kfold"] = "kfold"
    n_folds: int = 10
    fold: int = 0  # kfold: this fold is test, the next one val, the rest train


def path_video_id(relative: str) -> str:
    """A video id that is unique by construction: the path relative to the dataset's labels file,
    *with* its extension, every character outside [A-Za-z0-9._-] percent-escaped (reversible with
    urllib.parse.unquote). `a/b.mp4` -> `a%2Fb.mp4`, `a__b.mp4` -> `a__b.mp4`, `dup.MP4` ->
    `dup.MP4`: paths that differ give ids that differ."""
    from urllib.parse import quote

    return quote(Path(relative).as_posix(), safe="._-")


def check_unique_ids(rows: list[dict], where: str) -> None:
    """Two rows with one video_id are an error naming both files (they would be merged)."""
    first: dict[str, dict] = {}
    for row in rows:
        prior = first.setdefault(row["video_id"], row)
        if prior is not row:
            raise StageInputError(
                f"{where}: video_id {row['video_id']!r} names two inputs: "
                f"{prior.get('path') or prior.get('source', '?')} and "
                f"{row.get('path') or row.get('source', '?')}; rename one of them")


def clip_key(name: str) -> str:
    """A clip's file name as the annotation pickles key it: the `.mp4` extension in lower case
    (`J4GQm9j0JZ0.003.MP4`, from a Windows copy or some unpackers, -> `J4GQm9j0JZ0.003.mp4`),
    the rest as it is (YouTube ids are case-sensitive). Other names are returned unchanged."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.mp4" if dot and ext.lower() == "mp4" else name


def chalearn_subject(filename: str) -> str:
    """The YouTube video id: the name before the last `.NNN` (`J4GQm9j0JZ0.003.mp4` or `.MP4` ->
    `J4GQm9j0JZ0`). A video id, not a channel id (those are 24 characters, `UC...`): one person
    may appear in several videos, so splitting by it is a proxy for splitting by person."""
    m = _CHALEARN_CLIP.match(filename)
    return m.group("youtube") if m else Path(filename).stem


def read_chalearn_annotations(path: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """`{trait: {"<id>.mp4": value}}` -> (`{"<id>.mp4": {"O": .., ..., "N": ..}}`, problems).
    A file that is not such a dict is an error; a video with a value that is not a number in
    [0, 1], or missing from some trait's dict, is a problem naming it, and is left out."""
    data = load_data_pickle(path)
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected a dict of traits, got {type(data).__name__}")
    keys = {str(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}
    missing = [t for t in CHALEARN_TRAITS if t not in keys]
    if missing:
        raise StageInputError(f"{path}: missing trait(s) {', '.join(missing)}; has "
                              f"{', '.join(sorted(keys))}")
    out: dict[str, dict[str, float]] = {}
    bad: dict[str, str] = {}  # video -> what is wrong with it (its first fault)
    for trait, letter in CHALEARN_TRAITS.items():
        per_video = keys[trait]
        if not isinstance(per_video, dict):
            raise StageInputError(f"{path}: '{trait}' is a {type(per_video).__name__}, expected "
                                  "a dict of video -> score")
        for video, value in per_video.items():
            name = video.decode("latin1") if isinstance(video, bytes) else str(video)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad.setdefault(name, f"{trait}[{name}] = {value!r} is not a number")
            elif not 0.0 <= float(value) <= 1.0:  # NaN fails this too
                bad.setdefault(name, f"{trait}[{name}] = {value} is outside [0, 1]")
            else:
                out.setdefault(name, {})[letter] = float(value)
    for name, traits in out.items():
        if name not in bad and len(traits) < len(CHALEARN_TRAITS):
            absent = [t for t, k in CHALEARN_TRAITS.items() if k not in traits]
            bad[name] = f"{name} has no {', '.join(absent)} score"
    problems = [f"{path}: {why}; video left out" for why in bad.values()]
    return {k: v for k, v in out.items() if k not in bad}, problems


def ingest_chalearn16(p: ChaLearnParams, *, seed: int, root: Path, probe) -> tuple[list, list]:
    if not p.root:
        raise StageInputError("ingest.chalearn16.root: set it to the extracted dataset folder")
    base = _resolve(p.root, root)
    rows, problems, archives, n_videos = [], [], [], 0
    splits = (("train", p.train_dir, p.train_labels), ("val", p.val_dir, p.val_labels),
              ("test", p.test_dir, p.test_labels))
    for split, folder, labels_name in splits:
        video_dir = _param_path(base, folder)
        labels_path = _param_path(base, labels_name)
        if not video_dir.is_dir() and not labels_path.exists():
            log.info("chalearn16: no %s split (%s, %s absent)", split, video_dir, labels_path)
            continue
        labels, bad_labels = (read_chalearn_annotations(labels_path) if labels_path.exists()
                              else ({}, []))
        problems += bad_labels
        if not labels_path.exists():
            problems.append(f"{labels_path}: annotation file not found; {split} videos unlabelled")
        videos = _videos_by_name(video_dir, problems)
        n_videos += len(videos)
        zips = unextracted_zips(video_dir, set(videos))
        archives += zips
        problems += [unextracted_message(zips, video_dir)] if zips else []
        for name in sorted(set(labels) - set(videos)):  # refused clips are in videos (None)
            problems.append(f"{labels_path}: label for {name} but no such video under {video_dir}")
        for name, path in progress(videos.items(), desc=f"chalearn16:{split}", unit="video"):
            if path is None or not _inside((base, video_dir), path, problems):
                continue
            if name not in labels and labels_path.exists():
                problems.append(f"{path}: video has no label in {labels_path}")
                continue
            facts = _probed(probe, path, problems)
            if facts is None:
                continue
            traits = labels.get(name, {})
            rows.append({"video_id": path.stem, "path": _rel(path, root),
                         "split": split, "subject_id": chalearn_subject(name),
                         "dataset": "chalearn16",
                         **{t: traits.get(t, math.nan) for t in TRAITS}, **facts})
    if archives and not n_videos:  # nothing extracted: the per-label lines would hide why
        raise StageInputError(unextracted_message(archives, base))
    if p.split_mode == "official":
        _refuse_shared_videos(rows)
    elif rows:
        split_of = kfold_splits([r["subject_id"] for r in rows], n_folds=p.n_folds, fold=p.fold,
                                seed=seed)
        for r in rows:
            r["split"] = split_of[r["subject_id"]]
    return rows, problems


def _probed(probe, path: Path, problems: list[str]) -> dict | None:
    """probe(path)'s facts, or None with the reason among `problems` (the video is left out)."""
    try:
        return probe(path)
    except StageInputError as exc:
        problems.append(str(exc))
        return None


def _videos_by_name(video_dir: Path, problems: list[str]) -> dict[str, Path | None]:
    """The mp4s anywhere under `video_dir`, the extension in any case, by their annotation key
    (clip_key: `X.003.MP4` is the label's `X.003.mp4`). A name found twice (the same clip in two
    trainingXX folders) is a problem naming both, and the first is kept. One key under two
    spellings (`X.003.mp4` beside `X.003.MP4`) is a problem naming both, and the key maps to
    None: which file its label means is unknown, so neither is picked."""
    videos: dict[str, Path | None] = {}
    first: dict[str, Path] = {}  # key -> the first file found of it
    found = (p for p in video_dir.rglob("*") if p.suffix.lower() == ".mp4")  # [] if no folder
    for path in sorted(p for p in found if not mac_leftover(p)):
        try:
            check_utf8_path(path)
        except StageInputError as exc:  # one file's name: a problem, not a dead stage
            problems.append(f"{exc}; left out")
            continue
        key = clip_key(path.name)
        prior = first.setdefault(key, path)
        if prior is path:
            videos[key] = path
        elif prior.name == path.name:
            problems.append(f"{path}: a second file named {path.name} (first: {prior}); this "
                            "one is left out")
        else:
            problems.append(f"{prior} and {path}: one clip {key} under two spellings of its "
                            "extension; both left out (which one its label means is unknown): "
                            "remove or rename one")
            videos[key] = None
    return videos


def _refuse_shared_videos(rows: list[dict]) -> None:
    """The challenge split clips, not people: on the real data most validation YouTube videos
    also have training clips. Splits here are by subject, so the official one is refused when a
    video crosses it (kfold, the default, splits by YouTube video id)."""
    splits_of: dict[str, set] = {}
    for r in rows:
        splits_of.setdefault(r["subject_id"], set()).add(r["split"])
    shared = sorted(s for s, v in splits_of.items() if len(v) > 1)
    if shared:
        raise StageInputError(
            f"ingest.chalearn16.split_mode=official: {len(shared)} of {len(splits_of)} YouTube "
            f"videos (e.g. {', '.join(shared[:3])}) have clips in more than one official split "
            "(the challenge split clips, not people); splits here are by subject: use "
            "split_mode: kfold (by YouTube video id; ingest.chalearn16.fold picks the fold)")


# --------------------------------------------------------------------------------------------------
# UDIVA v0.5

UDIVA_TRAITS = {"OPENMINDEDNESS_Z": "O", "CONSCIENTIOUSNESS_Z": "C", "EXTRAVERSION_Z": "E",
                "AGREEABLENESS_Z": "A", "NEGATIVEEMOTIONALITY_Z": "N"}
_UDIVA_RECORDING = re.compile(r"^FC(?P<part>[12])_(?P<task>[A-Z])$", re.IGNORECASE)
_UDIVA_SPLIT_KEYS = ("parts", "sessions", "recordings")


def udiva_release_splits() -> dict[str, dict[str, str]]:
    """Per split, the release's layout once its zips are extracted under the root:
    metadata_<split>.zip -> <split>/metadata/metadata_<split>/*.csv, and one folder per task,
    <split>/recordings/<task>_recordings_<split>/<6-digit session>/FC1_T.mp4 ... Val and test
    labels are in parts_<split>_unmasked.csv: parts_<split>.csv has them masked (the challenge)."""
    out = {}
    for split in ("train", "val", "test"):
        meta = f"{split}/metadata/metadata_{split}"
        parts = "parts_train.csv" if split == "train" else f"parts_{split}_unmasked.csv"
        out[split] = {"parts": f"{meta}/{parts}", "sessions": f"{meta}/sessions_{split}.csv",
                      "recordings": f"{split}/recordings"}
    return out


@dataclasses.dataclass(frozen=True)
class UdivaParams:
    root: str = ""  # the folder holding train/, val/, test/ of the release
    # per split, relative to root: the participants and sessions CSVs, and the folder holding
    # <task>_recordings_<split>/<session>/ (or the session folders themselves)
    splits: dict = dataclasses.field(default_factory=udiva_release_splits)
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["T"])  # T alk, A nimals, L ego, G host


def ingest_udiva(p: UdivaParams, *, root: Path, probe) -> tuple[list, list]:
    if not p.root:
        raise StageInputError("ingest.udiva.root: set it to the UDIVA folder")
    base = _resolve(p.root, root)
    rows, problems, absent = [], [], []
    for split, spec in p.splits.items():
        _check_split_spec(split, spec)
        parts_path = _param_path(base, spec["parts"])
        sessions_path = _param_path(base, spec["sessions"])
        if parts_path.exists():
            rows += _udiva_split(split, spec, base, root=root, tasks=p.tasks, probe=probe,
                                 problems=problems)
            continue
        absent.append(str(parts_path))
        if sessions_path.exists():  # the split is there, its labels are not
            problems.append(f"{parts_path}: not found, but {sessions_path} is: the {split} "
                            "split is left out")
        else:
            log.info("udiva: no %s split (%s absent)", split, parts_path)
    if len(absent) == len(p.splits):  # a wrong root or layout: say where we looked
        raise StageInputError(f"ingest.udiva: no participants CSV found under {base}: looked for "
                              f"{', '.join(absent) or 'no split (ingest.udiva.splits is empty)'}"
                              "; set ingest.udiva.root to the folder holding train/, val/, test/ "
                              "(or ingest.udiva.splits)")
    return rows, problems


def _check_split_spec(split: str, spec) -> None:
    if split not in ("train", "val", "test"):
        raise StageInputError(f"ingest.udiva.splits: unknown split {split!r}")
    missing = [k for k in _UDIVA_SPLIT_KEYS if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise StageInputError(f"ingest.udiva.splits.{split}: missing {', '.join(missing)} "
                              "(parts, sessions, recordings: paths relative to ingest.udiva.root)")


def _udiva_split(split: str, spec: dict, base: Path, *, root: Path, tasks: list[str], probe,
                 problems: list[str]) -> list[dict]:
    """Manifest rows of one split: each recording of a participant with labels."""
    parts_path = _param_path(base, spec["parts"])
    labels, dropped = _udiva_labels(_read_parts(parts_path, split), parts_path, problems)
    sessions_path = _param_path(base, spec["sessions"])
    sessions = read_table(sessions_path, ["ID", "PART.1", "PART.2"])
    rec_root = _param_path(base, spec["recordings"])
    rows, seen = [], {}  # seen: session folder -> the CSV line that took it
    for _, sess in sessions.iterrows():
        recordings = _udiva_recordings(sess, rec_root, base, tasks, split=split, seen=seen,
                                       sessions_path=sessions_path, problems=problems)
        for video_id, path, participant in recordings:
            if participant not in labels:
                problems.append(f"{path}: participant {participant} " + dropped.get(
                    participant, f"has no row in {parts_path}"))
                continue
            facts = _probed(probe, path, problems)
            if facts is None:
                continue
            rows.append({"video_id": video_id, "path": _rel(path, root),
                         "split": split, "subject_id": participant, "dataset": "udiva",
                         **labels[participant], **facts})
    in_sessions = {sess[c].strip() for _, sess in sessions.iterrows()
                   for c in ("PART.1", "PART.2")}
    for participant in sorted(set(labels) - in_sessions):  # labelled, never recorded
        problems.append(f"{parts_path}: participant {participant} is in no session of "
                        f"{sessions_path}: no recording")
    return rows


def _read_parts(path: Path, split: str) -> pd.DataFrame:
    """A participants CSV; one error when its labels are masked (trait columns missing, or all
    empty: the challenge released val and test so, the labels came as parts_<split>_unmasked.csv)
    rather than a line per participant."""
    parts = read_table(path, ["ID"])
    present = [c for c in UDIVA_TRAITS if c in parts.columns]
    if not present or (len(parts) and all((parts[c].str.strip() == "").all() for c in present)):
        raise StageInputError(f"labels are masked in {path} (its trait z-score columns are "
                              f"missing or empty): use parts_{split}_unmasked.csv "
                              f"(ingest.udiva.splits.{split}.parts)")
    missing = [c for c in UDIVA_TRAITS if c not in parts.columns]
    if missing:
        raise StageInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return parts


def _udiva_labels(parts: pd.DataFrame, parts_path: Path, problems: list[str]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Participant -> z-scores from a parts CSV, and participant -> why it was dropped. A row
    whose z-scores are not all finite numbers (`nan` parses as a float) is reported; a
    participant on two rows that disagree is reported with both row numbers and dropped (which
    row is right is not ours to guess); an identical repeat is kept."""
    labels: dict[str, dict[str, float]] = {}
    line_of: dict[str, int] = {}
    dropped: dict[str, str] = {}
    for i, row in parts.iterrows():
        participant, where = row["ID"].strip(), f"{parts_path} row {i}"  # i: the file's line
        try:
            z = {letter: float(row[col]) for col, letter in UDIVA_TRAITS.items()}
        except ValueError:
            z = None
        if z is None or not all(math.isfinite(v) for v in z.values()):
            problems.append(f"{where} (participant {participant}): a trait z-score is not a "
                            "finite number")
            dropped.setdefault(participant, f"dropped: row {i} of {parts_path} is unusable")
            continue
        if participant in line_of and (participant in dropped or z != labels[participant]):
            problems.append(f"{parts_path} rows {line_of[participant]} and {i}: participant "
                            f"{participant} has two different rows of z-scores; dropped")
            dropped[participant] = f"dropped: two different rows in {parts_path}"
            continue
        labels.setdefault(participant, z)
        line_of.setdefault(participant, i)
    return {k: v for k, v in labels.items() if k not in dropped}, dropped


def _session_dirs(rec_root: Path, split: str, session: str) -> list[Path]:
    """The folders of one session: <recordings>/<task>_recordings_<split>/<session>/, one per
    task (the release), and <recordings>/<session>/ (a folder of session folders). An ID that
    lost its zero padding (`2003`: a CSV saved by a spreadsheet) is tried as `002003` when no
    folder has its own name."""
    parents = [rec_root, *sorted(d for d in rec_root.glob(f"*_recordings_{split}") if d.is_dir())]
    names = [session] + ([session.zfill(6)] if session.isdigit() and len(session) < 6 else [])
    for name in names:
        dirs = [d / name for d in parents if (d / name).is_dir()]
        if dirs:
            return dirs
    return []


def _udiva_recordings(sess: pd.Series, rec_root: Path, base: Path, tasks: list[str], *,
                      split: str, seen: dict[str, int], sessions_path: Path,
                      problems: list[str]) -> list[tuple[str, Path, str]]:
    """(video_id, recording, participant) of one sessions-CSV row: FC<part>_<task>.mp4 below its
    folders, in any case (FC2_T.MP4 and fc2_t.mp4 count); the id is `<folder>_<file stem>`
    (`001080_FC1_T`), from the folder's name, not the CSV's ID (`2003` and `002003` give one id). Reported: a session with
    no folder, a folder an earlier row already took, a second recording of one participant and
    task or one under two spellings (`_recordings_by_key`), and each participant and task in
    `tasks` with no recording at all."""
    session = sess["ID"].strip()
    try:
        safe_join(rec_root, session)
    except StageInputError as exc:  # a session ID that is no folder name
        problems.append(f"{sessions_path} (session {session!r}): {exc}")
        return []
    dirs = _session_dirs(rec_root, split, session)
    if not dirs:
        problems.append(f"{rec_root}: session folder of {session} not found (looked for "
                        f"{session}/ there and in its *_recordings_{split}/ folders)")
        return []
    row = int(sess.name)  # the CSV's line number (read_table's index)
    if seen.setdefault(dirs[0].name, row) != row:  # `2003` beside `002003`, or a repeated row
        problems.append(f"{sessions_path} row {row} (session {session}): folder {dirs[0].name} "
                        f"is row {seen[dirs[0].name]}'s already; dropped")
        return []
    found = _recordings_by_key(dirs, tasks, session, (base, rec_root), problems)
    for part in ("1", "2"):
        for task in tasks:
            participant = sess[f"PART.{part}"].strip()
            if participant and (part, task) not in found:
                problems.append(f"{', '.join(map(str, dirs))}: no recording FC{part}_{task}.mp4 "
                                f"of participant {participant} (session {session})")
    return [(f"{dirs[0].name}_{path.stem}", path, sess[f"PART.{key[0]}"].strip())
            for key, path in sorted(found.items()) if path is not None]


def _recordings_by_key(dirs: list[Path], tasks: list[str], session: str,
                       bases: tuple[Path, ...], problems: list[str]
                       ) -> dict[tuple[str, str], Path | None]:
    """{(part, task): recording} of one session's folders, the name in any case (fc1_t.mp4: a
    release unpacked lower-cased). As ChaLearn's clips (_videos_by_name): a name found twice (in
    two folders) is a problem naming both, the first kept; one recording under two spellings
    (FC1_T.mp4 beside FC1_T.MP4 or fc1_t.mp4) is one problem naming both and maps to None, as
    does a file escaping the dataset (reported by _inside): which one is the recording is
    unknown, so neither is picked."""
    found: dict[tuple[str, str], Path | None] = {}
    first: dict[tuple[str, str], Path] = {}  # key -> the first file found of it
    for path in sorted(p for d in dirs for p in d.rglob("*")):
        m = _UDIVA_RECORDING.match(path.stem)
        key = (m.group("part"), m.group("task").upper()) if m else None
        if path.suffix.lower() != ".mp4" or key is None or key[1] not in tasks:
            continue
        prior = first.setdefault(key, path)
        if prior is path:
            found[key] = path if _inside(bases, path, problems) else None
        elif prior.name == path.name:
            problems.append(f"{path}: a second recording FC{key[0]}_{key[1]} of session "
                            f"{session} (the first: {prior}); dropped")
        else:
            problems.append(f"{prior} and {path}: one recording FC{key[0]}_{key[1]} of session "
                            f"{session} under two spellings of its name; both left out (which "
                            "one is the recording is unknown): remove or rename one")
            found[key] = None
    return found


# PerFeX's long CSV and OpenFace CSVs (AU sequences, no video) are read in
# personality/datasets_au.py, which imports the helpers below; this module does not import it.

# --------------------------------------------------------------------------------------------------


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _param_path(base: Path, relative: str) -> Path:
    """A folder or file a param names below the dataset root, symlinks followed: the user's own
    layout (a split folder linked to another disk), not a label file's path (`_inside`)."""
    return resolve_untrusted(base / relative, relative)


def _inside(bases: tuple[Path, ...], path: Path, problems: list[str]) -> bool:
    """Whether a file found under a dataset folder stays in the dataset root or in the folder
    it was found in (a param's, `_param_path`) once symlinks are followed (the folder source's
    rule, `safe_join`); a file that escapes, or cannot be resolved, is reported in `problems`
    by name and skipped."""
    for base in reversed(bases):  # the root last: its refusal is the one reported
        try:
            return bool(safe_join(base, path))
        except StageInputError as exc:
            error = str(exc)  # "<file>: path escapes the dataset root <base>"
    problems.append(error)
    return False


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)

"""Zips of a dataset release left packed: ChaLearn First Impressions V2 is zip-in-zip (train-N.zip
holds training80_01.zip ...), and an inner zip left packed hides all its clips behind one "no such
video" line per label. `personality/datasets.py`'s ChaLearn adapter names them instead:

    unextracted_zips(Path("/data/chalearn/train"), {"abc.001.mp4", ...})   # -> [Path, ...]

Nothing is extracted here: the archives are password-protected (the password comes with access);
a zip's listing needs no password. Tested in tests/test_ingest_real_layouts.py.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["unextracted_zips", "unextracted_message", "mac_leftover"]


def unextracted_zips(video_dir: Path, videos: set[str]) -> list[Path]:
    """The zips under a split folder that were not extracted: the release is zip-in-zip
    (train-N.zip holds training80_01.zip ...), and an inner zip left packed hides all its clips.
    A zip was extracted when everything it lists was found (unzip leaves the archive where it
    was): its clips among `videos` (file names, the extension `.mp4` in lower case: a clip
    extracted as `.MP4` is found), its inner zips as a file or an extracted folder
    of that name below the split folder."""
    if not video_dir.is_dir():
        return []
    below = list(video_dir.rglob("*"))
    zips = sorted(p for p in below if p.suffix.lower() == ".zip" and _plain_file_in(p, video_dir))
    present = {p.name for p in below}
    return [z for z in zips if not _all_found(z, videos, present)]


def _plain_file_in(path: Path, folder: Path) -> bool:
    """Whether `path`, symlinks followed, is a regular file inside `folder`: a named pipe called
    x.zip blocked the listing's open for ever (ingest hung), and a symlink out of the dataset is
    no part of it (its listing is not read either)."""
    try:
        real = path.resolve()
        return real.is_file() and folder.resolve() in real.parents
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
        return False


def _all_found(archive: Path, videos: set[str], present: set[str]) -> bool:
    """Whether every clip and inner zip `archive` lists is found (a zip's listing needs no
    password: only the contents are encrypted). A zip that cannot be read counts as extracted
    only when a folder of its name is there (an empty folder from a failed unzip is not enough
    for a readable one)."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [Path(n).name for n in z.namelist()]
    except (zipfile.BadZipFile, OSError):
        return archive.with_suffix("").is_dir()
    clips = {n[:-4] + ".mp4" for n in members if n.lower().endswith(".mp4")}
    inner = {n for n in members if n.lower().endswith(".zip")}
    return clips <= videos and all(n in present or n[:-4] in present for n in inner)


def unextracted_message(zips: list[Path], where: Path) -> str:
    # not extracted here: the archives are password-protected, the password comes with access
    n = len(zips)
    return (f"{n} archive{'s' if n > 1 else ''} not extracted under {where}, e.g. {zips[0]}: "
            "extract them (unzip, with the password that comes with access)")


def mac_leftover(path: Path) -> bool:
    """Whether `path` is metadata a Mac leaves beside a file when it zips or copies a folder (an
    AppleDouble `._abc.001.mp4` next to `abc.001.mp4`, and copies of them under `__MACOSX/`):
    4 KB of attributes with a video's extension, no video. Each read as a clip of its own:
    one "video has no label" line per clip on ChaLearn, one failed row per clip in a batch."""
    return path.name.startswith("._") or "__MACOSX" in path.parts

"""Per-video Parquet artifacts of the frames / faces / aus stages: one row group per video.

Nothing here runs on its own; `python -m pytest tests/test_faces.py tests/test_aus.py` exercises it.

- `VideoShardWriter`: an `ArtifactWriter` that stores each video as its own Parquet row group, so a
  later stage reads exactly one video (`index_videos` + `read_video`) and memory stays bounded by
  one video, never a whole shard or dataset.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from personality.common import ArtifactWriter, SchemaError, check_schema

__all__ = ["VideoShardWriter", "index_videos", "read_video"]



class VideoShardWriter(ArtifactWriter):
    """ArtifactWriter whose shards hold one Parquet row group per video (per `write` call), so
    readers can fetch exactly one video. Flushes every `rows_per_shard` rows like its parent."""

    def _flush(self) -> None:
        if not self._buffer:
            return
        tables = [pa.Table.from_pandas(df, preserve_index=False) for df in self._buffer]
        # one schema for the shard: a video whose list / bytes column is all null (no face) has
        # type null there, promoted to the others' type
        whole = pa.concat_tables(tables, promote_options="permissive")
        out = self._tmp / f"part-{self._shard:05d}.parquet"
        with pq.ParquetWriter(out, whole.schema) as writer:
            start = 0
            for table in tables:
                writer.write_table(whole.slice(start, len(table)),
                                   row_group_size=max(len(table), 1))
                start += len(table)
        self._shard += 1
        self._buffer, self._buffered = [], 0


def index_videos(path: str | os.PathLike, name: str, rows: dict[str, int] | None = None
                 ) -> dict[str, list[tuple[Path, int]]]:
    """Map video_id -> [(shard, row_group), ...] for a sharded artifact folder, reading only the
    `video_id` column (and counting each video's rows into `rows` when given). Checks every
    shard's columns against artifact `name` (SchemaError)."""
    path = Path(path)
    if not path.is_dir():
        raise SchemaError(f"{path}: artifact '{name}' not found; run its stage first")
    index: dict[str, list[tuple[Path, int]]] = {}
    for shard in sorted(path.glob("*.parquet")):
        try:
            pf = pq.ParquetFile(shard)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{shard}: not a readable Parquet artifact: {exc}") from None
        check_schema(pf.schema_arrow.empty_table().to_pandas(), name, shard)
        for rg in range(pf.num_row_groups):
            ids = pf.read_row_group(rg, columns=["video_id"]).column(0).to_pylist()
            for vid in dict.fromkeys(ids):
                index.setdefault(vid, []).append((shard, rg))
            if rows is not None:
                for vid in ids:
                    rows[vid] = rows.get(vid, 0) + 1
    return index


def read_video(parts: list[tuple[Path, int]], video_id: str, name: str,
               columns: list[str] | None = None) -> pd.DataFrame:
    """Rows of one video from the row groups `index_videos` listed, schema-checked."""
    frames = []
    for shard, rg in parts:
        table = pq.ParquetFile(shard).read_row_group(rg, columns=columns)
        df = table.to_pandas()
        frames.append(df[df["video_id"] == video_id])
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    if columns is None:
        check_schema(df, name, parts[0][0])
    return df

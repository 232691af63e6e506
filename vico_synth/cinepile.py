"""CinePile annotations (`--annotations FILE`) joined to local video files.

CinePile (HF `tomg-group-umd/cinepile`) has one row per question: movie_name, year, genre,
yt_clip_title, yt_clip_link, movie_scene, subtitles, question, choices, answer_key,
answer_key_position, question_category, hard_split, visual_reliance, and `videoID` in later
versions. Many rows share a clip; the scene text and subtitles are per clip.

A row's key is its `videoID`, else the YouTube id in `yt_clip_link` (`watch?v=ID`, `youtu.be/ID`,
`/shorts/ID`, `/embed/ID`). A local video matches a key when its file name without extension is
the key (`ID.mp4`) or ends with `[ID]` (yt-dlp's default `Title [ID].mp4`). Rows without a key and
keys without a local file are reported, never fatal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

CINEPILE_COLUMNS: tuple[str, ...] = (
    "movie_name", "year", "genre", "yt_clip_title", "yt_clip_link", "movie_scene", "subtitles", "question",
    "choices", "answer_key", "answer_key_position", "question_category", "hard_split", "visual_reliance",
)
#: Per-clip fields copied into a video's annotation (the question fields differ per row).
CLIP_FIELDS: tuple[str, ...] = ("videoID", "movie_name", "year", "genre", "yt_clip_title", "yt_clip_link",
                                "movie_scene", "subtitles")
_YT_ID = re.compile(r"^[A-Za-z0-9_-]{6,20}$")


def read_annotations(path: str | Path) -> list[dict]:
    """Rows of a CinePile-format `.parquet`, `.jsonl` or `.json` (array) file, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another extension, a line that is not a JSON object, or neither `videoID` nor
            `yt_clip_link` among the columns.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotations file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{p} line {n} is not JSON: {exc}") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{p} line {n} is not a JSON object")
                rows.append(row)
    elif suffix == ".json":
        rows = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{p} must hold a JSON array of objects")
    else:
        raise ValueError(f"unsupported annotations file {p}: use .parquet, .jsonl or .json with CinePile's columns")
    if rows and not any(("videoID" in r or "yt_clip_link" in r) for r in rows):
        raise ValueError(f"{p}: rows have neither 'videoID' nor 'yt_clip_link' (columns: {sorted(rows[0])})")
    return rows


def youtube_id(link: str | None) -> str | None:
    """The video id in a YouTube URL (watch?v=, youtu.be/, /shorts/, /embed/, /v/), else None."""
    if not link:
        return None
    u = urlparse(str(link).strip())
    host = (u.hostname or "").lower()
    cand = None
    if host.endswith("youtu.be"):
        cand = u.path.strip("/").split("/")[0]
    elif "youtube" in host:
        q = parse_qs(u.query).get("v")
        if q:
            cand = q[0]
        else:
            parts = [x for x in u.path.split("/") if x]
            if len(parts) >= 2 and parts[0] in ("shorts", "embed", "v", "live"):
                cand = parts[1]
    return cand if cand and _YT_ID.match(cand) else None


def row_key(row: dict) -> str | None:
    """`videoID` when present and non-empty, else the id in `yt_clip_link`."""
    vid = row.get("videoID")
    if isinstance(vid, str) and vid.strip():
        return vid.strip()
    return youtube_id(row.get("yt_clip_link"))


def file_keys(path: Path) -> list[str]:
    """Keys a local file answers to: its stem, and the `ID` of a trailing `[ID]`."""
    keys = [path.stem]
    m = re.search(r"\[([A-Za-z0-9_-]+)\]\s*$", path.stem)
    if m:
        keys.append(m.group(1))
    return keys


@dataclass
class JoinResult:
    """CinePile rows joined to local files.

    Attributes:
        matched: (local path, key, annotation) per video with rows, in the order of `videos`.
        missing_files: {"key", "rows": [row numbers], "reason"} per key without a local file.
        bad_rows: {"row", "reason"} per row without a usable key.
        unmatched_videos: local files no row refers to (not processed).
    """

    matched: list[tuple[Path, str, dict]] = field(default_factory=list)
    missing_files: list[dict] = field(default_factory=list)
    bad_rows: list[dict] = field(default_factory=list)
    unmatched_videos: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {"matched_videos": len(self.matched), "missing_files": self.missing_files,
                "bad_rows": self.bad_rows, "unmatched_videos": self.unmatched_videos}


def join_cinepile(rows: list[dict], videos: list[Path]) -> JoinResult:
    """Join CinePile rows (grouped by key) to local `videos`.

    A video's annotation is the per-clip fields (`CLIP_FIELDS`) of its first row plus
    `num_questions` (rows sharing the key). Row numbers in reports are 0-based file order.
    """
    groups: dict[str, list[int]] = {}
    res = JoinResult()
    for i, r in enumerate(rows):
        key = row_key(r)
        if key is None:
            res.bad_rows.append({"row": i, "reason": "no videoID and no YouTube id in yt_clip_link "
                                                     f"({str(r.get('yt_clip_link'))[:80]!r})"})
            continue
        groups.setdefault(key, []).append(i)
    local: dict[str, Path] = {}
    for p in videos:
        for k in file_keys(Path(p)):
            local.setdefault(k, Path(p))
    used: set[Path] = set()
    by_path: dict[Path, tuple[str, dict]] = {}
    for key, idx in groups.items():
        p = local.get(key)
        if p is None:
            res.missing_files.append({"key": key, "rows": idx,
                                      "reason": f"no local video named {key}.* or '*[{key}].*' in the sources"})
            continue
        first = rows[idx[0]]
        ann = {f: first.get(f) for f in CLIP_FIELDS if f in first}
        ann["num_questions"] = len(idx)
        by_path[p] = (key, ann)
        used.add(p)
    for p in videos:
        p = Path(p)
        if p in by_path:
            res.matched.append((p, *by_path[p]))
        else:
            res.unmatched_videos.append(str(p))
    return res

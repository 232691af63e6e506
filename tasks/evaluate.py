"""Benchmark evaluation from the archive: question files, accuracy, confidence intervals, paired tests.

Question files (`load_benchmark`), each read into `EvalQuestion`s:

- **MLVU** (JSON list): `{"video", "duration", "question", "candidates", "answer", "question_type"}`;
  `answer` is the text of the right candidate.
- **Video-MME** (parquet or JSON list): `{"videoID", "question", "options": ["A. ...", ...],
  "answer": "A", "task_type", "duration"}` (`duration`: "short"/"medium"/"long"); the video file is
  `{videoID}.mp4` (any extension found under `--videos`).
- **LongVideoBench** (JSON list): `{"id", "video_path", "question", "candidates", "correct_choice",
  "question_category", "duration"}`; `correct_choice` is the 0-based index.
- **vxl** (JSON list, what `tasks.qa` writes): `{"id", "video", "question", "options", "answer",
  "type"}`.

The layout is recognised by its keys; a file matching none gets an error naming the expected keys.
Statistics: Wilson score intervals (Wilson 1927) for accuracies; McNemar's exact test (binomial on
the discordant pairs) for paired comparisons of two runs on the same questions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.options import JobOptions, option

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

LAYOUTS: dict[str, tuple[str, ...]] = {
    "mlvu": ("video", "question", "candidates", "answer", "question_type"),
    "videomme": ("videoID", "question", "options", "answer", "task_type"),
    "longvideobench": ("video_path", "question", "candidates", "correct_choice"),
    "vxl": ("video", "question", "options", "answer", "type"),
}

DURATION_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("short (< 2 min)", 0.0, 120.0), ("medium (2-15 min)", 120.0, 900.0), ("long (>= 15 min)", 900.0, math.inf),
)


class BenchmarkFileError(ValueError):
    """A question file that cannot be read: names the file, the entry and the key."""


@dataclass(frozen=True)
class EvalQuestion:
    """One multiple-choice question.

    Attributes:
        qid: id unique within the file (the file's own id, else `{layout}-{entry index}`).
        video: the video path relative to the videos folder (or absolute).
        question: the question text as asked (options are scored, not listed, unless the file's
            question lists them itself).
        options: option texts (letters stripped for Video-MME).
        answer: index of the right option.
        type: question type (the file's type/category key).
        duration_s: video duration in seconds when the file gives it, else None.
        duration_label: the file's own duration label (Video-MME short/medium/long), else None.
    """

    qid: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int
    type: str
    duration_s: float | None = None
    duration_label: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = list(self.options)
        return d


def _entries(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: question file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise BenchmarkFileError(f"{path}: not a readable parquet file ({exc})") from None
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(x) for x in text.splitlines() if x.strip()]
        except json.JSONDecodeError as exc:
            raise BenchmarkFileError(f"{path}: neither JSON nor JSON lines ({exc})") from None
    if isinstance(data, dict):  # {"questions": [...]} or {name: [...]} (one list)
        lists = [v for v in data.values() if isinstance(v, list)]
        data = data.get("questions", lists[0] if len(lists) == 1 else None)
    if not isinstance(data, list) or not data:
        raise BenchmarkFileError(f"{path}: expected a non-empty JSON list of question objects")
    return data


def detect_layout(entry: dict, path: Path) -> str:
    """The layout whose keys the first entry has.

    Raises:
        BenchmarkFileError: none matches (lists each layout's keys).
    """
    if not isinstance(entry, dict):
        raise BenchmarkFileError(f"{path}: entry 0 is a {type(entry).__name__}, expected an object")
    for name, keys in LAYOUTS.items():
        if all(k in entry for k in keys):
            return name
    expect = "; ".join(f"{n}: {', '.join(k)}" for n, k in LAYOUTS.items())
    raise BenchmarkFileError(f"{path}: entry 0 has keys {sorted(entry)}, which match no known layout. Expected "
                             f"one of: {expect}")


def _duration(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def load_benchmark(path: str | Path, layout: str | None = None) -> tuple[str, list[EvalQuestion]]:
    """Read a question file: `(layout, questions)`.

    Raises:
        BenchmarkFileError: missing/unreadable file, unknown layout, or an entry with a missing or
            malformed key (names the file, the entry index and id, and the key).
    """
    path = Path(path)
    entries = _entries(path)
    layout = layout or detect_layout(entries[0], path)
    if layout not in LAYOUTS:
        raise BenchmarkFileError(f"unknown layout {layout!r}; one of {sorted(LAYOUTS)}")
    out: list[EvalQuestion] = []
    seen: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: entry {i}"

        def need(key: str, _e=e, _where=where):
            if not isinstance(_e, dict) or key not in _e or _e[key] is None:
                ident = _e.get("id", _e.get("question_id")) if isinstance(_e, dict) else None
                raise BenchmarkFileError(f"{_where}{f' (id {ident!r})' if ident is not None else ''}: missing key {key!r}")
            return _e[key]

        def bad(key: str, why: str, _e=e, _where=where):
            ident = _e.get("id", _e.get("question_id")) if isinstance(_e, dict) else None
            raise BenchmarkFileError(f"{_where}{f' (id {ident!r})' if ident is not None else ''}: key {key!r} {why}")

        for k in LAYOUTS[layout]:
            need(k)
        if layout == "mlvu":
            options = need("candidates")
            if not isinstance(options, list) or len(options) < 2:
                bad("candidates", "must be a list of at least 2 options")
            options = [str(o) for o in options]
            if str(e["answer"]) not in options:
                bad("answer", f"{e['answer']!r} is not one of the candidates {options}")
            q = EvalQuestion(str(e.get("question_id", e.get("id", f"mlvu-{i}"))), str(e["video"]), str(e["question"]),
                             tuple(options), options.index(str(e["answer"])), str(e["question_type"]),
                             _duration(e.get("duration")))
        elif layout == "videomme":
            raw = need("options")
            if hasattr(raw, "tolist"):
                raw = raw.tolist()
            if not isinstance(raw, list) or len(raw) < 2:
                bad("options", "must be a list like ['A. ...', 'B. ...']")
            options = []
            for j, o in enumerate(raw):
                o = str(o).strip()
                if len(o) > 1 and o[0] == LETTERS[j] and o[1] in ".):":
                    o = o[2:].strip()
                options.append(o)
            ans = str(e["answer"]).strip().rstrip(".")
            if len(ans) != 1 or LETTERS.find(ans.upper()) not in range(len(options)):
                bad("answer", f"{e['answer']!r} is not a letter among {LETTERS[:len(options)]}")
            label = e.get("duration")
            q = EvalQuestion(str(e.get("question_id", f"videomme-{i}")), str(e["videoID"]), str(e["question"]),
                             tuple(options), LETTERS.index(ans.upper()), str(e["task_type"]),
                             _duration(e.get("duration_s")), str(label) if isinstance(label, str) else None)
        elif layout == "longvideobench":
            options = need("candidates")
            if not isinstance(options, list) or len(options) < 2:
                bad("candidates", "must be a list of at least 2 options")
            c = e["correct_choice"]
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(options):
                bad("correct_choice", f"{c!r} is not an index into {len(options)} candidates")
            q = EvalQuestion(str(e.get("id", f"longvideobench-{i}")), str(e["video_path"]), str(e["question"]),
                             tuple(str(o) for o in options), int(c), str(e.get("question_category", "all")),
                             _duration(e.get("duration")))
        else:  # vxl
            options = need("options")
            if not isinstance(options, list) or len(options) < 2:
                bad("options", "must be a list of at least 2 options")
            options = [str(o) for o in options]
            if str(e["answer"]) not in options:
                bad("answer", f"{e['answer']!r} is not one of the options {options}")
            q = EvalQuestion(str(e.get("id", f"vxl-{i}")), str(e["video"]), str(e["question"]), tuple(options),
                             options.index(str(e["answer"])), str(e["type"]), _duration(e.get("duration")))
        if not q.question.strip() or any(not o.strip() for o in q.options):
            bad("question", "or one of its options is empty")
        if q.qid in seen:
            bad("id", f"{q.qid!r} is used by an earlier entry")
        seen.add(q.qid)
        out.append(q)
    return layout, out


def duration_bucket(q: EvalQuestion) -> str:
    """The question's duration bucket: the file's label (Video-MME), else by seconds, else "unknown"."""
    if q.duration_label:
        return q.duration_label
    if q.duration_s is None:
        return "unknown"
    for name, lo, hi in DURATION_BUCKETS:
        if lo <= q.duration_s < hi:
            return name
    return "unknown"


# -- statistics -------------------------------------------------------------------------------------


def wilson_interval(correct: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of `correct / total` (Wilson 1927); (nan, nan) for total 0."""
    if total <= 0:
        return (float("nan"), float("nan"))
    p = correct / total
    d = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / d
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_table(rows: list[dict], keys: tuple[str, ...] = ("type",)) -> dict:
    """`{"accuracy", "correct", "total", "ci95", "per_<key>": {value: {...}}}` over rows with `correct`."""
    def cell(rs: list[dict]) -> dict:
        c, n = sum(bool(r["correct"]) for r in rs), len(rs)
        return {"correct": c, "total": n, "accuracy": c / n if n else float("nan"), "ci95": list(wilson_interval(c, n))}

    out = cell(rows)
    for key in keys:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r.get(key)), []).append(r)
        out[f"per_{key}"] = {k: cell(v) for k, v in sorted(groups.items())}
    return out


def mcnemar_exact(a_correct: list[bool], b_correct: list[bool]) -> dict:
    """McNemar's exact test on paired outcomes: two-sided binomial p-value on the discordant pairs.

    Returns:
        `{"n", "a_only", "b_only", "p_value", "difference"}` (difference = acc(b) - acc(a)).
    Raises:
        ValueError: lists of different lengths.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired outcomes of different lengths: {len(a_correct)} and {len(b_correct)}")
    a_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    b_only = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if b and not a)
    n = a_only + b_only
    if n == 0:
        p = 1.0
    else:
        k = min(a_only, b_only)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    total = len(a_correct)
    diff = (sum(b_correct) - sum(a_correct)) / total if total else float("nan")
    return {"n": total, "a_only": a_only, "b_only": b_only, "p_value": p, "difference": diff}


# -- running an evaluation ------------------------------------------------------------------------------


class EvalError(Exception):
    """`kind`: usage (bad file or flags, exit 2), infrastructure (exit 1)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    @property
    def exit_code(self) -> int:
        return 2 if self.kind == "usage" else 1


def resolve_video(q: EvalQuestion, root: Path) -> Path | None:
    """The file of `q.video` under `root` (as is, or `{name}.*` when the name has no extension,
    as Video-MME's `videoID`), or None."""
    p = Path(q.video)
    p = p if p.is_absolute() else root / p
    if p.is_file():
        return p
    if not p.suffix and p.parent.is_dir():
        found = sorted(c for c in p.parent.glob(p.name + ".*") if c.is_file() and not c.name.endswith(".json"))
        if found:
            return found[0]
    return None


def eval_settings(top_windows: int | None, layout: str, questions_file: str) -> dict:
    return {"top_windows": top_windows, "layout": layout, "questions_file": str(questions_file)}


class EvalOptions(JobOptions):
    """The options of one evaluation run: the one options model of the eval job (issue 15), read by
    `vxl eval` (its flags, through `tasks.options.cli_command`), the `evaluate` flow (its `options`
    parameter) and `run_eval`. Construction checks types (pydantic); `validate()` raises
    `EvalError(kind="usage")` for what no run can satisfy."""

    archive: str | None = option(None, "--archive", "-a", help="Archive URI. Default: $VXL_ARCHIVE or ./archive.")
    questions_file: str | None = option(None, "--questions", "-q", help="Question file: MLVU / Video-MME / "
                                        "LongVideoBench / vxl layout.")
    videos_dir: str | None = option(None, "--videos", help="Folder the file's relative video names are under "
                                    "(default: the question file's folder).")
    model: str = option("tiny", "--model", help="'tiny', 'toy' (trained, shipped) or a checkpoint folder.")
    top_windows: int | None = option(None, "--top-windows", help="Answer from the K windows closest to the "
                                     "question (question-aware partial reload).")
    index: bool = option(True, "--index/--no-index", help="Index the videos not yet in the archive first "
                         "(--no-index: report them as not scored).")
    layout: str | None = option(None, "--layout", help="Force the file layout (mlvu, videomme, longvideobench, vxl).")
    run_name: str | None = option(None, "--name", help="Run name (stored with the results; for --compare).")
    workers: int | None = option(None, "--workers", help="Ray answer actors.")
    force: bool = option(False, "--force", help="Answer again questions already answered.")

    @property
    def archive_uri(self) -> str:
        """`archive`, else `$VXL_ARCHIVE`, else `archive` (relative to the working folder)."""
        from tasks.options import archive_or_default

        return archive_or_default(self.archive)

    def validate(self) -> None:
        """Raise EvalError(kind="usage") for a missing or malformed question file, a missing
        `--videos` folder, an unknown layout or a negative `--top-windows` (before Ray starts)."""
        if not self.questions_file:
            raise EvalError("usage", "give --questions FILE (or --compare A B)")
        if self.top_windows is not None and self.top_windows < 0:
            raise EvalError("usage", f"--top-windows must be >= 0, got {self.top_windows}")
        if self.workers is not None and self.workers < 1:
            raise EvalError("usage", f"--workers must be >= 1, got {self.workers}")
        if self.videos_dir and not Path(self.videos_dir).is_dir():
            raise EvalError("usage", f"--videos {self.videos_dir!r} is not a folder")
        try:
            load_benchmark(self.questions_file, self.layout)
        except BenchmarkFileError as exc:
            raise EvalError("usage", str(exc)) from None

    @classmethod
    def usage_error(cls, message: str) -> EvalError:
        return EvalError("usage", message)


def run_eval(
    options: EvalOptions,
    *,
    index_options: dict | None = None,
    ray_address: str | None = None,
    on_video=None,
) -> dict:
    """Score a benchmark file from the archive: index what is missing (unless `options.index` is
    False), answer every question by option log-likelihood through `tasks.ask_library.
    run_ask_library` (Ray actors, answers stored and skipped on rerun), and aggregate.

    Args:
        options: what to score and how (`EvalOptions`).
        index_options: `tasks.index.make_options` overrides for the videos indexed first (e.g.
            `{"chunking": "fixed", "ratio": 16}`: the ablations' settings).
        ray_address: Ray cluster (default: `RAY_ADDRESS`, else a private local Ray).
        on_video: progress callback of `run_ask_library`.

    Returns:
        dict: `run`, `layout`, `accuracy`, `num_questions`, `correct`, `ci95`, `per_type`,
        `per_duration` (each `{"correct", "total", "accuracy", "ci95"}`), `missing` (questions
        whose video file is absent, not indexed or failed, with the reason), `results` (one dict
        per scored question: `qid`, `type`, `video`, `video_id`, `chosen`, `answer`, `correct`,
        `scores`), `settings`, `seconds`, `index` (the index summary, when run), `ask` (the
        ask-library summary).
    Raises:
        EvalError: a malformed file (usage), an unreachable archive or Ray (infrastructure).
    """
    import time

    from tasks.ask import AskError, Question
    from tasks.ask_library import AskLibraryOptions, run_ask_library

    t0 = time.perf_counter()
    archive_uri, questions_file, videos_dir, model = (options.archive_uri, options.questions_file, options.videos_dir,
                                                      options.model)
    top_windows, workers, force, run_name = options.top_windows, options.workers, options.force, options.run_name
    if not questions_file:
        raise EvalError("usage", "give --questions FILE")
    try:
        layout, qs = load_benchmark(questions_file, options.layout)
    except BenchmarkFileError as exc:
        raise EvalError("usage", str(exc)) from None
    root = Path(videos_dir) if videos_dir else Path(questions_file).parent
    if videos_dir and not root.is_dir():
        raise EvalError("usage", f"--videos {videos_dir!r} is not a folder")
    paths: dict[str, Path] = {}
    missing: list[dict] = []
    for q in qs:
        p = resolve_video(q, root)
        if p is None:
            missing.append({"qid": q.qid, "video": q.video, "reason": f"no file {q.video!r} under {root}"})
        else:
            paths[q.qid] = p
    unique = sorted({str(p) for p in paths.values()})
    ids: dict[str, str] = {}
    index_summary = None
    if unique and options.index:
        from tasks.index import IndexInfraError, UsageError, make_options, run_index
        from tasks.ray_runtime import RayUnavailable

        opts = make_options(model, ray_address=ray_address, **(index_options or {}))
        try:
            report = run_index(unique, archive_uri, opts)
        except UsageError as exc:
            raise EvalError("usage", str(exc)) from None
        except (IndexInfraError, RayUnavailable) as exc:
            raise EvalError("infrastructure", str(exc)) from None
        index_summary = report.summary()
        for r in [*report.indexed, *report.skipped]:
            if r.get("video_id") and r.get("source_uri"):
                ids[str(r["source_uri"])] = r["video_id"]
        failed = {str(r["source_uri"]): r.get("error_kind") for r in report.failed}
    else:
        from tasks.video import video_id

        failed = {}
        for p in unique:
            ids[p] = video_id(p)
    per_video: dict[str, list] = {}
    qinfo: dict[tuple[str, str], list[EvalQuestion]] = {}
    for q in qs:
        p = paths.get(q.qid)
        if p is None:
            continue
        vid = ids.get(str(p))
        if vid is None:
            why = f"indexing failed ({failed.get(str(p))})" if str(p) in failed else "not indexed"
            missing.append({"qid": q.qid, "video": q.video, "reason": why})
            continue
        per_video.setdefault(vid, []).append(Question(q.question, q.options, q.qid))
        qinfo.setdefault((vid, q.qid), []).append(q)
    ask_summary: dict = {}
    results: list[dict] = []
    if per_video:
        try:
            ask_summary = run_ask_library(
                AskLibraryOptions(archive_uri=archive_uri, model=model, max_new_tokens=1, top_windows=top_windows,
                                  workers=workers, force=force),
                ray_address=ray_address, on_video=on_video, per_video=per_video)
        except AskError as exc:
            raise EvalError("usage" if exc.kind == "usage" else "infrastructure", str(exc)) from None
        from storage import answer_key, open_archive
        from tasks.ask import answer_settings

        arch = open_archive(archive_uri)
        settings = answer_settings(1, top_windows)
        fp = ask_summary.get("fingerprint")
        rows = {r["key"]: r for r in arch.list_answers()} if fp else {}
        marked = []
        for vid, vqs in per_video.items():
            for aq in vqs:
                q = qinfo[(vid, aq.qid)][0]
                row = rows.get(answer_key(vid, fp, aq.question, aq.choices, settings))
                if row is None or row.get("status") != "ok":
                    missing.append({"qid": q.qid, "video": q.video, "reason": (row or {}).get("error") or "not answered"})
                    continue
                scores = json.loads(row["scores"])
                chosen = int(max(range(len(scores)), key=lambda i: scores[i]))
                results.append({"qid": q.qid, "type": q.type, "duration": duration_bucket(q), "video": q.video,
                                "video_id": vid, "chosen": chosen, "answer": q.answer, "correct": chosen == q.answer,
                                "scores": scores, "kv_codec": row.get("kv_codec"), "ttft_s": row.get("ttft_s")})
                if row.get("question_id") != q.qid or row.get("correct") != (chosen == q.answer):
                    marked.append({**row, "question_id": q.qid, "correct": chosen == q.answer})
        if marked:
            arch.put_answers(marked)
    table = accuracy_table(results, keys=("type", "duration"))
    out = {
        "run": run_name, "layout": layout, "questions_file": str(questions_file), "archive": archive_uri,
        "model": model, "fingerprint": ask_summary.get("fingerprint"),
        "accuracy": table["accuracy"], "correct": table["correct"], "num_questions": table["total"],
        "ci95": table["ci95"], "per_type": table["per_type"], "per_duration": table["per_duration"],
        "missing": missing, "results": results, "settings": eval_settings(top_windows, layout, questions_file),
        "index": index_summary, "ask": {k: v for k, v in ask_summary.items() if k != "failed_videos"},
        "seconds": time.perf_counter() - t0,
    }
    if fp:
        out["run_id"] = _record_run(archive_uri, out)
    return out


def _record_run(archive_uri: str, res: dict) -> str:
    """Store the run's summary in the archive's `eval_runs` table; returns its run id (digest of the
    question file's bytes, the model fingerprint, the settings and the run name)."""
    import xxhash

    from storage import open_archive

    h = xxhash.xxh3_128()
    h.update(Path(res["questions_file"]).read_bytes())
    h.update(json.dumps([res["fingerprint"], res["settings"], res["run"]], sort_keys=True).encode())
    run_id = "eval-" + h.hexdigest()[:24]
    summary = {k: v for k, v in res.items() if k not in ("index", "ask")}
    open_archive(archive_uri).put_eval_run({
        "run_id": run_id, "name": res["run"], "questions_file": res["questions_file"], "layout": res["layout"],
        "model": res["model"], "model_fingerprint": res["fingerprint"], "settings": json.dumps(res["settings"]),
        "accuracy": None if math.isnan(res["accuracy"]) else res["accuracy"], "correct": res["correct"],
        "num_questions": res["num_questions"], "summary_json": json.dumps(summary, default=str),
    })
    return run_id


def compare_runs(a: dict, b: dict) -> dict:
    """Paired comparison of two `run_eval` results on their common questions: per type and overall,
    accuracy of each, the difference (b - a) and McNemar's exact p-value."""
    ra = {r["qid"]: r for r in a["results"]}
    rb = {r["qid"]: r for r in b["results"]}
    common = sorted(set(ra) & set(rb))
    types = sorted({ra[q]["type"] for q in common})
    out = {}
    for t in [*types, "overall"]:
        qs = [q for q in common if t == "overall" or ra[q]["type"] == t]
        ca = [bool(ra[q]["correct"]) for q in qs]
        cb = [bool(rb[q]["correct"]) for q in qs]
        m = mcnemar_exact(ca, cb)
        out[t] = {"n": len(qs), "a": sum(ca) / len(qs) if qs else float("nan"),
                  "b": sum(cb) / len(qs) if qs else float("nan"), **m}
    return out

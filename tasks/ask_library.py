"""Library question jobs: `run_ask_library` and its Ray actor `AskWorker` (importable by Ray workers).

    driver (in-process)                                Ray actors (`AskWorker`, model loaded once)
    list videos (SQL filter on `videos`)  ---------->  answer_video(video_id, [questions])
    skip answers already stored (same key)              load the memory once (no video, no vision
    write `answers` rows as each video finishes <-----  tower), answer every question, return rows

Idempotent: an `answers` row's key is the digest of (video, model fingerprint, question, choices,
generation settings); keys already stored with status `ok` are not asked again (`force=True` asks
again). A video that fails (corrupt blob, fingerprint mismatch, ...) gets `failed` rows with
`error_kind` and `error`, and the job goes on. Failed rows are retried by the next run.

This module holds no Prefect: the flow `flows/ask_library.py` is only its wiring. The actor class
lives here (an importable module, `tasks.ask_library.AskWorker`) so that Ray workers can unpickle it
however the flow file was loaded: a deployment loads `flows/ask_library.py` by path, and a class
defined there pickles as module `ask_library`, which workers cannot import (issue 15).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

from tasks.ask import AskError, Question, load_questions_file, parse_questions
from tasks.options import JobOptions, archive_or_default, option


class AskLibraryOptions(JobOptions):
    """The options of one library question job: the one options model of ask-library (issue 15),
    read by `vxl ask-library` (its flags, through `tasks.options.cli_command`), the `ask_library`
    flow (one parameter per field, `tasks.options.flow_function`) and `run_ask_library`.
    Construction checks types (pydantic); `validate()` raises `AskError(kind="usage")` for what no
    run can satisfy, before Prefect or Ray start."""

    archive_uri: str | None = option(None, "--archive", "-a", help="Archive URI. Default: $VXL_ARCHIVE or ./archive.")
    questions: list[str | dict] | None = option(
        None, "--question", "-q", help='A question (repeat for several); in a flow also {"question", "choices", '
        '"id"} mappings.')
    questions_file: str | None = option(
        None, "--questions", help='JSON/JSONL file: ["q", {"question": ..., "choices": [...], "id": ...}].')
    where: str | None = option(None, "--where", help='SQL filter on table videos, e.g. "duration_s > 60" '
                               "(default: every indexed video).")
    model: str = option("tiny", "--model", help="'tiny', 'toy' (trained, shipped) or a Video-XL checkpoint folder; "
                        "must be the model that indexed the videos.")
    max_new_tokens: int = option(32, "--max-new-tokens", help="Answer length cap, tokens.")
    top_windows: int | None = option(None, "--top-windows", help="Answer from the K windows most similar to the "
                                     "question (question-aware partial reload; default: all).")
    workers: int | None = option(None, "--workers", help="Ray answer workers (default: GPUs, else CPUs; at most one "
                                 "per video).")
    force: bool = option(False, "--force", help="Answer again even if already stored.")
    accept_numerics_change: bool = option(
        False, "--accept-numerics-change", help="Answer even though this environment's numerics probe differs from "
        "the archive's (the change is recorded in the archive).")

    @property
    def archive(self) -> str:
        """`archive_uri`, else `$VXL_ARCHIVE`, else `archive` (relative to the working folder)."""
        return archive_or_default(self.archive_uri)

    def validate(self) -> None:
        """Raise AskError(kind="usage") for no questions or both forms, an unreadable or malformed
        questions file, a bad question, or a bad setting (`validate_settings`)."""
        self.validate_settings()
        questions_from(self.questions, self.questions_file)

    def validate_settings(self) -> None:
        """Raise AskError(kind="usage") for `--max-new-tokens` < 1, `--top-windows` < 0, `--workers` < 1."""
        if self.max_new_tokens < 1:
            raise AskError("usage", f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_windows is not None and self.top_windows < 0:
            raise AskError("usage", f"--top-windows must be >= 0, got {self.top_windows}")
        if self.workers is not None and self.workers < 1:
            raise AskError("usage", f"--workers must be >= 1, got {self.workers}")

    @classmethod
    def usage_error(cls, message: str) -> AskError:
        return AskError("usage", message)


class AskWorker:
    """Ray actor body: loads the model once (vision tower disabled), answers video after video."""

    def __init__(self, model: str = "tiny") -> None:
        import torch

        try:  # one intra-op thread per logical CPU Ray gave this actor
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            torch.set_num_threads(max(1, int(round(cpus))))
        except Exception:  # noqa: BLE001 - outside Ray (tests call the class directly)
            pass
        from tasks.ask import forbid_vision, get_model

        self.vx = get_model(model)
        forbid_vision(self.vx)  # answering never encodes: any call to the vision tower fails loudly
        self._archives: dict[str, Any] = {}

    def ready(self) -> dict:
        return {"fingerprint": self.vx.fingerprint, "name": self.vx.name, "pid": os.getpid(),
                "device": str(self.vx.device)}

    def answer_probe(self, reference):
        """`model.probe.compute_answer_probe` against the archive's reference probe (decoder only)."""
        from model.probe import compute_answer_probe

        return compute_answer_probe(self.vx, reference)

    def answer_video(self, archive_uri: str, video_id: str, questions: list[dict], max_new_tokens: int,
                     top_windows: int | None) -> dict:
        """Every question on one video; returns {"video_id", "rows", "seconds", "pid"} (never raises
        for the video's own faults: they become failed rows)."""
        from tasks.ask import answer_video_questions, open_archive_or_fail

        t0 = time.perf_counter()
        qs = [Question(q["question"], tuple(q["choices"]) if q.get("choices") is not None else None, q.get("qid"))
              for q in questions]
        arch = self._archives.get(archive_uri)
        if arch is None:
            arch = self._archives[archive_uri] = open_archive_or_fail(archive_uri)
        rows = answer_video_questions(arch, self.vx, video_id, qs, max_new_tokens, top_windows)
        return {"video_id": video_id, "rows": rows, "seconds": time.perf_counter() - t0, "pid": os.getpid()}


def _qdict(q: Question) -> dict:
    d = asdict(q)
    d["choices"] = list(q.choices) if q.choices is not None else None
    return d


def questions_from(questions: list | None, questions_file: str | None) -> list[Question]:
    """The job's questions from a list or a file (exactly one of them).

    Raises:
        AskError('usage'): neither or both given; a malformed file or question.
    """
    if (questions is None) == (questions_file is None):
        raise AskError("usage", "give exactly one of --question and --questions FILE")
    if questions_file is not None:
        try:
            return load_questions_file(questions_file)
        except AskError as exc:
            if str(questions_file) in str(exc):
                raise
            raise AskError(exc.kind, f"{questions_file}: {exc}", exc.video_id) from None
    return parse_questions(list(questions))


def select_videos(archive, where: str | None) -> tuple[list[str], list[str]]:
    """(video ids with an indexed row, ids whose rows all failed indexing) among `videos` rows matching `where`.

    Raises:
        AskError('usage'): `where` is not a valid filter on `videos`.
    """
    from storage import STATUS_INDEXED

    try:
        rows = archive.list_videos(where=where)
    except (ValueError, RuntimeError, OSError) as exc:
        raise AskError("usage", f"--where {where!r} is not a valid SQL filter on table videos: {exc}") from exc
    indexed = sorted({r.video_id for r in rows if r.status == STATUS_INDEXED})
    failed = sorted({r.video_id for r in rows} - set(indexed))
    return indexed, failed


def run_ask_library(
    options: AskLibraryOptions,
    *,
    ray_address: str | None = None,
    on_video=None,
    per_video: dict[str, list[Question]] | None = None,
) -> dict:
    """Ask `options.questions` (strings or {"question", "choices"?, "id"?}) or those of
    `options.questions_file` of every indexed video matching `options.where`.

    Args:
        options: the job's options (`AskLibraryOptions`; `force` answers again keys already stored
            with status ok; `accept_numerics_change` answers even when a worker's numerics probe
            differs from the archive's, and records the change).
        ray_address: Ray cluster (default $RAY_ADDRESS, else a private local Ray).
        on_video: optional callback(video_id, rows) after each video's rows are written.
        per_video: instead of `questions`/`questions_file`/`where`: each video id's own questions
            (benchmark evaluation, `tasks.evaluate`); ids not indexed are reported in `not_indexed`.

    Returns:
        Summary dict: videos, answered, skipped (already answered), failed, failed_videos
        ({video_id: error_kind}), not_indexed, workers, worker_restarts, fingerprint, seconds,
        rows_written.

    Raises:
        AskError: 'usage' (no/empty questions, bad `where`, bad settings), 'infrastructure'
            (archive unreadable, Ray unreachable, no worker could load the model, every worker died)
            or 'numerics_changed' (a worker's numerics differ from the archive's; nothing answered).
    """
    from tasks.ask import answer_settings, open_archive_or_fail

    t0 = time.perf_counter()
    o = options
    archive_uri, where, model, max_new_tokens, top_windows = (o.archive, o.where, o.model, o.max_new_tokens,
                                                              o.top_windows)
    if per_video is not None:
        if o.questions is not None or o.questions_file is not None or where is not None:
            raise AskError("usage", "per_video replaces questions, questions_file and where")
        for vqs in per_video.values():
            for q in vqs:
                q.validate()
        qs = [q for vqs in per_video.values() for q in vqs]
        o.validate_settings()
    else:
        o.validate_settings()
        qs = questions_from(o.questions, o.questions_file)
    archive = open_archive_or_fail(archive_uri)
    videos, not_indexed = select_videos(archive, where)
    if per_video is not None:
        have = set(videos)
        videos = sorted(v for v in per_video if v in have)
        not_indexed = sorted(v for v in per_video if v not in have)
    summary: dict[str, Any] = {"archive": archive_uri, "where": where, "questions": len(qs), "videos": len(videos),
                               "answered": 0, "skipped": 0, "failed": 0, "failed_videos": {},
                               "not_indexed": not_indexed, "workers": 0, "fingerprint": None, "rows_written": 0,
                               "settings": answer_settings(max_new_tokens, top_windows)}
    if not videos:
        summary["seconds"] = time.perf_counter() - t0
        return summary

    import ray

    from tasks.ray_runtime import RayUnavailable, ensure_ray

    try:
        info = ensure_ray(ray_address)
    except RayUnavailable as exc:
        raise AskError("infrastructure", str(exc)) from exc
    summary["ray"] = info.describe()
    n = o.workers or max(1, info.num_gpus or info.num_cpus)
    n = min(n, len(videos))
    from tasks.fanout import ActorPool, FanOut, PoolError, WorkItem
    from tasks.numerics import NumericsChanged, check_probe

    def check_numerics(info: dict, slot) -> None:
        """An actor (re)started: answer the archive's probe there and compare."""
        ref = archive.reference_probe(info["fingerprint"])
        if ref is None:
            summary.setdefault("numerics", []).append({"pid": info["pid"], "status": "unverified"})
            return
        try:
            res = check_probe(archive, ray.get(slot.handle.answer_probe.remote(ref)), accept=o.accept_numerics_change,
                              record=False)
        except NumericsChanged as exc:
            raise AskError("numerics_changed", str(exc)) from exc
        summary.setdefault("numerics", []).append({"pid": info["pid"], **res})

    pool = ActorPool(AskWorker, (model,), n=n, resources={"num_gpus": 1} if info.num_gpus > 0 else {"num_cpus": 1},
                     max_restarts=2, name="answer worker")
    pool.on_ready = check_numerics
    try:
        try:
            first = pool.wait_first_ready()
        except PoolError as exc:
            raise AskError("infrastructure", f"{exc}; check --model {model!r}") from exc
        fp = first["fingerprint"]
        summary.update(workers=n, fingerprint=fp, model=first["name"])

        from storage import answer_key
        from tasks.ask import answer_row

        settings = answer_settings(max_new_tokens, top_windows)
        done = set() if o.force else {r["key"] for r in archive.list_answers(where="status = 'ok'")}
        # each video's questions go to one actor, which loads the memory once; a video whose actor
        # dies under it is asked again on the restarted actor, then recorded as failed
        fan = FanOut(pool, lambda h, p: h.answer_video.remote(archive_uri, p[0], p[1], max_new_tokens, top_windows),
                     max_attempts=2)
        for vid in videos:
            vqs = per_video[vid] if per_video is not None else qs
            todo = [q for q in vqs if answer_key(vid, fp, q.question, q.choices, settings) not in done]
            summary["skipped"] += len(vqs) - len(todo)
            if todo:
                fan.put(WorkItem(key=vid, payload=(vid, [_qdict(q) for q in todo])))

        def write(out) -> None:
            vid, qd = out.item.payload
            if out.ok:
                rows = out.value["rows"]
            else:  # the worker died (twice) or raised: every question of the video gets a failed row
                err = AskError("infrastructure", f"video {vid}: answer worker failed: {out.error_line()}", vid)
                rows = [answer_row(vid, fp, Question(q["question"], tuple(q["choices"]) if q.get("choices") else None),
                                   settings, error=err) for q in qd]
            summary["rows_written"] += archive.put_answers(rows)
            bad = [r for r in rows if r["status"] != "ok"]
            summary["answered"] += len(rows) - len(bad)
            summary["failed"] += len(bad)
            if bad:
                summary["failed_videos"][vid] = bad[0]["error_kind"]
            if on_video is not None:
                on_video(vid, rows)

        try:
            fan.run(write)
        except PoolError as exc:
            raise AskError("infrastructure", f"{exc}; answers already written are kept and skipped on rerun") from exc
        summary["worker_restarts"] = pool.restarts
    finally:
        pool.shutdown()
    summary["seconds"] = time.perf_counter() - t0
    return summary



def summary_markdown(s: dict) -> str:
    """The Prefect artifact: counts and the failed videos."""
    lines = [
        "# ask_library",
        "",
        f"archive `{s['archive']}`, filter `{s['where'] or 'all indexed videos'}`, model fingerprint "
        f"`{(s['fingerprint'] or '-')[:16]}`, settings `{s['settings']}`",
        "",
        "| videos | questions | answered | already answered | failed | workers | seconds |",
        "|---|---|---|---|---|---|---|",
        f"| {s['videos']} | {s['questions']} | {s['answered']} | {s['skipped']} | {s['failed']} | {s['workers']} "
        f"| {s.get('seconds', 0):.1f} |",
    ]
    if s["failed_videos"]:
        lines += ["", "| failed video | error kind |", "|---|---|"]
        lines += [f"| `{v}` | {k} |" for v, k in sorted(s["failed_videos"].items())]
    if s["not_indexed"]:
        lines += ["", f"{len(s['not_indexed'])} matching videos are not indexed (their indexing failed)."]
    return "\n".join(lines)

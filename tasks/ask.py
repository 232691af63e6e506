"""Answering questions from the archive: no video I/O, no vision tower (issue 5; issue 6 loading).

Pure functions, usable without Prefect or Ray (`flows/ask_library.py` and `flows/cli_ask.py` wrap
them). The path of one question:

    video (id or file) -> video_id (content digest, `tasks.video.video_id`)
      -> [--top-windows K] CLIP text embedding of the question vs each window's stored mean image
         embedding (`archive.window_embeddings`, no blob read) -> K best + first + last windows
      -> `archive.load_memory(video_id, vx.fingerprint, windows)` (only those blobs are read)
      -> `vx.answer` (question prefill + greedy decoding) or `vx.score_options` (multiple choice)

Errors are `AskError`s with a `kind` and the CLI exit status that goes with it:

| kind | exit | when |
|---|---|---|
| `usage` | 2 | empty question, bad option list, question over the context limit, bad `top_windows` |
| `video_not_found` | 2 | no such video id / file, or the video is not indexed (its indexing failed) |
| `fingerprint_mismatch` | 4 | the video is only stored for other models (message names both fingerprints) |
| `corrupt_blob` | 4 | a stored K/V blob fails its checksum or rows are missing |
| `no_window_embeddings` | 4 | `top_windows` asked on a video indexed without per-window CLIP embeddings |
| `clip_mismatch` | 4 | the CLIP model available here is not the one that made the window embeddings |
| `numerics_changed` | 4 | this environment's numerics probe differs from the archive's (`tasks.numerics`) |
| `infrastructure` | 1 | archive unreadable, model cannot be loaded |
"""

from __future__ import annotations

import json
import os
import time
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TINY_CLIP = "vxl-tiny-clip"
"""CLIP model of the window embeddings of videos indexed with the tiny model, when not recorded."""
DEFAULT_CLIP = "ViT-B-32"
"""CLIP model assumed for other models' videos when the record does not name one."""

EXIT_OK, EXIT_INFRA, EXIT_USAGE, EXIT_FAILURES, EXIT_MEMORY = 0, 1, 2, 3, 4

_EXIT_BY_KIND = {
    "usage": EXIT_USAGE,
    "video_not_found": EXIT_USAGE,
    "fingerprint_mismatch": EXIT_MEMORY,
    "corrupt_blob": EXIT_MEMORY,
    "no_window_embeddings": EXIT_MEMORY,
    "clip_mismatch": EXIT_MEMORY,
    "numerics_changed": EXIT_MEMORY,
    "infrastructure": EXIT_INFRA,
}


class AskError(Exception):
    """A question that cannot be answered; `kind` is stored in `answers.error_kind`, `exit_code` is the CLI's."""

    def __init__(self, kind: str, message: str, video_id: str | None = None) -> None:
        assert kind in _EXIT_BY_KIND, kind
        self.kind = kind
        self.video_id = video_id
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return _EXIT_BY_KIND[self.kind]


@dataclass(frozen=True)
class Question:
    """One question of a job: free text, or multiple choice when `choices` is given."""

    question: str
    choices: tuple[str, ...] | None = None
    qid: str | None = None
    """caller's id of the question (from a questions file), echoed in results."""

    def validate(self) -> None:
        """Raises AskError('usage') for an empty question or an empty/blank option."""
        if not isinstance(self.question, str) or not self.question.strip():
            raise AskError("usage", "question is empty: ask something about the video")
        if self.choices is not None:
            if not self.choices or any(not isinstance(c, str) or not c.strip() for c in self.choices):
                raise AskError("usage", f"choices of {self.question!r} must be a non-empty list of non-empty strings")


def parse_questions(obj: Any) -> list[Question]:
    """Questions from a questions file's JSON: a list of strings or of `{"question", "choices"?, "id"?}`,
    or one such object, or `{"questions": [...]}`.

    Raises:
        AskError('usage'): anything else, or an empty list.
    """
    if isinstance(obj, dict) and "questions" in obj:
        obj = obj["questions"]
    if isinstance(obj, str | dict):
        obj = [obj]
    if not isinstance(obj, list) or not obj:
        raise AskError("usage", "a questions file holds a non-empty JSON list of questions")
    out = []
    for i, q in enumerate(obj):
        if isinstance(q, str):
            out.append(Question(q))
        elif isinstance(q, dict) and isinstance(q.get("question"), str):
            ch = q.get("choices")
            if ch is not None and not isinstance(ch, list):
                raise AskError("usage", f"question {i}: choices must be a list of strings")
            qid = q.get("id")
            out.append(Question(q["question"], tuple(ch) if ch is not None else None,
                                str(qid) if qid is not None else None))
        else:
            raise AskError("usage", f"question {i}: expected a string or an object with a 'question' string")
    for q in out:
        q.validate()
    return out


def load_questions_file(path: str | os.PathLike) -> list[Question]:
    """Read a questions file: JSON (see `parse_questions`) or JSONL (one question per line).

    Raises:
        AskError('usage'): missing file, not JSON, or bad content.
    """
    p = Path(path)
    if not p.is_file():
        raise AskError("usage", f"questions file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise AskError("usage", f"{p}: neither JSON nor JSON lines ({exc})") from None
    return parse_questions(obj)


# ----------------------------------------------------------------------------------------------
# Models (one per process, reused)


@lru_cache(maxsize=2)
def get_model(name: str = "tiny", device: str | None = None):
    """`model.load_model(name)`, loaded once per process (Ray actors and the CLI reuse it).

    Raises:
        AskError('infrastructure'): the checkpoint cannot be loaded.
    """
    from model import load_model

    try:
        return load_model(name, device=device)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise AskError("infrastructure", f"cannot load model {name!r}: {exc}") from exc


@lru_cache(maxsize=4)
def get_clip(model_name: str, weights: str | None = None):
    """`ClipEmbedder(model_name, weights)` on the CPU, built once per process (text side only is used)."""
    from model.clip_embed import ClipEmbedder

    return ClipEmbedder(model_name, weights, device="cpu")


_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> {(archive uri, reference digest): check result}: each check runs once per process."""


def verify_numerics(archive, vx, accept: bool = False) -> dict:
    """Answer the archive's probe question from the archive's reference probe memory with `vx`'s
    decoder (`model.probe.compute_answer_probe`: no vision tower) and compare the logits with the
    reference's (`tasks.numerics.check_probe`; nothing recorded unless `accept`).

    Returns:
        the check's result ({"status": "match" | "unverified" | "accepted", ...}).
    Raises:
        AskError('numerics_changed'): beyond tolerance and not `accept` (message names both environments).
    """
    from model.probe import compute_answer_probe
    from tasks.numerics import NumericsChanged, check_probe

    ref = archive.reference_probe(vx.fingerprint)
    if ref is None:
        return {"status": "unverified", "comparison": None, "change": None}
    done = _VERIFIED.setdefault(vx, {})
    key = (archive.uri, ref.digest())
    if key not in done:
        try:
            done[key] = check_probe(archive, compute_answer_probe(vx, ref), accept=accept, record=False)
        except NumericsChanged as exc:
            raise AskError("numerics_changed", str(exc)) from exc
    return done[key]


def forbid_vision(vx) -> None:
    """Make `vx`'s vision tower raise when called: answering must never encode frames.

    Used by the answer workers of `ask_library` (and by tests): any path that would touch the
    vision tower fails loudly instead of silently re-encoding.
    """
    tower = vx.model.model.vision_tower.vision_tower

    def _refuse(*args, **kwargs):
        raise RuntimeError("the vision tower was called while answering from the archive (no re-encoding allowed)")

    tower.forward = _refuse


# ----------------------------------------------------------------------------------------------
# Video ids and memories


def open_archive_or_fail(archive_uri: str):
    """`storage.open_archive`, with unreadable archives as AskError('infrastructure')."""
    from storage import ArchiveError, ArchiveNotFound, open_archive

    try:
        return open_archive(archive_uri, create=False)  # answering never creates an archive
    except ArchiveNotFound:
        raise AskError("infrastructure", f"no archive at {archive_uri!r}; check --archive (or $VXL_ARCHIVE) "
                       "or index videos into it first (`vxl index`)") from None
    except (ArchiveError, OSError, ValueError, RuntimeError) as exc:
        raise AskError("infrastructure", f"cannot open archive {archive_uri!r}: {exc}") from exc


def resolve_video_id(archive, video: str) -> str:
    """A video id from an id, a unique id prefix (`Archive.resolve_video_id`: with or without
    `xxh3-128:`, as `vxl archive ls` shortens them) or the path of a local video file (its content digest; the file is only hashed, not decoded).

    Raises:
        AskError('video_not_found'): no file at that path and no video with that id in the archive.
    """
    from tasks.video import video_id

    if not isinstance(video, str) or not video.strip():
        raise AskError("usage", "--video is empty: give a video id (`vxl archive ls`) or a video file")
    from storage import AmbiguousVideoId, VideoNotFound

    p = Path(video)
    if p.is_file():
        return video_id(p)
    try:
        return archive.resolve_video_id(video)  # an id, or a unique prefix with or without `xxh3-128:`
    except AmbiguousVideoId as exc:
        raise AskError("usage", str(exc), video_id=video) from None
    except VideoNotFound:
        pass
    looks_like_path = os.sep in video or Path(video).suffix.lower() in (".mp4", ".mkv", ".mov", ".avi", ".webm")
    what = f"no video file {video!r} and no" if looks_like_path else "no"
    raise AskError(
        "video_not_found",
        f"{what} video with id {video!r} in archive {archive.uri}; index it first (`vxl index`) "
        "or list the ids with `vxl archive ls`",
        video_id=video,
    )


def clip_model_for(record, model_name: str) -> tuple[str, str | None, str | None]:
    """(CLIP model name, weights file or None, CLIP fingerprint or None) that made the window
    embeddings of `record`.

    Read from the stored plan (`extras.clip_model` / `extras.clip_fingerprint`, as the indexer's
    dynamic planner writes them; `params` and the memory meta are also searched, and `clip_weights`
    when present), defaulting to `vxl-tiny-clip` for the tiny model and `ViT-B-32` otherwise.
    """
    sources = []
    for blob in (record.plan, record.memory_meta):
        try:
            d = json.loads(blob) if blob else {}
        except (TypeError, json.JSONDecodeError):
            d = {}
        if isinstance(d, dict):
            sources += [d.get("params") or {}, d.get("extras") or {}, d]
    for s in sources:
        if not isinstance(s, dict):
            continue
        for key in ("clip_model", "clip_model_name", "embed_model"):
            if isinstance(s.get(key), str) and s[key]:
                w, f = s.get("clip_weights"), s.get("clip_fingerprint")
                return s[key], w if isinstance(w, str) and w else None, f if isinstance(f, str) and f else None
    from model.video_xl import BUILTIN_MODELS

    return (DEFAULT_TINY_CLIP if model_name in BUILTIN_MODELS else DEFAULT_CLIP), None, None


def select_windows(question_emb: np.ndarray, window_embs: np.ndarray, k: int) -> list[int]:
    """Windows to load for a question: the `k` best by cosine similarity, plus the first and the last.

    Args:
        question_emb: `(E,)` (or `(1, E)`) text embedding of the question.
        window_embs: `(W, E)` per-window mean image embeddings (in the same CLIP space).
        k: windows to pick by score, >= 0. `k = 0` gives the first and the last window only;
            `k >= W` gives every window.

    Returns:
        Sorted window indices (time order): the first, the last, and the `k` best-scoring windows
        among the others, so exactly `min(W, k + 2)` of them. Ties go to the earlier window. Rows
        are L2-normalised here, so unnormalised inputs rank the same.

    Raises:
        ValueError: k < 0, or shapes that do not match.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"top-windows must be an integer >= 0, got {k!r}")
    q = np.asarray(question_emb, dtype=np.float64).reshape(-1)  # (E,)
    w = np.asarray(window_embs, dtype=np.float64)  # (W, E)
    if w.ndim != 2 or w.shape[1] != q.shape[0]:
        raise ValueError(f"window embeddings {w.shape} do not match a question embedding of width {q.shape[0]}")
    n = w.shape[0]
    if n == 0:
        return []
    if k + 2 >= n:
        return list(range(n))
    qn = q / max(np.linalg.norm(q), 1e-12)
    wn = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    scores = wn[1:-1] @ qn  # (W - 2,) the windows between the first and the last
    order = np.argsort(-scores, kind="stable")  # best first, earlier window on ties
    return sorted({0, n - 1} | {int(i) + 1 for i in order[:k]})


CLIP_WEIGHTS_ENV = "VXL_CLIP_WEIGHTS"
"""The CLIP state dict that `--top-windows` may load (`vxl ask --clip-weights` sets it; Ray workers inherit it)."""


def configured_clip_weights() -> str | None:
    """The configured CLIP weights file (`$VXL_CLIP_WEIGHTS`; unset, empty or `none`: random weights)."""
    v = os.environ.get(CLIP_WEIGHTS_ENV, "").strip()
    return None if v.lower() in ("", "none") else v


def question_windows(archive, vx, video_id: str, question: str, k: int, record=None) -> list[int]:
    """Window indices for `question` on `video_id` under `--top-windows k` (reads no K/V blob).

    Raises:
        AskError: 'usage' for k < 0; 'no_window_embeddings' when the indexer stored none;
            as `load_memory` otherwise.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise AskError("usage", f"--top-windows must be an integer >= 0, got {k!r}", video_id)
    with _archive_errors(video_id, vx.fingerprint):
        embs, spans = archive.window_embeddings(video_id, vx.fingerprint)
        record = record or archive.get_video(video_id, vx.fingerprint)
    if embs is None:
        raise AskError(
            "no_window_embeddings",
            f"video {video_id} was indexed without per-window CLIP embeddings, so --top-windows cannot "
            "rank its windows; re-index it with a vxl that stores them, or ask without --top-windows",
            video_id=video_id,
        )
    clip_name, stored_weights, clip_fp = clip_model_for(record, vx.name)
    clip_weights = configured_clip_weights()
    if stored_weights and not clip_weights:
        # the archive names a file, but a path read from data is never loaded: only the operator's
        # configured weights are (issue 15); the fingerprint below checks they are the same CLIP
        raise AskError("clip_mismatch", f"video {video_id}: its window embeddings were made with CLIP {clip_name!r} "
                       f"weights {stored_weights!r}; answering loads only configured CLIP weights: give "
                       "--clip-weights FILE (or VXL_CLIP_WEIGHTS), or ask without --top-windows", video_id=video_id)
    try:
        clip = get_clip(clip_name, clip_weights)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise AskError("clip_mismatch", f"video {video_id}: cannot load CLIP {clip_name!r} that made its window "
                       f"embeddings: {exc}", video_id=video_id) from exc
    if clip_fp is not None and clip.fingerprint != clip_fp:
        raise AskError(
            "clip_mismatch",
            f"video {video_id}: its window embeddings were made by CLIP {clip_name!r} with fingerprint "
            f"{clip_fp[:16]}..., the CLIP loaded here is {clip.fingerprint[:16]}... (weights "
            f"{clip_weights or 'random'}); ask without --top-windows or re-index with this CLIP",
            video_id=video_id,
        )
    q_emb = clip.embed_text([question])[0]  # (E,)
    if q_emb.shape[0] != embs.shape[1]:
        raise AskError(
            "no_window_embeddings",
            f"video {video_id}: window embeddings have width {embs.shape[1]} but CLIP {clip_name!r} gives "
            f"{q_emb.shape[0]}; the record does not name the CLIP model used at indexing",
            video_id=video_id,
        )
    chosen = select_windows(q_emb, embs, k)
    index_of = [s.index for s in spans]
    return [index_of[i] for i in chosen]


class _archive_errors:
    """Context manager: storage errors -> AskError with the matching kind."""

    def __init__(self, video_id: str, fingerprint: str) -> None:
        self.video_id, self.fingerprint = video_id, fingerprint

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        from storage import ArchiveError, CorruptBlob, FingerprintMismatch, VideoNotFound

        if exc is None or isinstance(exc, AskError):
            return False
        if isinstance(exc, VideoNotFound):
            raise AskError("video_not_found", str(exc), self.video_id) from exc
        if isinstance(exc, FingerprintMismatch):
            raise AskError("fingerprint_mismatch", str(exc), self.video_id) from exc
        if isinstance(exc, CorruptBlob):
            raise AskError("corrupt_blob", str(exc), self.video_id) from exc
        if isinstance(exc, ArchiveError | OSError):
            raise AskError("infrastructure", f"video {self.video_id}: archive read failed: {exc}", self.video_id) from exc
        return False


def load_memory(archive, vx, video_id: str, question: str | None = None, top_windows: int | None = None):
    """The memory to answer from: all windows, or (with `top_windows`) the question-selected ones.

    Returns:
        (VSTMemory on the model's device (quantized memories are dequantized there), window indices
        used, seconds spent selecting, seconds spent loading). `memory.meta["kv_codec"]` names the
        codec it was stored with.
    """
    t0 = time.perf_counter()
    windows = None
    if top_windows is not None:
        if question is None:
            raise AskError("usage", "top_windows needs the question to rank windows")
        windows = question_windows(archive, vx, video_id, question, top_windows)
    t1 = time.perf_counter()
    with _archive_errors(video_id, vx.fingerprint):
        memory = archive.load_memory(video_id, vx.fingerprint, windows=windows, device=vx.device)
    t2 = time.perf_counter()
    return memory, [w.index for w in memory.windows], t1 - t0, t2 - t1


def answer_from_memory(vx, memory, question: Question, max_new_tokens: int = 32) -> dict:
    """Answer one question from a loaded memory: generated text, or (with choices) option scores.

    Returns:
        dict with answer, ttft_s, total_s, num_tokens, tokens_per_s, prompt_tokens, and for multiple
        choice chosen (index), scores (one log-likelihood per option).

    Raises:
        AskError('usage'): empty question/options, over the context limit, max_new_tokens < 1.
    """
    question.validate()
    try:
        if question.choices is not None:
            t0 = time.perf_counter()
            scores = vx.score_options(memory, question.question, list(question.choices))
            total = time.perf_counter() - t0
            best = int(np.argmax(scores))
            return {"answer": question.choices[best], "chosen": best, "scores": scores, "ttft_s": total,
                    "total_s": total, "num_tokens": 0, "tokens_per_s": None,
                    "prompt_tokens": memory.num_tokens}
        ans = vx.answer(memory, question.question, max_new_tokens=max_new_tokens)
    except ValueError as exc:
        raise AskError("usage", str(exc)) from exc
    tps = ans.tokens_per_s
    return {"answer": ans.text, "token_ids": ans.token_ids, "ttft_s": ans.ttft_s, "total_s": ans.total_s,
            "num_tokens": ans.num_tokens, "tokens_per_s": None if tps != tps else tps,
            "prompt_tokens": ans.prompt_tokens}


def ask_video(
    archive_uri: str,
    video: str,
    question: str,
    model: str = "tiny",
    max_new_tokens: int = 32,
    top_windows: int | None = None,
    choices: list[str] | None = None,
    *,
    vx=None,
    archive=None,
    accept_numerics_change: bool = False,
) -> dict:
    """Answer `question` about `video` (id, id prefix or file path) from the archive at `archive_uri`.

    Returns:
        dict with video_id, question, answer, ttft_s (memory load + prefill to the first token),
        total_s (memory load + prefill + decoding; model loading excluded, as in ttft_s), num_tokens, tokens_per_s, memory_tokens, windows (indices used), num_windows (stored),
        load_s, select_s, model_ttft_s (prefill only); with `choices`: choices, chosen, scores.

    Raises:
        AskError: see the module docstring for kinds and exit codes.
    """
    q = Question(question, tuple(choices) if choices is not None else None)
    q.validate()
    if max_new_tokens < 1:
        raise AskError("usage", f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if top_windows is not None and top_windows < 0:
        raise AskError("usage", f"--top-windows must be >= 0, got {top_windows}")
    archive = archive or open_archive_or_fail(archive_uri)
    vid = resolve_video_id(archive, video)
    vx = vx or get_model(model)
    numerics = verify_numerics(archive, vx, accept=accept_numerics_change)
    memory, used, select_s, load_s = load_memory(archive, vx, vid, question, top_windows)
    with _archive_errors(vid, vx.fingerprint):
        stored = archive.get_video(vid, vx.fingerprint).num_windows
    res = answer_from_memory(vx, memory, q, max_new_tokens)
    out = {
        "video_id": vid,
        "question": question,
        "answer": res["answer"],
        "ttft_s": select_s + load_s + res["ttft_s"],
        "total_s": select_s + load_s + res["total_s"],
        "num_tokens": res["num_tokens"],
        "tokens_per_s": res["tokens_per_s"],
        "model_ttft_s": res["ttft_s"],
        "load_s": load_s,
        "select_s": select_s,
        "memory_tokens": memory.num_tokens,
        "kv_bytes": memory.nbytes,
        "windows": used,
        "num_windows": stored,
        "model": vx.name,
        "fingerprint": vx.fingerprint,
        "numerics": numerics["status"],
        "kv_codec": memory.meta.get("kv_codec"),
    }
    if q.choices is not None:
        out.update(choices=list(q.choices), chosen=res["chosen"], scores=res["scores"])
    return out


def answer_settings(max_new_tokens: int, top_windows: int | None) -> dict:
    """Generation settings that enter an answer's key (so changed settings are answered again)."""
    return {"max_new_tokens": int(max_new_tokens), "top_windows": top_windows, "do_sample": False}


def answer_row(video_id: str, fingerprint: str, q: Question, settings: dict, result: dict | None = None,
               error: AskError | None = None) -> dict:
    """An `answers` row (storage.ANSWERS_SCHEMA) for a result or a failure."""
    from storage import answer_key

    row = {
        "key": answer_key(video_id, fingerprint, q.question, q.choices, settings),
        "video_id": video_id,
        "model_fingerprint": fingerprint,
        "question": q.question,
        "choices": json.dumps(list(q.choices)) if q.choices is not None else None,
        "settings": json.dumps(settings, sort_keys=True),
        "status": "ok" if error is None else "failed",
    }
    if result is not None:
        row.update(answer=result["answer"], chosen=result.get("chosen"),
                   scores=json.dumps(result["scores"]) if result.get("scores") is not None else None,
                   windows_used=json.dumps(result.get("windows")), ttft_s=result["ttft_s"],
                   total_s=result["total_s"], num_tokens=result["num_tokens"], kv_codec=result.get("kv_codec"))
    if error is not None:
        row.update(error_kind=error.kind, error=str(error))
    return row


def answer_video_questions(archive, vx, video_id: str, questions: list[Question], max_new_tokens: int = 32,
                           top_windows: int | None = None) -> list[dict]:
    """All `questions` on one video, the memory loaded once (per question with `top_windows`, since
    the windows depend on the question). Never raises for the video's own faults: a failure becomes
    a 'failed' row (error_kind, error) for each question it affects.

    Returns:
        `answers` rows, one per question, in order.
    """
    settings = answer_settings(max_new_tokens, top_windows)
    rows: list[dict] = []
    full = None
    for q in questions:
        t0 = time.perf_counter()
        try:
            if top_windows is None:
                reused = full is not None
                if full is None:
                    full = load_memory(archive, vx, video_id)
                memory, used, select_s, load_s = full
                if reused:  # loaded for an earlier question on this video
                    select_s = load_s = 0.0
            else:
                memory, used, select_s, load_s = load_memory(archive, vx, video_id, q.question, top_windows)
            res = answer_from_memory(vx, memory, q, max_new_tokens)
            res["ttft_s"] += select_s + load_s
            res["total_s"] = time.perf_counter() - t0
            res["windows"] = used
            res["kv_codec"] = memory.meta.get("kv_codec")  # the codec the answer read
            rows.append(answer_row(video_id, vx.fingerprint, q, settings, result=res))
        except AskError as exc:
            rows.append(answer_row(video_id, vx.fingerprint, q, settings, error=exc))
            if exc.kind in ("fingerprint_mismatch", "corrupt_blob", "video_not_found", "infrastructure") \
                    and top_windows is None:
                # the memory itself is unusable: same failure for every remaining question
                rest = questions[len(rows):]
                rows += [answer_row(video_id, vx.fingerprint, r, settings, error=exc) for r in rest]
                break
    return rows

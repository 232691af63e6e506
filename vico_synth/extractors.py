"""Clue extractors (VICO step 3), chosen by name from `EXTRACTORS`.

An extractor turns a video's captioned clips (in time order) into its key events ("clues"),
each tied to the clip it came from, ordered by time: `extract(captions, k) -> list[Clue]`.
`k` is the number of clues a sample needs: extractors may return more (the sample builder
chooses k of them at least a minimum gap apart) or fewer (the video is then skipped).

| name | how |
|---|---|
| `heuristic` | one clue per non-empty caption; near-duplicates (text similarity >= `threshold`) removed |
| `hf-llm` | a local causal LM (transformers, `local_files_only=True`) asked to list and order the key events |
| `openai-compatible` | the same prompt to `POST {base_url}/v1/chat/completions` (off unless `base_url` and `model` are given) |

LLM answers are parsed by `parse_clue_lines`; each listed event is tied to the clip it names
(`[clip 3]`; a clip that does not exist drops the event), else to the caption it resembles most;
events that match no clip are dropped. The
result is ordered by clip time (the captions' timestamps are the ground truth of "when"), LLM
order breaking ties, and near-duplicates removed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, ClassVar

from .clips import Clip


@dataclass(frozen=True)
class CaptionedClip:
    """A clip and its caption ("" when nothing notable happens)."""

    clip: Clip
    caption: str


@dataclass(frozen=True)
class Clue:
    """A key event of a video.

    Attributes:
        text: one-sentence description.
        clip_index: index of the clip it happens in.
        start_s, end_s: that clip's span, seconds.
    """

    text: str
    clip_index: int
    start_s: float
    end_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "clip_index": self.clip_index, "start_s": self.start_s, "end_s": self.end_s}


class ExtractorError(RuntimeError):
    """An extractor could not run (back end unreachable, bad answer format, model missing)."""


def clean_text(s: str) -> str:
    """Collapse whitespace, strip list markers/quotes, capitalise the first letter, end with a period."""
    s = " ".join(str(s).split()).strip().strip("\"'`").strip()
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    if s[-1] not in ".!?":
        s += "."
    return s


def similarity(a: str, b: str) -> float:
    """Text similarity in [0, 1] (difflib ratio on lower-cased, whitespace-collapsed text)."""
    a, b = " ".join(a.lower().split()), " ".join(b.lower().split())
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def dedupe(clues: list[Clue], threshold: float) -> list[Clue]:
    """Drop every clue whose text is at least `threshold` similar to an earlier kept one."""
    kept: list[Clue] = []
    for c in clues:
        if all(similarity(c.text, k.text) < threshold for k in kept):
            kept.append(c)
    return kept


class Extractor:
    """Base class. Subclasses set `name`, `heavy` and implement `extract`."""

    name: ClassVar[str] = ""
    heavy: ClassVar[bool] = False

    def extract(self, captions: list[CaptionedClip], k: int) -> list[Clue]:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


EXTRACTORS: dict[str, type[Extractor]] = {}


def register_extractor(name: str):
    """Class decorator adding an extractor to `EXTRACTORS` under `name`."""

    def deco(cls: type[Extractor]) -> type[Extractor]:
        if name in EXTRACTORS:
            raise ValueError(f"extractor {name!r} is already registered ({EXTRACTORS[name].__name__})")
        cls.name = name
        EXTRACTORS[name] = cls
        return cls

    return deco


def make_extractor(name: str, options: dict[str, Any] | None = None) -> Extractor:
    """Build the extractor registered as `name` with `options`.

    Raises:
        ValueError: unknown name (lists the known ones), options it does not take, missing settings.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; known: {', '.join(sorted(EXTRACTORS))}")
    try:
        return EXTRACTORS[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for extractor {name!r}: {exc}") from None


@register_extractor("heuristic")
class HeuristicExtractor(Extractor):
    """One clue per non-empty caption, in clip order; near-duplicate captions (similarity >=
    `threshold`, default 0.9) keep only their first occurrence."""

    def __init__(self, threshold: float = 0.9):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}

    def extract(self, captions: list[CaptionedClip], k: int) -> list[Clue]:
        clues = [Clue(clean_text(c.caption), c.clip.index, c.clip.start_s, c.clip.end_s)
                 for c in sorted(captions, key=lambda c: c.clip.start_s) if c.caption.strip()]
        return dedupe([c for c in clues if c.text], self.threshold)


# ----------------------------------------------------------------------------------------------
# LLM extractors: prompt, parsing, mapping to clips

SYSTEM_PROMPT = "You extract the key events of a video from captions of its clips. Answer only with the list."


def build_prompt(captions: list[CaptionedClip], k: int) -> str:
    """The user prompt: numbered clip captions with their times, then the listing instruction."""
    lines = [
        "Below are captions of consecutive clips of one video, in time order.",
        "",
    ]
    for c in captions:
        if c.caption.strip():
            lines.append(f"[clip {c.clip.index}] ({c.clip.start_s:.1f}-{c.clip.end_s:.1f} s) {' '.join(c.caption.split())}")
    lines += [
        "",
        "List the key events of the video (the clues a viewer needs to follow it), at most one per clip, "
        "in the order they happen.",
        f"List at least {k} events if the captions allow it. Write one event per line, exactly as:",
        "1. [clip N] one sentence describing the event",
        "Write nothing else.",
    ]
    return "\n".join(lines)


_LINE_RE = re.compile(
    r"^\s*(?:[-*\u2022]|\(?\d{1,3}[.):]|\(?[A-Za-z][.)])?\s*"  # list marker
    r"(?:\*\*)?\[?\(?\s*(?:clip|Clip|CLIP)\s*#?\s*(\d+)\s*\]?\)?(?:\*\*)?\s*[:\-\u2013]?\s*"  # [clip N]
    r"(.*\S)\s*$"
)
_LIST_RE = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,3}[.):])\s+(.*\S)\s*$")


def parse_clue_lines(text: str) -> list[tuple[int | None, str]]:
    """Parse an LLM's event list into [(clip index or None, event text)], in the answer's order.

    Accepts numbered or bulleted lines with an optional clip reference (`1. [clip 3] text`,
    `- Clip 3: text`, `2) (clip 4) text`), and a JSON array of strings or of objects with
    `clip` and `event`/`text`. Lines that are neither (preambles, blank lines) are ignored; an
    answer with no list at all gives [].
    """
    text = (text or "").strip()
    # JSON array (possibly inside a ```json fence)
    unfenced = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text).strip()
    if unfenced.startswith("["):
        try:
            data = json.loads(unfenced)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            out: list[tuple[int | None, str]] = []
            for item in data:
                if isinstance(item, str) and item.strip():
                    out.append((None, item.strip()))
                elif isinstance(item, dict):
                    t = item.get("event") or item.get("text") or item.get("clue")
                    clip = item.get("clip", item.get("clip_index"))
                    if isinstance(t, str) and t.strip():
                        out.append((int(clip) if isinstance(clip, int | float) else None, t.strip()))
            return out
    out = []
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if m and m.group(2).strip():
            out.append((int(m.group(1)), m.group(2).strip()))
            continue
        m = _LIST_RE.match(line)
        if m:
            out.append((None, m.group(1).strip()))
    return out


def clues_from_llm(text: str, captions: list[CaptionedClip], threshold: float = 0.9,
                   min_match: float = 0.3) -> list[Clue]:
    """Turn an LLM's answer into clues ordered by time.

    Each parsed event is tied to the clip it names (dropped when no such clip exists); an event
    without a clip reference goes to the clip whose caption it resembles most (similarity >=
    `min_match`), else it is dropped. Sorted by clip start
    (stable: the LLM's order breaks ties), at most the first event per clip, near-duplicates
    (>= `threshold`) removed.
    """
    by_index = {c.clip.index: c.clip for c in captions}
    clues: list[tuple[float, int, Clue]] = []
    for pos, (ref, raw) in enumerate(parse_clue_lines(text)):
        t = clean_text(raw)
        if not t:
            continue
        if ref is not None and ref not in by_index:
            continue  # names a clip that does not exist: a hallucination, not evidence of when
        clip = by_index.get(ref) if ref is not None else None
        if clip is None:
            scored = [(similarity(t, c.caption), c.clip.start_s, c.clip) for c in captions if c.caption.strip()]
            if not scored:
                continue
            best = max(scored, key=lambda x: (x[0], -x[1]))
            if best[0] < min_match:
                continue
            clip = best[2]
        clues.append((clip.start_s, pos, Clue(t, clip.index, clip.start_s, clip.end_s)))
    clues.sort(key=lambda x: (x[0], x[1]))
    seen: set[int] = set()
    ordered = []
    for _, _, c in clues:
        if c.clip_index not in seen:
            seen.add(c.clip_index)
            ordered.append(c)
    return dedupe(ordered, threshold)


@register_extractor("hf-llm")
class HFLLMExtractor(Extractor):
    """A local causal LM (`AutoModelForCausalLM` + `AutoTokenizer`, `local_files_only=True`).

    Options: `model` (local folder, required), `max_new_tokens` (default 384), `device`, `dtype`,
    `threshold` (near-duplicate similarity). The prompt goes through the tokenizer's chat template
    when it has one, else as plain text; greedy decoding. Raises FileNotFoundError at construction
    when the folder is not a model folder.
    """

    heavy = True

    def __init__(self, model: str | None = None, max_new_tokens: int = 384, device: str | None = None,
                 dtype: str | None = None, threshold: float = 0.9):
        from .captioners import _check_model_folder

        self.path = _check_model_folder(model, "hf-llm extractor")
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.dtype = dtype
        self.threshold = float(threshold)
        self._model = None
        self._tok = None
        self.last_answer: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": Path(self.path).name, "max_new_tokens": self.max_new_tokens}

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from .captioners import _torch_dtype

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self._model = AutoModelForCausalLM.from_pretrained(
                str(self.path), local_files_only=True, dtype=_torch_dtype(self.dtype)
            ).to(device).eval()
        return self._model, self._tok

    def generate(self, prompt: str) -> str:
        import torch

        model, tok = self._load()
        if getattr(tok, "chat_template", None):
            msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            input_ids = ids["input_ids"]
        else:
            input_ids = tok(SYSTEM_PROMPT + "\n\n" + prompt + "\n\n", return_tensors="pt").input_ids
        input_ids = input_ids.to(model.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

    def extract(self, captions: list[CaptionedClip], k: int) -> list[Clue]:
        self.last_answer = self.generate(build_prompt(captions, k))
        return clues_from_llm(self.last_answer, captions, self.threshold)


@register_extractor("openai-compatible")
class OpenAICompatibleExtractor(Extractor):
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, TGI, OpenAI, ...), over HTTP with httpx.

    Options: `base_url` (e.g. `http://127.0.0.1:8000` or `.../v1`; default `$VXL_VICO_LLM_URL`),
    `model` (default `$VXL_VICO_LLM_MODEL`), `api_key` (default `$OPENAI_API_KEY`, may be empty),
    `timeout_s` (60), `max_tokens` (512), `temperature` (0), `seed` (sent for reproducibility where
    the server supports it). Off unless `base_url` and `model` are set: construction raises ValueError.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_tokens: int = 512, temperature: float = 0.0, seed: int | None = 0,
                 threshold: float = 0.9):
        self.base_url = (base_url or os.environ.get("VXL_VICO_LLM_URL") or "").rstrip("/")
        self.model = model or os.environ.get("VXL_VICO_LLM_MODEL") or ""
        if not self.base_url or not self.model:
            raise ValueError(
                "the openai-compatible extractor is off until configured: give base_url and model "
                "(--extractor-opt base_url=http://HOST:PORT --extractor-opt model=NAME, or "
                "$VXL_VICO_LLM_URL / $VXL_VICO_LLM_MODEL)"
            )
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout_s = float(timeout_s)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.seed = seed
        self.threshold = float(threshold)
        self.last_answer: str | None = None

    @property
    def url(self) -> str:
        return self.base_url + ("/chat/completions" if self.base_url.endswith("/v1") else "/v1/chat/completions")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "model": self.model, "max_tokens": self.max_tokens}

    def chat(self, prompt: str) -> str:
        import httpx

        body = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]}
        if self.seed is not None:
            body["seed"] = int(self.seed)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ExtractorError(f"cannot reach {self.url}: {exc}; check base_url and that the server runs") from exc
        if r.status_code != 200:
            raise ExtractorError(f"{self.url} answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            return str(r.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExtractorError(f"{self.url}: not an OpenAI chat completion: {r.text[:300]}") from exc

    def extract(self, captions: list[CaptionedClip], k: int) -> list[Clue]:
        self.last_answer = self.chat(build_prompt(captions, k))
        return clues_from_llm(self.last_answer, captions, self.threshold)

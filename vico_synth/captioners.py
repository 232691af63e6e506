"""Clip captioners (VICO step 2), chosen by name from `CAPTIONERS`.

| name | input | needs |
|---|---|---|
| `videoxl` | the clip's frames, encoded into a Video-XL memory and asked to describe the clip | `model` ("tiny" or a checkpoint folder) |
| `hf-vlm` | a few frames sampled from the clip, through a local Hugging Face image-text-to-text model | `model` (a local folder) |
| `annotations` | the video's CinePile row: timed subtitle lines, else `movie_scene` spread over the video | `--annotations FILE` |
| `ground-truth` | the event JSON written by `vxl sample-videos` next to each video (`NAME.json`) | sample videos |

Every captioner is a small class: `Captioner(**options)` then `caption(clip: ClipInput) -> str`.
An empty string means "nothing notable in this clip" (extractors skip it). Options unknown to a
captioner raise `ValueError`. Heavy libraries (torch, transformers) are imported when a model is
loaded, and models are loaded once per captioner instance (one per Ray actor).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .clips import ClipInput, sample_clip_frames

DESCRIBE_PROMPT = "Describe what happens in this clip."


class CaptionerError(RuntimeError):
    """A captioner could not caption a clip or could not be set up (names the clip and what to do)."""


class Captioner:
    """Base class. Subclasses set `name`, `heavy`, `needs_frames` and implement `caption`.

    Attributes:
        name: registry name.
        heavy: loads a model (the fan-out gives it a long-lived Ray actor; cheap ones run as tasks).
        needs_frames: needs decoded pixels (when False the pipeline may decode few frames).
    """

    name: ClassVar[str] = ""
    heavy: ClassVar[bool] = False
    needs_frames: ClassVar[bool] = False

    def caption(self, clip: ClipInput) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the run summary (JSON-serialisable)."""
        return {"name": self.name}


CAPTIONERS: dict[str, type[Captioner]] = {}


def register_captioner(name: str):
    """Class decorator adding a captioner to `CAPTIONERS` under `name`."""

    def deco(cls: type[Captioner]) -> type[Captioner]:
        if name in CAPTIONERS:
            raise ValueError(f"captioner {name!r} is already registered ({CAPTIONERS[name].__name__})")
        cls.name = name
        CAPTIONERS[name] = cls
        return cls

    return deco


def make_captioner(name: str, options: dict[str, Any] | None = None) -> Captioner:
    """Build the captioner registered as `name` with `options`.

    Raises:
        ValueError: unknown name (lists the known ones) or options the captioner does not take.
    """
    if name not in CAPTIONERS:
        raise ValueError(f"unknown captioner {name!r}; known: {', '.join(sorted(CAPTIONERS))}")
    try:
        return CAPTIONERS[name](**(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for captioner {name!r}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# ground-truth: the event JSON of `vxl sample-videos`


@functools.lru_cache(maxsize=64)
def _read_truth(json_path: str) -> dict:
    return json.loads(Path(json_path).read_text(encoding="utf-8"))


@register_captioner("ground-truth")
class GroundTruthCaptioner(Captioner):
    """Caption = the texts of the events that *start* inside the clip, joined with ", then ".

    Reads `NAME.json` next to `NAME.mp4` (docs/CONTRACTS.md: `events` with `start_s`, `end_s`,
    `text`), or `annotation["events"]` when the job carries them. A clip where no event starts
    gets "" (nothing new happens), so no clue straddles two clips.
    """

    def __init__(self, joiner: str = ", then "):
        self.joiner = joiner

    def _events(self, clip: ClipInput) -> list[dict]:
        if clip.annotation and "events" in clip.annotation:
            return list(clip.annotation["events"])
        p = Path(clip.video_path).with_suffix(".json")
        if not p.is_file():
            raise CaptionerError(
                f"{clip.video_path}: no event JSON at {p}; the ground-truth captioner only works on "
                "videos made by `vxl sample-videos` (use another --captioner)"
            )
        return list(_read_truth(str(p))["events"])

    def caption(self, clip: ClipInput) -> str:
        span = clip.clip
        texts = [e["text"] for e in self._events(clip) if span.start_s <= float(e["start_s"]) < span.end_s]
        return self.joiner.join(t.strip() for t in texts)


# ----------------------------------------------------------------------------------------------
# annotations: CinePile `subtitles` / `movie_scene`

# "00:01:02,500 --> 00:01:04,000" (SRT / WebVTT)
_SRT_RE = re.compile(
    r"(\d{1,2}):(\d{2}):(\d{2})[,.](\d{1,3})\s*-->\s*(\d{1,2}):(\d{2}):(\d{2})[,.](\d{1,3})"
)
# "[00:12] text", "(1:02:03) text", "00:12 - text"
_STAMP_RE = re.compile(r"^\s*[\[(]?((?:\d{1,2}:)?\d{1,2}:\d{2}(?:[.,]\d+)?)[\])]?\s*[-:]?\s*(.+)$")


def _hms(s: str) -> float:
    parts = s.replace(",", ".").split(":")
    out = 0.0
    for p in parts:
        out = out * 60 + float(p)
    return out


def timed_lines(text: str) -> list[tuple[float, float | None, str]]:
    """Timed lines of a subtitle/scene text: [(start_s, end_s or None, text)], in file order.

    Understands SRT/WebVTT cues (`HH:MM:SS,mmm --> HH:MM:SS,mmm` followed by text lines) and lines
    starting with a timestamp (`[MM:SS] text`, `(H:MM:SS) text`). Returns [] when the text has no
    timing (e.g. a plain `movie_scene` paragraph).
    """
    if not text:
        return []
    lines = text.splitlines()
    out: list[tuple[float, float | None, str]] = []
    if _SRT_RE.search(text):
        cur: list = []
        for line in lines:
            m = _SRT_RE.search(line)
            if m:
                if cur and cur[2]:
                    out.append((cur[0], cur[1], " ".join(cur[2])))
                g = m.groups()
                cur = [_hms(f"{g[0]}:{g[1]}:{g[2]}.{g[3]}"), _hms(f"{g[4]}:{g[5]}:{g[6]}.{g[7]}"), []]
            elif cur and line.strip() and not line.strip().isdigit() and line.strip() != "WEBVTT":
                cur[2].append(re.sub(r"<[^>]+>", "", line.strip()))
        if cur and cur[2]:
            out.append((cur[0], cur[1], " ".join(cur[2])))
        return out
    for line in lines:
        m = _STAMP_RE.match(line)
        if m:
            out.append((_hms(m.group(1)), None, m.group(2).strip()))
    return out


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text or "")
    return [p.strip() for p in parts if p and p.strip()]


@register_captioner("annotations")
class AnnotationCaptioner(Captioner):
    """Captions from a CinePile row (`--annotations FILE`).

    Per clip, in order of preference:
    1. `fields` with timing (SRT cues or `[MM:SS]` lines in `subtitles` or `movie_scene`): the lines
       starting inside the clip, joined with " ";
    2. otherwise `movie_scene` (then `subtitles`) split into sentences spread uniformly over the
       video's duration: the sentences whose share of the duration starts inside the clip
       (an approximation: CinePile's scene text is not timed).

    Raises CaptionerError for a video without an annotation row.
    """

    def __init__(self, fields: tuple[str, ...] | list[str] = ("movie_scene", "subtitles"), max_chars: int = 400):
        self.fields = tuple(fields)
        self.max_chars = int(max_chars)

    def caption(self, clip: ClipInput) -> str:
        row = clip.annotation
        if not row:
            raise CaptionerError(
                f"{clip.video_path}: no annotation row for this video; give --annotations with a row for it "
                "or use another --captioner"
            )
        span = clip.clip
        for f in self.fields:
            timed = timed_lines(str(row.get(f) or ""))
            if timed:
                texts = [t for s, _, t in timed if span.start_s <= s < span.end_s]
                return self._cut(" ".join(texts))
        for f in self.fields:
            sents = _sentences(str(row.get(f) or ""))
            if sents:
                dur = max(clip.duration_s, span.end_s, 1e-9)
                share = dur / len(sents)
                texts = [s for i, s in enumerate(sents) if span.start_s <= i * share < span.end_s]
                return self._cut(" ".join(texts))
        return ""

    def _cut(self, s: str) -> str:
        s = " ".join(s.split())
        return s if len(s) <= self.max_chars else s[: self.max_chars].rsplit(" ", 1)[0]


# ----------------------------------------------------------------------------------------------
# videoxl: the project's own model


@register_captioner("videoxl")
class VideoXLCaptioner(Captioner):
    """Encode the clip's frames into a Video-XL memory and ask the model to describe the clip.

    Options: `model` ("tiny" or a local checkpoint folder), `prompt`, `max_new_tokens`, `ratio`
    (compression ratio of the fixed planner), `device`, `dtype`, `max_frames` (frames per clip,
    sampled uniformly). Greedy decoding, so captions are deterministic for a given model.
    """

    heavy = True
    needs_frames = True

    def __init__(self, model: str = "tiny", prompt: str = DESCRIBE_PROMPT, max_new_tokens: int = 48, ratio: int = 8,
                 device: str | None = None, dtype: str | None = None, max_frames: int = 32):
        self.model_name = str(model)
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.ratio = int(ratio)
        self.device = device
        self.dtype = dtype
        self.max_frames = int(max_frames)
        self._vx = None

    @property
    def vx(self):
        if self._vx is None:
            from model import load_model

            self._vx = load_model(self.model_name, dtype=self.dtype, device=self.device)
        return self._vx

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_name, "max_new_tokens": self.max_new_tokens,
                "ratio": self.ratio, "max_frames": self.max_frames}

    def caption(self, clip: ClipInput) -> str:
        if clip.frames is None or len(clip.frames) == 0:
            raise CaptionerError(f"{clip.video_path}: clip {clip.clip.index} has no decoded frames")
        pick = sample_clip_frames(len(clip.frames), self.max_frames)
        frames = np.ascontiguousarray(clip.frames[pick])  # (f, H, W, 3)
        ts = np.asarray(clip.timestamps)[pick]
        vx = self.vx
        memory = vx.encode(frames, vx.plan(frames, ratio=self.ratio), timestamps=ts)
        return vx.answer(memory, self.prompt, max_new_tokens=self.max_new_tokens).text.strip()


# ----------------------------------------------------------------------------------------------
# hf-vlm: a local Hugging Face image-text-to-text model


def _check_model_folder(path: str | None, what: str) -> Path:
    if not path:
        raise ValueError(f"the {what} needs a model: a local folder with config.json and weights")
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: {p} is not a local model folder (no config.json); download the model first "
            "(e.g. `huggingface-cli download ORG/NAME --local-dir DIR`) and pass that folder"
        )
    return p


def _torch_dtype(dtype: str | None):
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(table)}")
    return table[dtype]


@register_captioner("hf-vlm")
class HFVLMCaptioner(Captioner):
    """A local image-text-to-text model (`AutoModelForImageTextToText` + `AutoProcessor`,
    `local_files_only=True`) captions `num_frames` frames sampled uniformly from the clip.

    Options: `model` (local folder, required), `num_frames` (default 8), `prompt`,
    `max_new_tokens`, `device`, `dtype`. The frames go in one user turn as images, followed by the
    prompt, through the processor's chat template; greedy decoding.
    Raises FileNotFoundError at construction when the folder is not a model folder.
    """

    heavy = True
    needs_frames = True

    def __init__(self, model: str | None = None, num_frames: int = 8, prompt: str = DESCRIBE_PROMPT,
                 max_new_tokens: int = 64, device: str | None = None, dtype: str | None = None):
        self.path = _check_model_folder(model, "hf-vlm captioner")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.dtype = dtype
        self._model = None
        self._processor = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.path.name, "num_frames": self.num_frames,
                "max_new_tokens": self.max_new_tokens}

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:  # transformers raises ValueError/OSError for a folder it cannot load (documented)
                self._processor = AutoProcessor.from_pretrained(str(self.path), local_files_only=True)
                self._model = AutoModelForImageTextToText.from_pretrained(
                    str(self.path), local_files_only=True, dtype=_torch_dtype(self.dtype)
                ).to(device).eval()
            except (ValueError, OSError) as exc:
                raise CaptionerError(f"hf-vlm: {self.path} is not a loadable image-text-to-text model folder "
                                     f"(processor and weights): {exc}") from exc
        return self._model, self._processor

    def select_frames(self, clip: ClipInput) -> np.ndarray:
        """The clip's frames given to the model: uint8 (n, H, W, 3), n = min(num_frames, frames in clip)."""
        if clip.frames is None or len(clip.frames) == 0:
            raise CaptionerError(f"{clip.video_path}: clip {clip.clip.index} has no decoded frames")
        return np.ascontiguousarray(clip.frames[sample_clip_frames(len(clip.frames), self.num_frames)])

    def caption(self, clip: ClipInput) -> str:
        import torch
        from PIL import Image

        frames = self.select_frames(clip)
        model, proc = self._load()
        images = [Image.fromarray(f) for f in frames]
        messages = [{"role": "user", "content": [{"type": "image"} for _ in images]
                     + [{"type": "text", "text": self.prompt}]}]
        text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = proc(images=images, text=text, return_tensors="pt").to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        tok = getattr(proc, "tokenizer", proc)
        return tok.decode(new, skip_special_tokens=True).strip()

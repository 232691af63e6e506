"""One video through the VICO recipe, as a pure function, and the run summary.

`synth_video(video, captioner, extractor, settings)`: clip by decoded timestamps -> caption every
clip -> extract ordered clues -> draft samples. Any failure of one video (too short, a captioner
or extractor that raises, too few clues) becomes `VideoResult.skipped_reason` with a stable
`skip_kind`, never an exception, so a run always finishes. Decoding is the caller's job
(`tasks/vico.py`), so this module needs neither Ray nor Prefect nor a decoder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .captioners import Captioner
from .clips import ClipInput, clip_spans
from .extractors import CaptionedClip, Extractor
from .samples import LETTERS, SPLITS, SampleConfig, SampleDraft, draft_samples

# skip kinds (stable strings, counted in the summary)
SKIP_DECODE = "decode_failed"
SKIP_TOO_SHORT = "too_short"
SKIP_CAPTION = "caption_failed"
SKIP_EXTRACT = "extract_failed"
SKIP_FEW_CLUES = "too_few_clues"
SKIP_WORKER = "worker_failed"
SKIP_KINDS = (SKIP_DECODE, SKIP_TOO_SHORT, SKIP_CAPTION, SKIP_EXTRACT, SKIP_FEW_CLUES, SKIP_WORKER)
#: Kinds that mean something went wrong (the CLI exits 3); the others are content limits.
FAILURE_KINDS = frozenset({SKIP_DECODE, SKIP_CAPTION, SKIP_EXTRACT, SKIP_WORKER})


@dataclass(frozen=True)
class SynthSettings:
    """Per-video settings of a run.

    Attributes:
        clip_seconds: clip length, seconds (VICO: 14).
        min_clip_fraction: a last, shorter clip is kept if it is at least this fraction of clip_seconds.
        samples: the sample builder's settings (k, gap, forms, seed, ...).
    """

    clip_seconds: float = 14.0
    min_clip_fraction: float = 0.5
    samples: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self):
        if not self.clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0, got {self.clip_seconds}")


@dataclass
class VideoInput:
    """A decoded video to synthesise samples from.

    Attributes:
        video_id: content digest (`tasks.video.video_id`).
        video: path relative to the video folder (goes into LLaVA `video`).
        path: local path of the file.
        frames: uint8 (F, H, W, 3) decoded frames, or None when the captioner needs no pixels.
        timestamps: float64 (F,) seconds of the decoded frames.
        duration_s: duration of the video, seconds.
        annotation: per-video annotation (CinePile clip fields), or None.
    """

    video_id: str
    video: str
    path: str
    frames: np.ndarray | None
    timestamps: np.ndarray
    duration_s: float
    annotation: dict | None = None


@dataclass
class VideoResult:
    """What one video gave.

    Attributes:
        video: relative path; video_id: digest (None when it could not be read); path: local path.
        drafts: sample drafts (empty when skipped).
        skip_kind: one of `SKIP_KINDS`, or None; skipped_reason: human-readable reason, or None.
        num_clips, num_clues: counts reached before finishing or skipping.
        captions: [{"clip_index", "start_s", "end_s", "caption"}] for inspection.
    """

    video: str
    video_id: str | None
    path: str
    drafts: list[SampleDraft] = field(default_factory=list)
    skip_kind: str | None = None
    skipped_reason: str | None = None
    num_clips: int = 0
    num_clues: int = 0
    captions: list[dict] = field(default_factory=list)

    def skip(self, kind: str, reason: str) -> VideoResult:
        assert kind in SKIP_KINDS, kind
        self.skip_kind, self.skipped_reason, self.drafts = kind, reason, []
        return self


def _err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300] if msg else ''}"


def synth_video(video: VideoInput, captioner: Captioner, extractor: Extractor, settings: SynthSettings) -> VideoResult:
    """Samples of one video (pure: same inputs, same drafts). Never raises for a bad video."""
    res = VideoResult(video=video.video, video_id=video.video_id, path=video.path)
    cfg = settings.samples
    clips = clip_spans(video.timestamps, settings.clip_seconds, video.duration_s, settings.min_clip_fraction)
    res.num_clips = len(clips)
    if len(clips) < cfg.k_min:
        return res.skip(SKIP_TOO_SHORT, f"{len(clips)} clip(s) of {settings.clip_seconds:g} s in "
                                        f"{video.duration_s:.1f} s; need at least k={cfg.k_min}")
    captioned: list[CaptionedClip] = []
    for c in clips:
        inp = ClipInput(video_id=video.video_id, video_path=video.path, clip=c,
                        frames=None if video.frames is None else video.frames[c.frame_start : c.frame_end],
                        timestamps=np.asarray(video.timestamps)[c.frame_start : c.frame_end],
                        duration_s=video.duration_s, annotation=video.annotation)
        try:
            text = captioner.caption(inp)
        except Exception as exc:  # noqa: BLE001 - any back-end failure skips this video, the run goes on
            return res.skip(SKIP_CAPTION, f"captioner {captioner.name} failed on clip {c.index} "
                                          f"({c.start_s:g}-{c.end_s:g} s): {_err(exc)}")
        if not isinstance(text, str):
            return res.skip(SKIP_CAPTION, f"captioner {captioner.name} returned {type(text).__name__} "
                                          f"for clip {c.index}, not a string")
        captioned.append(CaptionedClip(c, text))
        res.captions.append({"clip_index": c.index, "start_s": c.start_s, "end_s": c.end_s, "caption": text})
    try:
        clues = extractor.extract(captioned, cfg.k_min)
    except Exception as exc:  # noqa: BLE001 - as above
        return res.skip(SKIP_EXTRACT, f"extractor {extractor.name} failed: {_err(exc)}")
    res.num_clues = len(clues)
    if len(clues) < cfg.k_min:
        return res.skip(SKIP_FEW_CLUES, f"extractor {extractor.name} returned {len(clues)} clue(s) from "
                                        f"{len(clips)} clip(s); need k={cfg.k_min}")
    drafts, reason = draft_samples(video.video_id, video.video, clues, cfg)
    if reason is not None:
        return res.skip(SKIP_FEW_CLUES, reason)
    res.drafts = drafts
    return res


def summarize(results: list[VideoResult], splits: dict[str, list[dict]], extra: dict[str, Any] | None = None) -> dict:
    """The run summary (JSON-serialisable, no times: it is written next to the samples).

    Keys: samples_written (per split and total), samples_by_form, videos (total / with_samples /
    skipped), skipped (video, video_id, kind, reason, sorted by video), skipped_by_kind,
    clue_counts ({k: samples}), answer_positions ({split: {letter: mc samples}}), plus `extra`.
    """
    all_samples = [s for sp in SPLITS for s in splits.get(sp, [])]
    skipped = sorted(
        ({"video": r.video, "video_id": r.video_id, "kind": r.skip_kind, "reason": r.skipped_reason}
         for r in results if r.skip_kind),
        key=lambda d: (d["video"], d["video_id"] or ""),
    )
    k_counts = Counter(str(s["vico"]["k"]) for s in all_samples)
    positions = {}
    for sp in SPLITS:
        mc = [s for s in splits.get(sp, []) if s["vico"]["form"] == "mc"]
        if mc:
            n = max(len(s["vico"]["choices"]) for s in mc)
            c = Counter(s["vico"]["answer"] for s in mc)
            positions[sp] = {LETTERS[i]: c.get(LETTERS[i], 0) for i in range(n)}
    out = {
        "samples_written": {**{sp: len(splits.get(sp, [])) for sp in SPLITS}, "total": len(all_samples)},
        "samples_by_form": dict(sorted(Counter(s["vico"]["form"] for s in all_samples).items())),
        "videos": {"total": len(results), "with_samples": sum(1 for r in results if r.drafts),
                   "skipped": len(skipped)},
        "videos_by_split": {sp: len({s["vico"]["video_id"] for s in splits.get(sp, [])}) for sp in SPLITS},
        "skipped": skipped,
        "skipped_by_kind": dict(sorted(Counter(d["kind"] for d in skipped).items())),
        "clue_counts": dict(sorted(k_counts.items(), key=lambda kv: int(kv[0]))),
        "answer_positions": positions,
    }
    out.update(extra or {})
    return out

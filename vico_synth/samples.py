"""VICO sample builder (VICO step 4): clue selection, shuffling, the two question forms, splits.

Per video (`draft_samples`, independent of every other video, seeded by `(seed, video_id)`):
choose k clues at least `min_gap_s` apart, present them in a shuffled order (never the true
order) labelled 1..k, and draw the multiple-choice distractor orders.

Over the whole run (`finalize`, in the driver): the train/validation split by a hash of
`(seed, video_id)` (a video is in exactly one split, and stays there when the library grows),
the correct option's position for multiple choice (balanced: within each split, every block of
`num_choices` consecutive questions uses each position once, in a seeded random order), and the
LLaVA-style records (docs/VICO.md, `vico_synth.schema`).

Randomness only from `random.Random` instances seeded with strings (stable across processes and
Python runs); no global RNG. `write_samples_json` writes canonical bytes (sorted keys, fixed
indentation, no times), so the same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

from .extractors import Clue

FORMS: tuple[str, ...] = ("open", "mc")
SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_TOKEN = "<image>"
LETTERS = "ABCDEFGH"
#: Allowed clue counts per sample (labels 1..9 stay one character).
K_LIMITS = (2, 9)
#: Allowed multiple-choice option counts (k >= 3 always has 3! = 6 orders).
CHOICE_LIMITS = (2, 6)
#: Times within this many seconds count as equal when checking the minimum gap.
GAP_EPS_S = 1e-6


def parse_k(k: int | str) -> tuple[int, int]:
    """`4` or `"4"` -> (4, 4); `"3-6"` -> (3, 6). Raises ValueError outside `K_LIMITS` or lo > hi."""
    if isinstance(k, int):
        lo = hi = k
    else:
        s = str(k).strip()
        try:
            if "-" in s:
                a, b = s.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(s)
        except ValueError:
            raise ValueError(f"k must be an integer or a range like 3-6, got {k!r}") from None
    if not (K_LIMITS[0] <= lo <= hi <= K_LIMITS[1]):
        raise ValueError(f"k must satisfy {K_LIMITS[0]} <= k_min <= k_max <= {K_LIMITS[1]}, got {k!r}")
    return lo, hi


@dataclass(frozen=True)
class SampleConfig:
    """How samples are built.

    Attributes:
        k_min: fewest clues per sample (the VICO recipe uses 3-6).
        k_max: most clues per sample; each sample draws k uniformly in [k_min, min(k_max, available)].
        min_gap_s: minimum time between the starts of any two chosen clues, seconds
            (default: the clip length, i.e. clues from different clips).
        samples_per_video: clue selections per video (each gives one sample per form); fewer when a
            video has fewer distinct selections.
        forms: question forms to write, from `FORMS` ("open": give the order; "mc": pick it among options).
        num_choices: options per multiple-choice question (the correct order and distractors).
        val_fraction: share of videos (by hash) in the validation split, in [0, 1].
        seed: seed of every random choice.
    """

    k_min: int = 4
    k_max: int = 4
    min_gap_s: float = 14.0
    samples_per_video: int = 1
    forms: tuple[str, ...] = FORMS
    num_choices: int = 4
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        parse_k(f"{self.k_min}-{self.k_max}")
        if self.min_gap_s < 0:
            raise ValueError(f"min_gap_s must be >= 0, got {self.min_gap_s}")
        if self.samples_per_video < 1:
            raise ValueError(f"samples_per_video must be >= 1, got {self.samples_per_video}")
        if not self.forms or any(f not in FORMS for f in self.forms) or len(set(self.forms)) != len(self.forms):
            raise ValueError(f"forms must be distinct names from {FORMS}, got {self.forms}")
        if not CHOICE_LIMITS[0] <= self.num_choices <= CHOICE_LIMITS[1]:
            raise ValueError(f"num_choices must be in {CHOICE_LIMITS}, got {self.num_choices}")
        if "mc" in self.forms and math.factorial(self.k_min) < self.num_choices:
            raise ValueError(f"k_min={self.k_min} has only {math.factorial(self.k_min)} orders, "
                             f"fewer than num_choices={self.num_choices}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")


@dataclass(frozen=True)
class SampleDraft:
    """One clue selection of one video, before split and answer position are assigned.

    Attributes:
        video_id: content digest of the video.
        video: the video's path relative to the video folder (LLaVA `video`).
        selection: 0-based number of this selection within the video.
        clues: the chosen clues in time order.
        presented: `presented[j]` = time rank of the clue shown with label `j + 1`.
        distractors: wrong orders for multiple choice, each a tuple of labels.
    """

    video_id: str
    video: str
    selection: int
    clues: tuple[Clue, ...]
    presented: tuple[int, ...]
    distractors: tuple[tuple[int, ...], ...]

    @property
    def k(self) -> int:
        return len(self.clues)

    @property
    def answer_order(self) -> tuple[int, ...]:
        """Labels in the order their events happen."""
        return tuple(self.presented.index(t) + 1 for t in range(self.k))


def max_spaced(clues: list[Clue], min_gap_s: float) -> list[int]:
    """Indices of the largest set of clues whose starts are pairwise >= `min_gap_s` apart.

    Greedy by earliest start, which is optimal for points on a line. `clues` in time order.
    """
    out: list[int] = []
    for i, c in enumerate(clues):
        if not out or c.start_s - clues[out[-1]].start_s >= min_gap_s - GAP_EPS_S:
            out.append(i)
    return out


def _spaced(clues: list[Clue], chosen: list[int], i: int, min_gap_s: float) -> bool:
    return all(abs(clues[i].start_s - clues[j].start_s) >= min_gap_s - GAP_EPS_S for j in chosen)


def select_clues(clues: list[Clue], k: int, min_gap_s: float, rng: random.Random,
                 taken: set[tuple[int, ...]], attempts: int = 64) -> tuple[int, ...] | None:
    """A new set of `k` clue indices (sorted) pairwise >= `min_gap_s` apart, not in `taken`.

    Random greedy over shuffled candidates, `attempts` times; then evenly spaced picks from
    `max_spaced`; None when neither finds a new set.
    """
    n = len(clues)
    for _ in range(attempts):
        chosen: list[int] = []
        for i in rng.sample(range(n), n):
            if _spaced(clues, chosen, i, min_gap_s):
                chosen.append(i)
                if len(chosen) == k:
                    break
        sel = tuple(sorted(chosen))
        if len(sel) == k and sel not in taken:
            return sel
    spaced = max_spaced(clues, min_gap_s)
    if len(spaced) >= k:
        sel = tuple(spaced[round(j * (len(spaced) - 1) / (k - 1))] for j in range(k)) if k > 1 else (spaced[0],)
        if len(set(sel)) == k and sel not in taken:
            return sel
    return None


def _distractors(correct: tuple[int, ...], n: int, rng: random.Random) -> tuple[tuple[int, ...], ...]:
    """`n` distinct wrong orders of `correct`: one adjacent swap (a hard one), the rest random."""
    k = len(correct)
    assert n <= math.factorial(k) - 1, (n, k)
    out: list[tuple[int, ...]] = []
    if n >= 1:
        i = rng.randrange(k - 1)
        swap = list(correct)
        swap[i], swap[i + 1] = swap[i + 1], swap[i]
        out.append(tuple(swap))
    if k <= 4:  # draw from the full list (at most 24) for guaranteed termination
        rest = [p for p in permutations(correct) if p != correct and p not in out]
        out += rng.sample(rest, n - len(out))
    else:
        while len(out) < n:
            p = tuple(rng.sample(correct, k))
            if p != correct and p not in out:
                out.append(p)
    return tuple(out)


def video_rng(seed: int, video_id: str) -> random.Random:
    """The per-video RNG: independent of the other videos and of the processing order."""
    return random.Random(f"vico:{seed}:{video_id}")


def draft_samples(video_id: str, video: str, clues: list[Clue], cfg: SampleConfig) -> tuple[list[SampleDraft], str | None]:
    """Clue selections of one video (up to `cfg.samples_per_video`), or ([], reason) when none fits.

    `clues` must be in time order (as extractors return them).
    """
    clues = sorted(clues, key=lambda c: (c.start_s, c.clip_index))
    spaced = max_spaced(clues, cfg.min_gap_s)
    if len(spaced) < cfg.k_min:
        return [], (f"only {len(spaced)} clue(s) at least {cfg.min_gap_s:g} s apart "
                    f"({len(clues)} clue(s) in all); need k={cfg.k_min}")
    rng = video_rng(cfg.seed, video_id)
    n_choices = cfg.num_choices
    drafts: list[SampleDraft] = []
    taken: set[tuple[int, ...]] = set()
    for s in range(cfg.samples_per_video):
        k = rng.randint(cfg.k_min, min(cfg.k_max, len(spaced)))
        sel = select_clues(clues, k, cfg.min_gap_s, rng, taken)
        if sel is None:
            break
        taken.add(sel)
        presented = tuple(range(k))
        while presented == tuple(range(k)):  # never show the events already in order
            presented = tuple(rng.sample(range(k), k))
        chosen = tuple(clues[i] for i in sel)
        correct = tuple(presented.index(t) + 1 for t in range(k))
        drafts.append(SampleDraft(video_id=video_id, video=video, selection=s, clues=chosen, presented=presented,
                                  distractors=_distractors(correct, n_choices - 1, rng)))
    return drafts, None


def split_of(video_id: str, seed: int, val_fraction: float) -> str:
    """"val" for a `val_fraction` share of videos by hash of (seed, video_id), else "train"."""
    h = int(hashlib.sha256(f"vico-split:{seed}:{video_id}".encode()).hexdigest()[:16], 16) / 2.0**64
    return "val" if h < val_fraction else "train"


# ----------------------------------------------------------------------------------------------
# rendering

def _events_block(draft: SampleDraft) -> str:
    lines = [f"{j + 1}. {draft.clues[t].text}" for j, t in enumerate(draft.presented)]
    return "These events happen in the video, listed in random order:\n" + "\n".join(lines)


def order_text(order: Iterable[int]) -> str:
    """(3, 1, 2) -> "3, 1, 2"."""
    return ", ".join(str(x) for x in order)


def render_open(draft: SampleDraft) -> tuple[str, str]:
    """(human turn, gpt turn) of the open ordering question."""
    q = (f"{IMAGE_TOKEN}\n{_events_block(draft)}\n"
         "Put the events in the order in which they happen in the video. "
         "Answer with the event numbers in order, separated by commas.")
    return q, order_text(draft.answer_order)


def render_mc(draft: SampleDraft, answer_index: int) -> tuple[str, str, list[list[int]]]:
    """(human turn, gpt turn, options as label lists) with the correct order at `answer_index`."""
    opts = list(draft.distractors)
    opts.insert(answer_index, draft.answer_order)
    lines = [f"{LETTERS[i]}. {order_text(o)}" for i, o in enumerate(opts)]
    q = (f"{IMAGE_TOKEN}\n{_events_block(draft)}\n"
         "Which option gives the order in which the events happen in the video?\n" + "\n".join(lines) + "\n"
         "Answer with the option's letter from the given choices directly.")
    return q, LETTERS[answer_index], [list(o) for o in opts]


def sample_id(draft: SampleDraft, form: str) -> str:
    digest = draft.video_id.split(":")[-1][:16]
    return f"vico-{digest}-{draft.selection:02d}-{form}"


def finalize(drafts: list[SampleDraft], cfg: SampleConfig, meta: dict[str, Any] | None = None) -> dict[str, list[dict]]:
    """LLaVA-style records per split from every video's drafts.

    Drafts are ordered by (video, video_id, selection), so the result does not depend on the
    order in which videos finished. `meta` (captioner, extractor, clip_seconds, ...) is copied into
    each record's `vico` object.
    """
    drafts = sorted(drafts, key=lambda d: (d.video, d.video_id, d.selection))
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    positions: dict[str, list[int]] = {s: [] for s in SPLITS}
    pos_rng = {s: random.Random(f"vico-positions:{cfg.seed}:{s}") for s in SPLITS}
    for d in drafts:
        split = split_of(d.video_id, cfg.seed, cfg.val_fraction)
        clues = [{"label": j + 1, **d.clues[t].to_dict()} for j, t in enumerate(d.presented)]
        for form in cfg.forms:
            base = {"form": form, "video_id": d.video_id, "split": split, "k": d.k, "clues": clues,
                    "answer_order": list(d.answer_order), **(meta or {})}
            if form == "open":
                human, gpt = render_open(d)
            else:
                if not positions[split]:
                    positions[split] = pos_rng[split].sample(range(cfg.num_choices), cfg.num_choices)
                idx = positions[split].pop(0)
                human, gpt, options = render_mc(d, idx)
                base.update(choices=options, answer_index=idx)
            base["answer"] = gpt
            out[split].append({
                "id": sample_id(d, form),
                "video": d.video,
                "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}],
                "vico": base,
            })
    return out


def dumps_samples(samples: list[dict]) -> str:
    """Canonical JSON text of a sample list (sorted keys, indent 1, UTF-8 kept, trailing newline)."""
    return json.dumps(samples, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_samples_json(path: str | Path, samples: list[dict]) -> Path:
    """Write `samples` as canonical JSON to `path` (atomic: a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_samples(samples), encoding="utf-8")
    tmp.replace(path)
    return path


def archive_rows(samples: Iterable[dict]) -> list[dict]:
    """Rows for the archive's `vico_samples` table (sample_id, video_id, split, form, sample_json)."""
    return [{"sample_id": s["id"], "video_id": s["vico"]["video_id"], "split": s["vico"]["split"],
             "form": s["vico"]["form"], "sample_json": json.dumps(s, sort_keys=True, ensure_ascii=False)}
            for s in samples]

"""Questions with known answers about toy-family videos, from their ground-truth JSON.

The question family of issue 12 (what the trained `toy` model answers and is checked on), written
the way `vxl ask --choice` asks them: the question text, the right answer, and the options (the
answer among distractors; scored by option log-likelihood, `VideoXL.score_options`).

| type | question | options |
|---|---|---|
| `bg_start` | What is the background colour at the start of the video? | 4 background names |
| `bg_end` | What is the background colour at the end of the video? | 4 background names |
| `object_color` | What colour is the {shape}? | 4 colour names |
| `object_shape` | What shape appears in the video? | the 4 shapes |
| `scene_count` | How many scenes does the video have? | "2" .. "8" |
| `bg_order` | In what order do the background colours appear? | up to 4 orders `a, then b, then c` |
| `bg_first` | Which background colour appears first: {a} or {b}? | the 2 names |
| `event_order` | VICO's open ordering question over 3 events of the truth JSON | up to 4 orders `3, 1, 2` |
| `describe` | Describe the video from start to end. | none: an open answer, for training (`TRAINING_TYPES`) |
| `event_label` | event_order's numbered lines, then `Which number is the event "..."?` | "1" .. "3", for training (`TRAINING_TYPES`) |
| `event_pair` | event_order's numbered lines, then `Which happens first: event {a} or event {b}?` | the 2 numbers, for training (`TRAINING_TYPES`) |

Everything is drawn from a `numpy.random.Generator` the caller seeds, so a question set is
reproducible. Pure Python + numpy; the truth layout is `tasks.samples.plan_toy_video`'s.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass

import numpy as np

QUESTION_TYPES: tuple[str, ...] = (
    "bg_start", "bg_end", "object_color", "object_shape", "scene_count", "bg_order", "bg_first", "event_order",
)
TRAINING_TYPES: tuple[str, ...] = (*QUESTION_TYPES, "describe", "event_label", "event_pair")
"""What `vxl train --question-types` accepts: the scored types, `describe` (a dense caption of the
whole video in time order, `describe_video`; the captioning stage of LLaVA-style training, with
an open answer, so it is not in the multiple-choice evaluation), `event_label` (the numbered
lines of `event_order`, asked for the number of one quoted line: the text-to-label lookup that
`event_order` needs, taught on its own) and `event_pair` (the same lines, asked which of two
happens first: event order's comparison, two lines at a time); docs/EVALUATION.md, eleventh
session."""
DESCRIBE_QUESTION = "Describe the video from start to end."
SCENE_COUNT_OPTIONS: tuple[str, ...] = tuple(str(n) for n in range(2, 9))
NUM_OPTIONS = 4
EVENTS_PER_ORDER_QUESTION = 3


@dataclass(frozen=True)
class QA:
    """One question about one video: `answer` is one of `options` (the text the model should give)."""

    id: str
    type: str
    question: str
    answer: str
    options: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = list(self.options)
        return d


def order_phrase(names) -> str:
    """["teal", "brown", "black"] -> "teal, then brown, then black"."""
    return ", then ".join(names)


def _pick_others(rng: np.random.Generator, pool, exclude, n: int) -> list[str]:
    rest = [x for x in pool if x not in exclude]
    return [rest[i] for i in rng.permutation(len(rest))[:n]]


def _with_answer(rng: np.random.Generator, answer: str, distractors: list[str]) -> tuple[str, ...]:
    opts = [answer, *distractors]
    return tuple(opts[i] for i in rng.permutation(len(opts)))


def _permutation_options(rng: np.random.Generator, items: list, fmt) -> tuple[str, tuple[str, ...]]:
    """The right order of `items` and up to NUM_OPTIONS - 1 other orders, each formatted by `fmt`."""
    right = fmt(items)
    n = len(items)
    others: list[str] = []
    if n <= 5:
        perms = [p for p in itertools.permutations(range(n)) if list(p) != list(range(n))]
        for i in rng.permutation(len(perms))[: NUM_OPTIONS - 1]:
            others.append(fmt([items[j] for j in perms[i]]))
    else:
        while len(others) < NUM_OPTIONS - 1:
            cand = fmt([items[j] for j in rng.permutation(n)])
            if cand != right and cand not in others:
                others.append(cand)
    return right, _with_answer(rng, right, others)


def describe_video(truth: dict) -> str:
    """A dense caption of a toy-family video, in time order, from its truth JSON.

    The first background, then every event's text (`cut`, `appear`, `move`, `disappear`; the same
    texts as VICO's events) in time order, then the last background and the number of scenes, e.g.
    "It starts on a teal background. A red circle appears in the upper left. The scene cuts from a
    teal background to a brown one. It ends on a brown background. It has 2 scenes." (about 90
    tokens of the toy tokenizer on average over the family, at most about 130).
    """
    from tasks.samples import _article
    from vico_synth.extractors import clean_text

    scenes = [s["background"] for s in truth["scenes"]]
    parts = [f"It starts on {_article(scenes[0])} {scenes[0]} background."]
    parts += [clean_text(ev["text"]) for ev in sorted(truth.get("events", []), key=lambda e: e["start_s"])]
    parts.append(f"It ends on {_article(scenes[-1])} {scenes[-1]} background.")
    parts.append(f"It has {len(scenes)} scene{'s' if len(scenes) != 1 else ''}.")
    return " ".join(parts)


def make_question(truth: dict, qtype: str, rng: np.random.Generator, video_key: str = "") -> QA | None:
    """One question of type `qtype` about the video of `truth`, or None when the video cannot pose it
    (`bg_order`/`bg_first` with one scene, `event_order` with fewer than 3 events, object questions
    without exactly one object). `describe` (`TRAINING_TYPES`) has the caption as its only option;
    `event_label` and `event_pair` draw the same 3 numbered lines as `event_order` from the same
    `rng` state.

    Raises:
        ValueError: an unknown `qtype`.
    """
    from tasks.samples import BACKGROUNDS, COLORS, SHAPES

    if qtype not in TRAINING_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; one of {TRAINING_TYPES}")
    key = video_key or str(truth.get("video") or truth.get("seed"))
    if qtype == "describe":
        caption = describe_video(truth)
        return QA(id=f"{key}:describe", type="describe", question=DESCRIBE_QUESTION, answer=caption, options=(caption,))
    scenes = [s["background"] for s in truth["scenes"]]
    obj = truth.get("object")
    if qtype in ("bg_start", "bg_end"):
        where = "start" if qtype == "bg_start" else "end"
        answer = scenes[0] if qtype == "bg_start" else scenes[-1]
        question = f"What is the background colour at the {where} of the video?"
        options = _with_answer(rng, answer, _pick_others(rng, BACKGROUNDS, {answer}, NUM_OPTIONS - 1))
    elif qtype == "object_color":
        if not obj:
            return None
        answer = obj["color"]
        question = f"What colour is the {obj['shape']}?"
        options = _with_answer(rng, answer, _pick_others(rng, COLORS, {answer}, NUM_OPTIONS - 1))
    elif qtype == "object_shape":
        if not obj:
            return None
        answer = obj["shape"]
        question = "What shape appears in the video?"
        options = _with_answer(rng, answer, _pick_others(rng, SHAPES, {answer}, NUM_OPTIONS - 1))
    elif qtype == "scene_count":
        answer = str(len(scenes))
        if answer not in SCENE_COUNT_OPTIONS:
            return None
        question = "How many scenes does the video have?"
        options = SCENE_COUNT_OPTIONS
    elif qtype == "bg_order":
        if len(scenes) < 2 or len(set(scenes)) != len(scenes):
            return None
        question = "In what order do the background colours appear?"
        answer, options = _permutation_options(rng, scenes, order_phrase)
    elif qtype == "bg_first":
        if len(scenes) < 2 or len(set(scenes)) != len(scenes):
            return None
        i, j = sorted(rng.choice(len(scenes), size=2, replace=False))
        a, b = (scenes[i], scenes[j]) if rng.random() < 0.5 else (scenes[j], scenes[i])
        question = f"Which background colour appears first: {a} or {b}?"
        answer, options = scenes[i], (a, b)
    else:  # event_order (VICO's open question, vico_synth.samples.render_open), event_label, event_pair
        from vico_synth.extractors import clean_text

        events = truth.get("events", [])
        if len(events) < EVENTS_PER_ORDER_QUESTION:
            return None
        chosen = sorted(rng.choice(len(events), size=EVENTS_PER_ORDER_QUESTION, replace=False))
        texts = [clean_text(events[i]["text"]) for i in chosen]  # in time order
        presented = [int(x) for x in rng.permutation(len(texts))]  # label j+1 shows event presented[j]
        lines = [f"{j + 1}. {texts[t]}" for j, t in enumerate(presented)]
        listed = "These events happen in the video, listed in random order:\n" + "\n".join(lines) + "\n"
        labels = [presented.index(t) + 1 for t in range(len(texts))]
        if qtype == "event_label":
            t = int(rng.integers(len(texts)))
            question = listed + f"Which number is the event \"{texts[t].rstrip('.')}\"? Answer with its number."
            answer, options = str(labels[t]), tuple(str(j + 1) for j in range(len(texts)))
        elif qtype == "event_pair":
            a, b = sorted(int(x) + 1 for x in rng.choice(len(texts), size=2, replace=False))
            question = listed + f"Which happens first: event {a} or event {b}? Answer with its number."
            answer, options = str(min((a, b), key=lambda x: presented[x - 1])), (str(a), str(b))
        else:
            question = listed + ("Put the events in the order in which they happen in the video. "
                                 "Answer with the event numbers in order, separated by commas.")
            answer, options = _permutation_options(rng, labels, lambda o: ", ".join(str(x) for x in o))
    return QA(id=f"{key}:{qtype}", type=qtype, question=question, answer=answer, options=tuple(options))


def make_questions(truth: dict, rng: np.random.Generator, types=QUESTION_TYPES, video_key: str = "") -> list[QA]:
    """One question of each type in `types` that the video can pose (see `make_question`)."""
    out = []
    for t in types:
        q = make_question(truth, t, rng, video_key)
        if q is not None:
            out.append(q)
    return out


# -- scoring ------------------------------------------------------------------------------------


def score_questions(vx, memory, questions: list[QA]) -> list[dict]:
    """Answer each multiple-choice question from `memory` by option log-likelihood
    (`VideoXL.score_options`, what `vxl ask --choice` does). One dict per question: `id`, `type`,
    `answer`, `chosen`, `scores` (summed log-probability per option, nats), `correct`."""
    out = []
    for q in questions:
        scores = vx.score_options(memory, q.question, list(q.options))
        chosen = q.options[int(np.argmax(scores))]
        out.append({"id": q.id, "type": q.type, "question": q.question, "answer": q.answer, "chosen": chosen,
                    "scores": [float(s) for s in scores], "correct": chosen == q.answer})
    return out


def accuracy_by_type(results: list[dict]) -> dict:
    """`{"overall": {...}, "per_type": {type: {"correct", "total", "accuracy"}}}` of scored questions."""
    per: dict[str, dict] = {}
    for r in results:
        d = per.setdefault(r["type"], {"correct": 0, "total": 0})
        d["total"] += 1
        d["correct"] += int(bool(r["correct"]))
    for d in per.values():
        d["accuracy"] = d["correct"] / d["total"]
    total = sum(d["total"] for d in per.values())
    correct = sum(d["correct"] for d in per.values())
    return {"overall": {"correct": correct, "total": total, "accuracy": correct / total if total else float("nan")},
            "per_type": dict(sorted(per.items()))}


def evaluate_videos(vx, paths, *, seed: int = 0, types=QUESTION_TYPES, chunking: str = "dynamic",
                    ratio: int = 8, fps: float = 1.0, max_frames: int = 128) -> list[dict]:
    """Decode each video (as `vxl index` does), plan (`chunking`, the index default `dynamic` with
    the tiny CLIP), encode with `vx`, and score one question of each type from its truth JSON.

    Returns the `score_questions` dicts, each with `video` added.
    """
    from pathlib import Path

    from tasks.video import decode
    from tasks.workers import Encoder, PlanSpec

    clip = None
    spec = PlanSpec(chunking=chunking, ratio=ratio)
    if chunking == "dynamic":
        from model.clip_embed import ClipEmbedder
        from tasks.index import TINY_CLIP

        spec = PlanSpec(chunking="dynamic", clip_model=TINY_CLIP)
        clip = ClipEmbedder(TINY_CLIP, device=str(vx.device))
    enc = Encoder(vx, clip, spec)
    results = []
    for n, path in enumerate(paths):
        truth = json.loads(Path(path).with_suffix(".json").read_text())
        dec = decode(path, fps=fps, max_frames=max_frames)
        memory = enc.encode(dec.frames, dec.timestamps).memory
        qs = make_questions(truth, np.random.default_rng([seed, n]), types, video_key=Path(path).name)
        for r in score_questions(vx, memory, qs):
            results.append({**r, "video": str(path)})
    return results


def write_questions_file(video_paths, out, *, seed: int = 0, types=QUESTION_TYPES, root=None) -> list[dict]:
    """A `vxl eval` question file (vxl layout: `{"id", "video", "question", "options", "answer",
    "type", "duration"}`) with one question of each type about each video (truth JSON next to it).
    `video` is relative to `root` (default: the file's folder). Returns the entries written."""
    from pathlib import Path

    out = Path(out)
    root = Path(root) if root is not None else out.parent
    entries = []
    for n, p in enumerate(video_paths):
        p = Path(p)
        truth = json.loads(p.with_suffix(".json").read_text())
        try:
            rel = str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            rel = str(p.resolve())
        for q in make_questions(truth, np.random.default_rng([seed, n]), types, video_key=p.name):
            entries.append({"id": q.id, "video": rel, "question": q.question, "options": list(q.options),
                            "answer": q.answer, "type": q.type, "duration": truth["seconds"]})
    out.write_text(json.dumps(entries, indent=1))
    return entries

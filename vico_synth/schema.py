"""The documented JSON schema of a VICO sample file (docs/VICO.md), and a validator.

A file (`train.json`, `val.json`) is a JSON array of LLaVA-style records:
`{"id", "video", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}],
"vico": {...}}`. `validate_samples` checks the JSON schema (jsonschema, Draft 2020-12) and the
facts a schema cannot express (the answer matches the clue times, the correct option sits at
`answer_index`, ids are unique).
"""

from __future__ import annotations

from typing import Any

CLUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "text", "clip_index", "start_s", "end_s"],
    "additionalProperties": False,
    "properties": {
        "label": {"type": "integer", "minimum": 1, "description": "number the clue is shown with"},
        "text": {"type": "string", "minLength": 1, "description": "one-sentence event"},
        "clip_index": {"type": "integer", "minimum": 0, "description": "clip the clue comes from"},
        "start_s": {"type": "number", "minimum": 0, "description": "clip start, seconds"},
        "end_s": {"type": "number", "minimum": 0, "description": "clip end, seconds"},
    },
}

SAMPLE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://vxl.local/schemas/vico-sample-v1.json",
    "title": "VICO sample (LLaVA conversation format)",
    "type": "object",
    "required": ["id", "video", "conversations", "vico"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^vico-[0-9a-zA-Z]+-[0-9]{2,}-(open|mc)$"},
        "video": {"type": "string", "minLength": 1, "description": "path relative to the video folder"},
        "conversations": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "prefixItems": [
                {"type": "object", "required": ["from", "value"], "additionalProperties": False,
                 "properties": {"from": {"const": "human"}, "value": {"type": "string", "pattern": "^<image>\\n"}}},
                {"type": "object", "required": ["from", "value"], "additionalProperties": False,
                 "properties": {"from": {"const": "gpt"}, "value": {"type": "string", "minLength": 1}}},
            ],
        },
        "vico": {
            "type": "object",
            "required": ["form", "video_id", "split", "k", "clues", "answer_order", "answer"],
            "properties": {
                "form": {"enum": ["open", "mc"]},
                "video_id": {"type": "string", "minLength": 1},
                "split": {"enum": ["train", "val"]},
                "k": {"type": "integer", "minimum": 2, "maximum": 9},
                "clues": {"type": "array", "minItems": 2, "items": CLUE_SCHEMA},
                "answer_order": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "answer": {"type": "string", "minLength": 1},
                "choices": {"type": "array", "minItems": 2,
                            "items": {"type": "array", "items": {"type": "integer", "minimum": 1}}},
                "answer_index": {"type": "integer", "minimum": 0},
                "captioner": {"type": "string"},
                "extractor": {"type": "string"},
                "clip_seconds": {"type": "number", "exclusiveMinimum": 0},
                "seed": {"type": "integer"},
            },
            "if": {"properties": {"form": {"const": "mc"}}},
            "then": {"required": ["choices", "answer_index"]},
        },
    },
}

FILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "VICO sample file",
    "type": "array",
    "items": SAMPLE_SCHEMA,
}


class SampleValidationError(ValueError):
    """A sample file does not follow the schema; `problems` lists every one found."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems[:10]))
        self.problems = problems


def _semantic(s: dict) -> list[str]:
    v, sid = s["vico"], s["id"]
    probs = []
    clues = v["clues"]
    labels = [c["label"] for c in clues]
    if labels != list(range(1, len(clues) + 1)) or v["k"] != len(clues):
        probs.append(f"{sid}: labels {labels} are not 1..k (k={v['k']})")
        return probs
    by_time = [c["label"] for c in sorted(clues, key=lambda c: (c["start_s"], c["clip_index"]))]
    if list(v["answer_order"]) != by_time:
        probs.append(f"{sid}: answer_order {v['answer_order']} is not the time order {by_time}")
    order = ", ".join(str(x) for x in v["answer_order"])
    if v["form"] == "open" and v["answer"] != order:
        probs.append(f"{sid}: open answer {v['answer']!r} != {order!r}")
    if v["form"] == "mc":
        ch, idx = v["choices"], v["answer_index"]
        if not 0 <= idx < len(ch) or ch[idx] != v["answer_order"]:
            probs.append(f"{sid}: choices[{idx}] is not the answer order")
        if len({tuple(c) for c in ch}) != len(ch):
            probs.append(f"{sid}: repeated options")
        if v["answer"] != "ABCDEFGH"[idx]:
            probs.append(f"{sid}: mc answer {v['answer']!r} != letter of answer_index {idx}")
    if s["conversations"][1]["value"] != v["answer"]:
        probs.append(f"{sid}: gpt turn differs from vico.answer")
    return probs


def validate_samples(samples: list[dict]) -> None:
    """Validate a sample list against `FILE_SCHEMA` plus the semantic checks.

    Raises:
        SampleValidationError: listing every problem (schema paths and sample ids).
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(FILE_SCHEMA)
    problems = [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                for e in sorted(validator.iter_errors(samples), key=lambda e: list(map(str, e.absolute_path)))]
    if not problems:
        seen: set[str] = set()
        for s in samples:
            if s["id"] in seen:
                problems.append(f"{s['id']}: duplicate id")
            seen.add(s["id"])
            problems += _semantic(s)
    if problems:
        raise SampleValidationError(problems)

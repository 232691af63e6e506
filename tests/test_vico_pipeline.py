"""VICO synthesis on real H.264 sample videos: ground-truth captioner + heuristic extractor."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vico_synth.captioners import make_captioner
from vico_synth.extractors import make_extractor
from vico_synth.pipeline import SynthSettings, VideoInput, synth_video
from vico_synth.samples import SampleConfig
from vico_synth.schema import SampleValidationError, validate_samples

CLIP_S = 3.0


@pytest.fixture(scope="module")
def vico_videos(tmp_path_factory) -> Path:
    from tasks.samples import make_sample_videos

    out = tmp_path_factory.mktemp("vico_videos")
    make_sample_videos(out, count=6, seconds=30.0, fps=4, width=160, height=120, seed=3)
    return out


@pytest.fixture(scope="module")
def decoded(vico_videos) -> list[VideoInput]:
    from tasks.video import decode, video_id

    out = []
    for p in sorted(vico_videos.glob("*.mp4")):
        dv = decode(p, fps=1.0, max_frames=1024)
        out.append(VideoInput(video_id=video_id(p), video=p.name, path=str(p), frames=None,
                              timestamps=dv.timestamps, duration_s=dv.duration_s))
    return out


def _options(src: Path, out: Path, seed: int, **kw):
    from tasks.vico import VicoOptions

    base = dict(source=str(src), out=str(out), captioner="ground-truth", extractor="heuristic", seed=seed,
                clip_seconds=CLIP_S, k="3-5", samples_per_video=6, val_fraction=0.4, workers=0)
    base.update(kw)
    return VicoOptions(**base)


def _run(decoded, src, out, seed=0, **kw) -> dict:
    from tasks.vico import write_outputs

    opts = _options(src, out, seed, **kw)
    cap, ext = make_captioner("ground-truth"), make_extractor("heuristic")
    results = [synth_video(v, cap, ext, opts.settings()) for v in decoded]
    return write_outputs(results, opts)


def _load(out: Path) -> dict[str, list[dict]]:
    return {s: json.loads((out / f"{s}.json").read_text()) for s in ("train", "val")}


def test_answers_are_the_true_order_and_schema_validates(decoded, vico_videos, tmp_path):
    summary = _run(decoded, vico_videos, tmp_path)
    assert summary["exit_code"] == 0 and summary["skipped"] == []
    splits = _load(tmp_path)
    samples = splits["train"] + splits["val"]
    assert summary["samples_written"]["total"] == len(samples) > 40
    for sp in splits.values():
        validate_samples(sp)
    truth = {p.name: json.loads(p.with_suffix(".json").read_text()) for p in vico_videos.glob("*.mp4")}
    for s in samples:
        v = s["vico"]
        human, gpt = s["conversations"][0]["value"], s["conversations"][1]["value"]
        assert human.startswith("<image>\n") and gpt == v["answer"]
        starts = {e["text"]: e["start_s"] for e in truth[s["video"]]["events"]}
        by_label = {c["label"]: c for c in v["clues"]}
        # the answer lists the labels in the order their events happen in the video (ground truth)
        times = []
        for label in v["answer_order"]:
            c = by_label[label]
            events = [t.strip().rstrip(".") for t in c["text"].split(", then ")]
            ev_times = [starts[e[0].lower() + e[1:]] for e in events]
            assert all(c["start_s"] <= t < c["end_s"] for t in ev_times)
            times.append(ev_times)
        flat = [t for ts in times for t in ts]
        assert flat == sorted(flat)
        assert all(b["start_s"] - a["start_s"] >= CLIP_S - 1e-6 for a, b in zip(
            sorted(v["clues"], key=lambda c: c["start_s"]), sorted(v["clues"], key=lambda c: c["start_s"])[1:],
            strict=False))
        shown = [c["label"] for c in sorted(v["clues"], key=lambda c: c["start_s"])]
        assert shown != sorted(shown), "events must not be shown already in order"
        if v["form"] == "mc":
            assert v["choices"][v["answer_index"]] == v["answer_order"]
            assert gpt == "ABCD"[v["answer_index"]]
        else:
            assert gpt == ", ".join(map(str, v["answer_order"]))
    assert set(summary["clue_counts"]) == {"3", "4", "5"}


def test_same_seed_byte_identical_other_seed_differs(decoded, vico_videos, tmp_path):
    _run(decoded, vico_videos, tmp_path / "a", seed=7)
    _run(decoded, vico_videos, tmp_path / "b", seed=7)
    _run(decoded, vico_videos, tmp_path / "c", seed=8)
    for name in ("train.json", "val.json", "summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = (tmp_path / "a" / "train.json").read_bytes() + (tmp_path / "a" / "val.json").read_bytes()
    c = (tmp_path / "c" / "train.json").read_bytes() + (tmp_path / "c" / "val.json").read_bytes()
    assert a != c
    # the order in which videos finish does not matter
    from tasks.vico import write_outputs

    opts = _options(vico_videos, tmp_path / "d", 7)
    cap, ext = make_captioner("ground-truth"), make_extractor("heuristic")
    results = [synth_video(v, cap, ext, opts.settings()) for v in reversed(decoded)]
    write_outputs(results, opts)
    assert (tmp_path / "d" / "train.json").read_bytes() == (tmp_path / "a" / "train.json").read_bytes()


def test_split_by_video_and_balanced_positions(decoded, vico_videos, tmp_path):
    summary = _run(decoded, vico_videos, tmp_path, seed=1)
    splits = _load(tmp_path)
    train_v = {s["vico"]["video_id"] for s in splits["train"]}
    val_v = {s["vico"]["video_id"] for s in splits["val"]}
    assert train_v and val_v and not train_v & val_v
    assert all(s["vico"]["split"] == sp for sp, ss in splits.items() for s in ss)
    for sp, ss in splits.items():
        mc = [s for s in ss if s["vico"]["form"] == "mc"]
        counts = Counter(s["vico"]["answer_index"] for s in mc)
        assert set(counts) <= {0, 1, 2, 3}
        for i in range(4):
            assert abs(counts[i] / len(mc) - 0.25) <= 0.10, (sp, counts)
        assert summary["answer_positions"][sp] == {L: counts[i] for i, L in enumerate("ABCD")}


def test_validator_rejects_wrong_answers(decoded, vico_videos, tmp_path):
    _run(decoded, vico_videos, tmp_path)
    samples = _load(tmp_path)["train"]
    bad = json.loads(json.dumps(samples[:2]))
    bad[0]["conversations"][0]["value"] = bad[0]["conversations"][0]["value"].replace("<image>\n", "")
    bad[1]["vico"]["answer_order"] = list(reversed(bad[1]["vico"]["answer_order"]))
    with pytest.raises(SampleValidationError) as ei:
        validate_samples(bad)
    assert len(ei.value.problems) >= 1


def test_archive_rows(decoded, vico_videos, tmp_path, archive):
    summary = _run(decoded, vico_videos, tmp_path / "a", archive=archive.uri)
    rows = archive.list_vico_samples()
    assert len(rows) == summary["samples_written"]["total"] == summary["archive_rows"]
    r = rows[0]
    sample = json.loads(r["sample_json"])
    assert r["sample_id"] == sample["id"] and r["split"] == sample["vico"]["split"]
    assert r["form"] == sample["vico"]["form"] and r["video_id"] == sample["vico"]["video_id"]
    _run(decoded, vico_videos, tmp_path / "b", archive=archive.uri)  # idempotent on sample id
    assert len(archive.list_vico_samples()) == len(rows)


def test_sample_config_validation():
    with pytest.raises(ValueError):
        SampleConfig(k_min=5, k_max=4)
    with pytest.raises(ValueError):
        SampleConfig(num_choices=9)
    with pytest.raises(ValueError):
        SynthSettings(clip_seconds=0)
    from vico_synth.samples import parse_k

    assert parse_k("3-6") == (3, 6) and parse_k(4) == (4, 4)
    with pytest.raises(ValueError):
        parse_k("x")

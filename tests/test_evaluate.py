"""`vxl eval` (issue 13): question-file layouts, accuracy and intervals against independent
computations, paired tests, option scoring against a full forward."""

from __future__ import annotations

import json
import math

import pytest

from tasks.evaluate import (
    BenchmarkFileError,
    accuracy_table,
    compare_runs,
    duration_bucket,
    load_benchmark,
    mcnemar_exact,
    wilson_interval,
)


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_mlvu_layout(tmp_path):
    f = _write(tmp_path / "mlvu.json", [
        {"video": "a.mp4", "duration": 75.5, "question": "What colour?", "candidates": ["red", "blue", "green", "pink"],
         "answer": "blue", "question_type": "count"},
        {"video": "sub/b.mp4", "duration": 1800, "question": "Which first?", "candidates": ["x", "y"], "answer": "x",
         "question_type": "order", "question_id": "q7"},
    ])
    layout, qs = load_benchmark(f)
    assert layout == "mlvu"
    assert [(q.qid, q.video, q.answer, q.type) for q in qs] == [("mlvu-0", "a.mp4", 1, "count"),
                                                                ("q7", "sub/b.mp4", 0, "order")]
    assert qs[0].options == ("red", "blue", "green", "pink")
    assert [duration_bucket(q) for q in qs] == ["short (< 2 min)", "long (>= 15 min)"]


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_videomme_layout(tmp_path, fmt):
    rows = [{"videoID": "fFjv93ACGo8", "question_id": "001-1", "duration": "short", "task_type": "Counting Problem",
             "question": "How many?", "options": ["A. 2.", "B. 3.", "C. 4.", "D. 5."], "answer": "C"}]
    if fmt == "json":
        f = _write(tmp_path / "videomme.json", rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = tmp_path / "test-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), f)
    layout, qs = load_benchmark(f)
    assert layout == "videomme"
    (q,) = qs
    assert q.options == ("2.", "3.", "4.", "5.") and q.answer == 2 and q.type == "Counting Problem"
    assert q.qid == "001-1" and q.video == "fFjv93ACGo8" and duration_bucket(q) == "short"


def test_longvideobench_and_vxl_layouts(tmp_path):
    f = _write(tmp_path / "lvb.json", [{"id": "86CxyhFV9MI_0", "video_path": "86CxyhFV9MI.mp4", "question": "Q?",
                                        "candidates": ["a", "b", "c"], "correct_choice": 2, "duration": 500.0,
                                        "question_category": "TOS"}])
    layout, (q,) = load_benchmark(f)
    assert layout == "longvideobench" and q.answer == 2 and q.type == "TOS" and q.duration_s == 500.0
    f = _write(tmp_path / "vxl.json", [{"id": "v:bg_start", "video": "v.mp4", "question": "Q?", "options": ["a", "b"],
                                        "answer": "b", "type": "bg_start"}])
    layout, (q,) = load_benchmark(f)
    assert layout == "vxl" and q.answer == 1


@pytest.mark.parametrize("entry, key", [
    ({"video": "a.mp4", "question": "Q", "candidates": ["x", "y"], "answer": "z", "question_type": "t"}, "answer"),
    ({"video": "a.mp4", "question": "Q", "candidates": "xy", "answer": "x", "question_type": "t"}, "candidates"),
])
def test_malformed_entries_name_file_entry_and_key(tmp_path, entry, key):
    good = {"video": "a.mp4", "question": "Q", "candidates": ["x", "y"], "answer": "x", "question_type": "t"}
    f = _write(tmp_path / "bad.json", [good, entry])
    with pytest.raises(BenchmarkFileError) as e:
        load_benchmark(f)
    msg = str(e.value)
    assert str(f) in msg and "entry 1" in msg and repr(key) in msg


def test_missing_key_and_unknown_layout(tmp_path):
    good = {"videoID": "x", "question": "Q", "options": ["A. a", "B. b"], "answer": "A", "task_type": "t"}
    f = _write(tmp_path / "vm.json", [good, {k: v for k, v in good.items() if k != "answer"}])
    with pytest.raises(BenchmarkFileError, match=r"entry 1.*missing key 'answer'"):
        load_benchmark(f)
    f = _write(tmp_path / "other.json", [{"clip": "x", "q": "y"}])
    with pytest.raises(BenchmarkFileError) as e:
        load_benchmark(f)
    assert "videoID" in str(e.value) and "candidates" in str(e.value) and "question_type" in str(e.value)
    with pytest.raises(BenchmarkFileError, match="not found"):
        load_benchmark(tmp_path / "nope.json")


def _wilson_by_inversion(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Independent: the p whose score test |k/n - p| <= z sqrt(p(1-p)/n) is not rejected, by bisection."""
    phat = k / n

    def inside(p):
        return abs(phat - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-15

    def edge(lo, hi, lo_inside):
        for _ in range(200):
            mid = (lo + hi) / 2
            if inside(mid) == lo_inside:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if inside(0.0) else edge(phat, 0.0, True)
    upper = 1.0 if inside(1.0) else edge(phat, 1.0, True)
    return lower, upper


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 48), (1, 1), (450, 500)])
def test_wilson_interval_matches_score_test_inversion(k, n):
    lo, hi = wilson_interval(k, n)
    ref = _wilson_by_inversion(k, n)
    assert lo == pytest.approx(ref[0], abs=1e-9) and hi == pytest.approx(ref[1], abs=1e-9)
    assert math.isnan(wilson_interval(0, 0)[0])


def _binom_two_sided(a: int, b: int) -> float:
    """Independent: exact two-sided binomial test (p = 1/2) by summing outcomes no more likely than observed."""
    n = a + b
    if n == 0:
        return 1.0
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    obs = probs[a]
    return min(1.0, sum(p for p in probs if p <= obs * (1 + 1e-12)))


@pytest.mark.parametrize("a_only, b_only, both, neither", [(5, 0, 10, 3), (3, 4, 20, 2), (0, 0, 5, 5), (12, 2, 40, 6)])
def test_mcnemar_exact_matches_binomial_test(a_only, b_only, both, neither):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    m = mcnemar_exact(a, b)
    assert (m["a_only"], m["b_only"]) == (a_only, b_only)
    assert m["p_value"] == pytest.approx(_binom_two_sided(a_only, b_only), rel=1e-12)
    assert m["difference"] == pytest.approx((b_only - a_only) / len(a))


def test_accuracy_per_type_from_a_fake_scorer():
    # 3 types with known outcomes: t1 4/5, t2 0/3, t3 2/2
    rows = ([{"type": "t1", "correct": c, "duration": "short"} for c in (1, 1, 1, 1, 0)]
            + [{"type": "t2", "correct": 0, "duration": "long"}] * 3 + [{"type": "t3", "correct": 1, "duration": "long"}] * 2)
    t = accuracy_table(rows, keys=("type", "duration"))
    assert (t["correct"], t["total"]) == (6, 10)
    assert {k: (v["correct"], v["total"]) for k, v in t["per_type"].items()} == {"t1": (4, 5), "t2": (0, 3), "t3": (2, 2)}
    assert t["per_type"]["t1"]["accuracy"] == 0.8
    assert t["per_type"]["t1"]["ci95"] == pytest.approx(list(_wilson_by_inversion(4, 5)), abs=1e-9)
    assert {k: v["total"] for k, v in t["per_duration"].items()} == {"short": 5, "long": 5}


def test_compare_runs_pairs_questions_by_id():
    a = {"results": [{"qid": f"q{i}", "type": "x", "correct": i < 6} for i in range(10)]}
    b = {"results": [{"qid": f"q{i}", "type": "x", "correct": i >= 2} for i in range(10)] + [{"qid": "extra", "type": "x",
                                                                                             "correct": True}]}
    c = compare_runs(a, b)
    assert c["overall"]["n"] == 10 and c["overall"]["a_only"] == 2 and c["overall"]["b_only"] == 4
    assert c["overall"]["difference"] == pytest.approx(0.2)


@pytest.mark.timeout(300)
def test_option_scores_equal_a_full_forward_over_question_and_option():
    import torch

    from model.tokenizer import split_prompt
    from model.video_xl import load_model

    vx = load_model("tiny", device="cpu")
    frames = torch.randint(0, 255, (12, 64, 64, 3), dtype=torch.uint8)
    mem = vx.encode(frames, vx.plan(12, ratio=8))
    question, options = "What colour is the circle?", ["red", "dark blue square", "a"]
    scores = vx.score_options(mem, question, options)
    for opt, got in zip(options, scores, strict=True):
        q_ids = vx.tokenizer(split_prompt(question)[1], add_special_tokens=False).input_ids
        o_ids = vx.tokenizer(opt, add_special_tokens=False).input_ids
        with torch.no_grad():  # one pass over question + option against the same memory
            cache = vx.model.rotated_cache(mem.kv())
            logits = vx.model.step(vx.model.model.embed_tokens(torch.tensor([q_ids + o_ids])), cache,
                                   logits_for_last=len(o_ids) + 1)
        logp = torch.log_softmax(logits[:-1].double(), -1)
        ref = float(logp[torch.arange(len(o_ids)), torch.tensor(o_ids)].sum())
        assert got == pytest.approx(ref, abs=1e-4)


@pytest.mark.timeout(900)
def test_vxl_eval_end_to_end_matches_direct_scoring_and_is_idempotent(tmp_path, ray_session):
    """`vxl eval` end to end (index the missing videos, answer on Ray, store, aggregate) with the
    shipped toy model on fresh videos gives, question by question, the option an independent
    in-process computation chooses (decode, plan, encode, score without archive or Ray:
    `tasks.qa.evaluate_videos`); a rerun answers nothing again; a partial run is completed."""
    from typer.testing import CliRunner

    from flows.cli import app
    from storage import open_archive
    from tasks.qa import write_questions_file
    from tasks.samples import make_toy_videos

    vids = make_toy_videos(tmp_path / "videos", [5_100_000 + i for i in range(3)], width=320, height=240, fps=8,
                           scene_s=(2.0, 5.0))
    qfile = tmp_path / "videos" / "questions.json"
    entries = write_questions_file(vids, qfile, seed=1)
    archive = tmp_path / "archive"
    args = ["eval", "--archive", str(archive), "--questions", str(qfile), "--model", "toy", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["num_questions"] == len(entries) and not res["missing"]
    assert set(res["per_type"]) >= {"bg_start", "scene_count", "object_color"}
    from model.video_xl import load_model
    from tasks.qa import evaluate_videos

    direct = {(r["video"].rsplit("/", 1)[-1], r["type"]): r for r in evaluate_videos(load_model("toy"), vids, seed=1)}
    by_id = {e["id"]: e for e in entries}
    for r in res["results"]:
        e = by_id[r["qid"]]
        d = direct[(e["video"].rsplit("/", 1)[-1], e["type"])]
        assert d["question"] == e["question"] and d["answer"] == e["answer"]
        assert e["options"][r["chosen"]] == d["chosen"], (r["qid"], r["scores"], d["scores"])
        assert r["scores"] == pytest.approx(d["scores"], abs=1e-3)
    assert res["correct"] == sum(d["correct"] for d in direct.values())
    # issue 13: with the shipped toy model, at least the accuracy issue 12 promises (measured 22 / 23)
    assert res["accuracy"] >= 0.85, res["per_type"]
    # stored: answers carry question ids and correctness, the run summary is in eval_runs
    arch = open_archive(str(archive))
    rows = [a for a in arch.list_answers() if a["question_id"] is not None]
    assert len(rows) == len(entries)
    assert sum(bool(a["correct"]) for a in rows) == res["correct"]
    (run,) = arch.list_eval_runs()
    assert run["num_questions"] == len(entries) and run["run_id"] == res["run_id"]
    # rerun: nothing answered again
    r2 = CliRunner().invoke(app, args)
    res2 = json.loads(r2.output.strip().splitlines()[-1])
    assert res2["ask"]["answered"] == 0 and res2["ask"]["skipped"] == len(entries)
    assert res2["accuracy"] == res["accuracy"]
    # a run interrupted after one video: the rerun answers only what is missing
    first_vid = rows[0]["video_id"]
    n_first = sum(1 for a in rows if a["video_id"] == first_vid)
    arch._table("answers").delete(f"video_id = '{first_vid}'")
    r3 = CliRunner().invoke(app, args)
    res3 = json.loads(r3.output.strip().splitlines()[-1])
    assert res3["ask"]["answered"] == n_first and res3["ask"]["skipped"] == len(entries) - n_first
    assert res3["correct"] == res["correct"]

"""Training (issue 12): the training forward is the inference forward, the loss is the answer
tokens' cross-entropy, gradients reach earlier windows through the kept VST K/V, the loss
decreases, the curriculum follows its schedule and seed, and a run's checkpoint is a loadable
Video-XL folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.training import Curriculum, Turn, answer_token_ids, sample_loss, turn_logits
from tasks.train import TrainConfig, fresh_toy_model, prepare_data, train_loop


@pytest.fixture(scope="module")
def toy():
    return fresh_toy_model(seed=3)


def _frames(vx, n=20, seed=0):
    g = np.random.default_rng(seed)
    s = vx.config.image_processor["crop_size"]
    return torch.from_numpy(g.integers(0, 255, size=(n, s, s, 3), dtype=np.uint8))


@pytest.mark.timeout(120)
def test_training_forward_equals_inference_forward(toy):
    vx = toy
    frames = _frames(vx)
    plan = Curriculum(((0, (2, 4, 8, 12, 16)),), seed=1).fixed_plan(
        20, 0, 0, tokens_per_frame=vx.config.tokens_per_frame, window_tokens=vx.config.beacon_window)
    assert len({w.ratio for w in plan.windows}) >= 2, "the plan should mix ratios"
    question, answer = "What colour is the circle?", "red"
    with torch.no_grad():
        mem_train = vx.encode_memory(frames, plan)
        logits = turn_logits(vx, mem_train, question, answer_token_ids(vx, answer))
    mem_inf = vx.encode(frames, plan)
    ref = vx.next_token_logits(mem_inf, question)
    torch.testing.assert_close(mem_train.kv(), mem_inf.kv(), atol=0, rtol=0)
    assert (logits[0] - ref).abs().max().item() <= 1e-5
    # every answer row equals the inference path's prediction after the previous answer tokens
    ids = answer_token_ids(vx, answer)
    opt_scores = vx.score_options(mem_inf, question, [answer])
    logp = torch.log_softmax(logits, dim=-1)
    own = float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[:-1])].sum())
    assert abs(own - opt_scores[0]) <= 1e-4


@pytest.mark.timeout(120)
def test_loss_is_answer_cross_entropy_and_reaches_earlier_windows(toy):
    vx = toy
    frames = _frames(vx, n=24, seed=1)
    plan = vx.plan(24, ratio=8)
    assert len(plan.windows) == 3
    turns = [Turn("What colour is the circle?", "red"),
             Turn("In what order do the background colours appear?", "teal, then brown, then black")]
    memory = vx.encode_memory(frames, plan)  # with grad
    kv0 = memory.window_kv[0]
    assert kv0.requires_grad
    loss_sum, count, turn_means = 0.0, 0, []
    for t in turns:  # independent: log-softmax of the logits, picked at the targets, by hand
        ids = answer_token_ids(vx, t.answer)
        lg = turn_logits(vx, memory, t.question, ids)
        this = -torch.log_softmax(lg, -1)[torch.arange(len(ids)), torch.tensor(ids)].sum()
        loss_sum = loss_sum + this
        count += len(ids)
        turn_means.append(this.item() / len(ids))
    lengths = [len(answer_token_ids(vx, t.answer)) for t in turns]
    assert lengths[1] > 2 * lengths[0]  # so the two weightings differ
    loss, ntok, per_turn = sample_loss(vx, frames, plan, turns)
    assert ntok == count == sum(lengths)
    assert abs(loss.item() - loss_sum.item() / count) <= 1e-5
    # --loss-weighting turn: each question's mean per token, then the mean over questions
    by_turn, ntok_turn, _ = sample_loss(vx, frames, plan, turns, weighting="turn")
    assert ntok_turn == count
    assert abs(by_turn.item() - sum(turn_means) / len(turns)) <= 1e-5
    assert abs(by_turn.item() - loss.item()) > 1e-3
    with pytest.raises(ValueError, match="weighting"):
        sample_loss(vx, frames, plan, turns, weighting="sample")
    # the answer's gradient reaches the first window's VSTs, and window 2 depends on window 1's
    (g0,) = torch.autograd.grad(loss_sum, kv0, retain_graph=True)
    assert g0.abs().sum() > 0
    (g01,) = torch.autograd.grad(memory.window_kv[1].sum(), kv0)
    assert g01.abs().sum() > 0


@pytest.mark.timeout(180)
def test_window_checkpointing_gives_the_same_loss_and_gradients(toy):
    vx = toy
    frames = _frames(vx, n=20, seed=2)
    plan = vx.plan(20, ratio=4)
    turns = [Turn("What shape appears in the video?", "circle")]
    grads = []
    for ckpt in (False, True):
        vx.model.zero_grad(set_to_none=True)
        loss, _, _ = sample_loss(vx, frames, plan, turns, checkpoint_windows=ckpt)
        loss.backward()
        grads.append((float(loss), {n: p.grad.clone() for n, p in vx.model.named_parameters() if p.grad is not None}))
    vx.model.zero_grad(set_to_none=True)
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys() and len(grads[0][1]) > 20
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.timeout(180)
def test_the_pooling_baseline_trains_through_the_same_forward():
    """`toy-init:compressor=pool` (issue 13, ablation 1): a fresh pooling model; the training
    forward equals its inference forward, the loss reaches the vision tower through the kept
    pooled tokens, the beacon parameters get no gradient (no VSTs), and window
    checkpointing gives the same gradients."""
    from tasks.train import TrainError, parse_toy_init

    assert parse_toy_init("toy-init:compressor=pool") == {"compressor": "pool"}
    with pytest.raises(TrainError, match="compressor=vst|pool"):
        parse_toy_init("toy-init:compressor=qformer")
    with pytest.raises(TrainError, match="layers=N"):
        parse_toy_init("toy-init:layers=0")
    deep = fresh_toy_model(seed=3, **parse_toy_init("toy-init:layers=6"))
    assert deep.config.num_hidden_layers == 6 and len(deep.model.model.layers) == 6
    assert deep.encode(_frames(deep, n=8, seed=4), deep.plan(8, ratio=8)).kv().shape[0] == 6
    vx = fresh_toy_model(seed=3, **parse_toy_init("toy-init:compressor=pool"))
    assert vx.config.vxl_compressor == "pool"
    frames = _frames(vx, n=20, seed=4)
    plan = vx.plan(20, ratio=16)
    question, answer = "What colour is the circle?", "red"
    with torch.no_grad():
        logits = turn_logits(vx, vx.encode_memory(frames, plan), question, answer_token_ids(vx, answer))
    mem_inf = vx.encode(frames, plan)
    assert mem_inf.kv().shape[3] == len(vx._sink_ids) + 20 * vx.config.tokens_per_frame // 16
    assert (logits[0] - vx.next_token_logits(mem_inf, question)).abs().max().item() <= 1e-5
    turns = [Turn(question, answer)]
    grads = []
    for ckpt in (False, True):
        vx.model.zero_grad(set_to_none=True)
        loss, _, _ = sample_loss(vx, frames, plan, turns, checkpoint_windows=ckpt)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in vx.model.named_parameters() if p.grad is not None})
    assert any(".vision_tower." in n and g.abs().sum() > 0 for n, g in grads[0].items())
    assert not any("beacon_" in n and g.abs().sum() > 0 for n, g in grads[0].items())
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-6, rtol=1e-4, msg=n)


def test_curriculum_follows_schedule_and_seed():
    cur = Curriculum.parse("0:2,4;5:2,4,8,12,16", seed=7)
    assert cur.ratios_at(0) == (2, 4) and cur.ratios_at(4) == (2, 4) and cur.ratios_at(5) == (2, 4, 8, 12, 16)
    geom = dict(tokens_per_frame=16, window_tokens=128)
    early = [w.ratio for s in range(5) for i in range(8) for w in cur.fixed_plan(80, s, i, **geom).windows]
    late = [w.ratio for s in range(5, 10) for i in range(8) for w in cur.fixed_plan(80, s, i, **geom).windows]
    assert set(early) == {2, 4}
    assert set(late) == {2, 4, 8, 12, 16}  # 400 windows: every ratio drawn
    # a new ratio per window (step-random), reproducible from the seed, different for another seed
    one = [w.ratio for w in cur.fixed_plan(80, 6, 3, **geom).windows]
    assert len(set(one)) > 1
    assert one == [w.ratio for w in Curriculum.parse("0:2,4;5:2,4,8,12,16", seed=7).fixed_plan(80, 6, 3, **geom).windows]
    others = [[w.ratio for w in Curriculum.parse("0:2,4;5:2,4,8,12,16", seed=s).fixed_plan(80, 6, 3, **geom).windows]
              for s in range(8, 12)]
    assert any(o != one for o in others)
    # the draw is uniform over the set: chi-square against uniform over 400 windows (p > 1e-4)
    counts = np.array([late.count(r) for r in (2, 4, 8, 12, 16)])
    chi2 = float(((counts - len(late) / 5) ** 2 / (len(late) / 5)).sum())
    assert chi2 < 23.5  # chi-square, 4 degrees of freedom, p = 1e-4
    with pytest.raises(ValueError, match="STEP:R1"):
        Curriculum.parse("0:2,x")
    with pytest.raises(ValueError, match="start at step 0"):
        Curriculum.parse("5:2,4")


@pytest.mark.timeout(400)
def test_loss_decreases_and_the_run_writes_a_loadable_checkpoint(tmp_path):
    from model.video_xl import load_model

    cfg = TrainConfig(out=str(tmp_path / "run"), data=["toy:4:7"], steps=20, batch_size=2, lr=3e-3, warmup_steps=2,
                      max_frames=12, questions_per_sample=2, question_types=["bg_start", "scene_count"],
                      checkpoint_every=0, curriculum="0:4")
    items = prepare_data(cfg)
    res = train_loop(cfg, items=items)
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 20
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4]), losses
    final = tmp_path / "run" / "final"
    vx = load_model(final, device="cpu")
    cfg_json = json.loads((final / "config.json").read_text())
    assert cfg_json["beacon_ratio"] == [4] and cfg_json["beacon_ratio_mix"] == "step-random"
    assert cfg_json["vxl_training"]["config"]["steps"] == 20
    # Video-XL's layout: the original code's config keys and tokenizer files (tests/data/oracle)
    oracle = Path(__file__).parent / "data" / "oracle" / "checkpoint"
    missing = set(json.loads((oracle / "config.json").read_text())) - set(cfg_json)
    assert not missing, f"config.json lacks the original's keys {sorted(missing)}"
    assert "rope_parameters" not in cfg_json and cfg_json["rope_theta"] == vx.config.rope_parameters["rope_theta"]
    files = {p.name for p in oracle.iterdir() if p.is_file() and not p.name.endswith(".safetensors")}
    assert files - {"model.safetensors.index.json"} <= {p.name for p in final.iterdir()}
    # the loaded model computes what the trained one computed
    frames = _frames(vx, n=12, seed=4)
    plan = vx.plan(12, ratio=4)
    trained = fresh_toy_model(seed=0)
    from model.checkpoint import read_safetensors, to_module_keys

    trained.model.load_state_dict(to_module_keys(read_safetensors(final)), strict=True)
    trained.model.eval()
    q = "How many scenes does the video have?"
    torch.testing.assert_close(vx.next_token_logits(vx.encode(frames, plan), q),
                               trained.next_token_logits(trained.encode(frames, plan), q), atol=0, rtol=0)


@pytest.mark.timeout(300)
def test_llava_and_truth_folder_sources(tmp_path):
    from tasks.samples import make_toy_videos
    from tasks.train import TrainError, sample_turns

    vids = make_toy_videos(tmp_path / "v", [41, 42], width=160, height=120, fps=8, scene_s=(2.0, 3.0))
    llava = tmp_path / "vico.json"
    llava.write_text(json.dumps([{"id": "s1", "video": f"v/{vids[0].name}", "conversations": [
        {"from": "human", "value": "<image>\nWhat happens first?"}, {"from": "gpt", "value": "a cut"},
        {"from": "human", "value": "And then?"}, {"from": "gpt", "value": "a circle"}]}]))
    cfg = TrainConfig(out=str(tmp_path / "run"), data=[str(llava), str(tmp_path / "v")], steps=1, batch_size=3,
                      max_frames=8, questions_per_sample=2, checkpoint_every=0, curriculum="0:8")
    items = prepare_data(cfg)
    assert len(items) == 3
    by_source = {i.source: i for i in items}
    llava_item = by_source[f"{llava}#s1"]
    assert [(t.question, t.answer) for t in sample_turns(llava_item, 0, 0, cfg)] == [
        ("What happens first?", "a cut"), ("And then?", "a circle")]
    frames = np.load(llava_item.frames)
    assert frames.shape[1:] == (64, 64, 3) and 1 <= frames.shape[0] <= 8
    truth_items = [i for i in items if i.truth is not None]
    assert len(truth_items) == 2 and all(len(sample_turns(i, 0, 1, cfg)) == 2 for i in truth_items)
    res = train_loop(cfg, items=items)
    assert len(res["history"]) == 1 and np.isfinite(res["history"][0]["loss"])
    # a malformed LLaVA entry is named
    llava.write_text(json.dumps([{"id": "bad", "video": "x.mp4", "conversations": [{"from": "gpt", "value": "a"}]}]))
    with pytest.raises(TrainError, match="'bad'"):
        prepare_data(TrainConfig(out=str(tmp_path / "run2"), data=[str(llava)]))


@pytest.mark.timeout(120)
def test_frame_labels_match_the_rendered_pixels():
    """`frame_labels` (from the events) against the frames themselves: a frame shows an object iff it
    has pixels of exactly one `COLORS` colour, that colour is the label, and the corner pixel has the
    labelled background's colour. Toy videos (appear/move/disappear) and sample videos
    (recolor/reshape too)."""
    from tasks.samples import (
        BACKGROUNDS,
        COLORS,
        POSITIONS,
        frame_labels,
        plan_sample_video,
        plan_toy_video,
        render_frames,
    )
    from tasks.video import sample_indices

    plans = [plan_toy_video(s, width=160, height=120, fps=8) for s in (11, 12, 13)]
    plans += [plan_sample_video(seconds=30.0, seed=s, width=160, height=120, fps=8) for s in (1, 2)]
    kinds = {e["kind"] for p in plans for e in p["events"]}
    assert kinds == {"cut", "appear", "move", "disappear", "recolor", "reshape"}
    seen = set()
    for plan in plans:
        idx = sample_indices(plan["num_frames"], plan["fps"], fps=2.0, max_frames=128)
        labels = frame_labels(plan, idx)
        for i, frame in enumerate(render_frames(plan, only=idx)):
            shown = [n for n, rgb in COLORS.items() if (frame == np.array(rgb, dtype=np.uint8)).all(-1).any()]
            assert labels["object_present"][i] == len(shown), (plan["seed"], int(idx[i]), shown)
            if shown:
                assert list(COLORS)[labels["object_color"][i]] == shown[0]
                # the object's pixel centroid is nearest the labelled grid position's centre
                ys, xs = np.nonzero((frame == np.array(COLORS[shown[0]], dtype=np.uint8)).all(-1))
                h, w = frame.shape[:2]
                nearest = min(POSITIONS, key=lambda n: (POSITIONS[n][0] * w - xs.mean()) ** 2
                              + (POSITIONS[n][1] * h - ys.mean()) ** 2)
                if labels["object_position"][i] >= 0:  # -1 while a move glides
                    assert list(POSITIONS)[labels["object_position"][i]] == nearest, (plan["seed"], int(idx[i]))
                    seen.add("position")
                seen.add("object")
            else:
                assert labels["object_color"][i] == labels["object_shape"][i] == labels["object_position"][i] == -1
            assert tuple(frame[0, 0]) == BACKGROUNDS[list(BACKGROUNDS)[labels["background"][i]]]
    assert seen == {"object", "position"}
    with pytest.raises(ValueError, match="frame indices"):
        frame_labels(plans[0], [plans[0]["num_frames"]])


@pytest.mark.timeout(300)
def test_frames_objective_trains_only_the_vision_side_and_resumes(tmp_path):
    """`--objective frames`: the frame-label loss falls, only vision tower and projector change (the
    LLM and VST parameters stay bit-identical), the head is in the checkpoint's trainer state, and a
    run stopped at a checkpoint continues with the same losses as an uninterrupted run."""
    from model.checkpoint import read_safetensors, to_module_keys
    from tasks.train import TrainError

    def cfg_for(name, steps):
        return TrainConfig(out=str(tmp_path / name), data=["toy:6:9"], steps=steps, batch_size=2, lr=3e-3,
                           warmup_steps=2, max_frames=16, checkpoint_every=10, keep_checkpoints=5,
                           objective="frames", cache_dir=str(tmp_path / "cache"))

    full = cfg_for("full", 30)
    items = prepare_data(full)
    res = train_loop(full, items=items)
    losses = [h["loss"] for h in res["history"]]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses  # measured 0.62
    before = fresh_toy_model(seed=0).model.state_dict()
    after = to_module_keys(read_safetensors(tmp_path / "full" / "final"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.vision_tower.", "model.mm_projector.")) for k in changed), changed
    assert any(k.startswith("model.mm_projector.") for k in changed)
    state = torch.load(tmp_path / "full" / "checkpoints" / "step_000030" / "trainer_state.pt", weights_only=False)
    assert state["head"]["weight"].shape[0] == 8 + 2 + 8 + 4 + 9
    # interrupted right after the checkpoint at step 10, then rerun: it resumes there
    class Stop(Exception):
        pass

    def stop_at_10(m):
        if m["step"] == 10:
            raise Stop

    with pytest.raises(Stop):
        train_loop(cfg_for("part", 30), items=items, on_step=stop_at_10)
    resumed = train_loop(cfg_for("part", 30), items=items)
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], losses, rtol=1e-5)
    # LLaVA samples have no ground truth to label frames with
    from tasks.train import Item

    with pytest.raises(TrainError, match="ground-truth"):
        train_loop(cfg_for("llava", 1), items=[Item(key="x", frames=items[0].frames, source="vico.json#1",
                                                     truth=None, turns=[["q", "a"]])])
    with pytest.raises(TrainError, match="--objective"):
        TrainConfig(out=str(tmp_path / "x"), objective="pixels").validate()
    with pytest.raises(TrainError, match="--loss-weighting"):
        TrainConfig(out=str(tmp_path / "x"), loss_weighting="sample").validate()
    with pytest.raises(TrainError, match="--frame-pool"):
        TrainConfig(out=str(tmp_path / "x"), objective="frames", frame_pool="mean").validate()


@pytest.mark.timeout(120)
def test_frame_label_loss_per_token_against_an_independent_cross_entropy():
    """`frame_label_loss(pool="token")`: every visual token predicts its frame's labels. Against the
    cross-entropy written out in numpy over `vision_features` (each token of frame f labelled with
    f's labels; -1 labels skipped; one mean per group, summed); `pool="max"` against the same over
    the per-frame max of the tokens."""
    from model.training import frame_label_loss
    from tasks.samples import FRAME_LABELS, frame_labels, plan_toy_video, render_frames
    from tasks.video import sample_indices

    vx = fresh_toy_model(seed=3)
    plan = plan_toy_video(21, width=160, height=120, fps=8)
    idx = sample_indices(plan["num_frames"], plan["fps"], fps=1.0, max_frames=12)
    frames = np.stack(list(render_frames(plan, only=idx)))
    labels = frame_labels(plan, idx)
    assert (labels["object_color"] >= 0).any() and (labels["object_color"] < 0).any()  # both kinds of frame
    head = torch.nn.Linear(vx.config.hidden_size, sum(FRAME_LABELS.values()))
    torch.nn.init.normal_(head.weight, std=0.5)
    with torch.no_grad():
        feats = vx.vision_features(frames).double().numpy()  # (F * N, C)
        w, b = head.weight.double().numpy(), head.bias.double().numpy()
        got = {pool: float(frame_label_loss(vx, frames, {k: torch.from_numpy(v) for k, v in labels.items()},
                                            head, FRAME_LABELS, pool)) for pool in ("token", "max")}
    f = len(idx)
    per_frame = feats.reshape(f, -1, feats.shape[-1])
    for pool, x, y_of in (("token", feats, lambda y: np.repeat(y, per_frame.shape[1])),
                          ("max", per_frame.max(axis=1), lambda y: y)):
        logits = x @ w.T + b
        want, start = 0.0, 0
        for name, k in FRAME_LABELS.items():
            z = logits[:, start : start + k]
            logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
            y = y_of(labels[name])
            keep = y >= 0
            want += -logp[keep, y[keep]].mean()
            start += k
        assert got[pool] == pytest.approx(want, rel=1e-5), pool
    assert got["token"] != pytest.approx(got["max"], rel=1e-3)
    with pytest.raises(ValueError, match="pool"):
        frame_label_loss(vx, frames, {k: torch.from_numpy(v) for k, v in labels.items()}, head, FRAME_LABELS, "mean")


def test_toy_source_parameters_narrow_the_family(tmp_path):
    """`toy:COUNT:SEED:scenes=N:seconds=A-B` trains on `plan_toy_video(seed, num_scenes=N,
    scene_s=(A, B))` videos (the short videos of stage 3): the items' truths and cached frame counts
    are those of that plan, in a cache entry of their own; malformed sources are usage errors."""
    from tasks.samples import plan_toy_video
    from tasks.train import TrainError, parse_toy_source
    from tasks.video import sample_indices

    assert parse_toy_source("toy:5") == (5, 0, {}, "")
    assert parse_toy_source("toy:5:3:scenes=2:seconds=2-4") == (
        5, 3, {"num_scenes": 2, "scene_s": (2.0, 4.0)}, "-scenes2-s2to4")
    assert parse_toy_source("toy:5:seconds=2.5-6") == (5, 0, {"scene_s": (2.5, 6.0)}, "-s2.5to6")
    for bad in ("toy:x", "toy:5:3:scene=2", "toy:5:3:seconds=4", "toy:0", "toy:5:3:scenes=2:scenes=3",
                "toy:5:3:scenes=99"):
        with pytest.raises(TrainError) as err:
            parse_toy_source(bad)
        assert err.value.kind == "usage" and bad in str(err.value)
    with pytest.raises(TrainError, match="scenes=N"):
        TrainConfig(out=str(tmp_path / "bad"), data=["toy:4:1:scene=2"]).validate()

    cfg = TrainConfig(out=str(tmp_path / "run"), data=["toy:3:4:scenes=2:seconds=2-4", "toy:1:4"])
    items = prepare_data(cfg)
    assert [i.key for i in items] == ["toy-4000000-scenes2-s2to4", "toy-4000001-scenes2-s2to4",
                                      "toy-4000002-scenes2-s2to4", "toy-4000000"]
    for n, item in enumerate(items[:3]):
        truth = plan_toy_video(4_000_000 + n, num_scenes=2, scene_s=(2.0, 4.0))
        assert item.truth == truth and len(truth["scenes"]) == 2
        assert all(2.0 <= s["end_s"] - s["start_s"] <= 4.0 for s in truth["scenes"])
        assert np.load(item.frames).shape[0] == len(sample_indices(truth["num_frames"], truth["fps"], fps=1.0,
                                                                   max_frames=128))
    assert items[3].truth == plan_toy_video(4_000_000)  # the same seed without parameters: the whole family


def test_runs_with_other_data_share_a_frame_cache_without_overwriting_each_others_items(tmp_path):
    """Two runs on one `--cache-dir` (the ablation scripts share one): the second decodes only its
    new videos, and each run's item list stays its own (a run that reloads its items, as a
    restarted worker does, gets its data, not the other run's)."""
    from tasks.train import manifest_path

    cache = str(tmp_path / "cache")
    small = TrainConfig(out=str(tmp_path / "a"), data=["toy:2:6"], cache_dir=cache)
    big = TrainConfig(out=str(tmp_path / "b"), data=["toy:3:6"], cache_dir=cache)
    first = prepare_data(small)
    mtimes = {i.key: Path(i.frames).stat().st_mtime_ns for i in first}
    second = prepare_data(big)
    assert [i.key for i in second] == ["toy-6000000", "toy-6000001", "toy-6000002"]
    assert all(Path(i.frames).stat().st_mtime_ns == mtimes[i.key] for i in second[:2])  # not decoded again
    crop = fresh_toy_model().config.image_processor["crop_size"]
    assert manifest_path(small, crop) != manifest_path(big, crop)
    assert [i["key"] for i in json.loads(manifest_path(small, crop).read_text())] == ["toy-6000000", "toy-6000001"]
    assert len(json.loads(manifest_path(big, crop).read_text())) == 3

    # two runs preparing the same new videos at the same time (two trainings started together): each
    # writes its own temporary file before the rename (a shared name made the second rename fail)
    from concurrent.futures import ThreadPoolExecutor

    from tasks.train import _partial_name

    target = Path(cache) / "x.npy"
    names = {_partial_name(target) for _ in range(2)}
    assert len(names) == 2 and all(n.parent == target.parent and n.suffix == ".npy" for n in names)

    both = [TrainConfig(out=str(tmp_path / name), data=["toy:2:7"], cache_dir=cache) for name in ("c", "d")]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(prepare_data, both))
    assert [i.key for i in results[0]] == [i.key for i in results[1]] == ["toy-7000000", "toy-7000001"]
    assert all(np.load(i.frames).shape[0] > 0 for i in results[0])
    assert not list(Path(cache).glob("*partial*"))  # no temporary file left behind


def test_a_toy_source_can_name_its_own_question_types():
    """`toy:...:types=object_color,object_shape` asks that source's videos only object questions
    (the issue's phrasings), with the right answers, while the other sources keep the run's types;
    the videos and their cache key do not change; unknown types are usage errors."""
    from tasks.samples import plan_toy_video
    from tasks.train import Item, TrainError, parse_toy_source, sample_turns, toy_source_types

    typed = "toy:4:1:scenes=2:seconds=2-4:types=object_color,object_shape"
    assert parse_toy_source(typed) == parse_toy_source("toy:4:1:scenes=2:seconds=2-4")
    assert toy_source_types(typed) == ("object_color", "object_shape") and toy_source_types("toy:4:1") is None
    for bad in ("toy:4:1:types=colour", "toy:4:1:types=", "toy:4:1:types=bg_end:types=bg_start"):
        with pytest.raises(TrainError) as err:
            parse_toy_source(bad)
        assert err.value.kind == "usage" and bad in str(err.value)

    cfg = TrainConfig(out="unused", questions_per_sample=8)
    truth = plan_toy_video(1_000_000, num_scenes=2, scene_s=(2.0, 4.0))
    obj = next(e for e in truth["events"] if e["kind"] == "appear")  # the object, as the video shows it
    short = Item(key="a", frames="", source=typed, truth=truth)
    whole = Item(key="b", frames="", source="toy:4:1", truth=truth)
    for step in range(5):
        turns = sample_turns(short, step, 0, cfg)
        assert sorted(t.question for t in turns) == [f"What colour is the {obj['shape']}?",
                                                     "What shape appears in the video?"]
        assert {t.question: t.answer for t in turns}["What shape appears in the video?"] == obj["shape"]
        assert {t.question: t.answer for t in turns}[f"What colour is the {obj['shape']}?"] == obj["color"]
    asked = {t.question for step in range(5) for t in sample_turns(whole, step, 0, cfg)}
    assert any(q.startswith("How many scenes") for q in asked) and any(q.startswith("What is the backgr") for q in asked)


def test_videos_that_cannot_pose_their_question_types_are_left_out_with_a_word(tmp_path, caplog):
    """A video that can pose none of its source's question types (event order needs 3 events; a
    2-scene video often has 2) is left out at preparation, with a warning naming the source, the
    count and the seeds (it used to stop the training at its first step with "a training sample
    needs at least one question/answer turn"); a source none of whose videos can is a data error;
    the frame objective asks no questions, so it keeps every video."""
    from tasks.samples import plan_toy_video
    from tasks.train import TrainError

    kw = {"num_scenes": 2, "scene_s": (2.0, 8.0)}
    few = [s for s in range(5_000_000, 5_000_004) if len(plan_toy_video(s, **kw)["events"]) < 3]
    assert few == [5_000_000, 5_000_001, 5_000_002]  # seed 5,000,003 has 3 events or more
    src = "toy:4:5:scenes=2:seconds=2-8:types=event_order"
    with caplog.at_level("WARNING", logger="tasks.train"):
        items = prepare_data(TrainConfig(out=str(tmp_path / "a"), data=[src], cache_dir=str(tmp_path / "c")))
    assert [i.key for i in items] == ["toy-5000003-scenes2-s2to8"]
    assert any(src in r.getMessage() and "3 of 4 videos" in r.getMessage() and "5000000, 5000001, 5000002"
               in r.getMessage() for r in caplog.records)
    with pytest.raises(TrainError) as err:
        prepare_data(TrainConfig(out=str(tmp_path / "b"), data=["toy:3:5:scenes=2:seconds=2-8:types=event_order"],
                                 cache_dir=str(tmp_path / "c")))
    assert err.value.kind == "data" and "none of its 3 videos" in str(err.value)
    frames_cfg = TrainConfig(out=str(tmp_path / "f"), data=[src], objective="frames", cache_dir=str(tmp_path / "c"))
    assert len(prepare_data(frames_cfg)) == 4


def test_init_vision_puts_a_pretrained_tower_under_a_fresh_llm(tmp_path):
    """`init_vision`: the vision tower and projector come from the given checkpoint, every other
    tensor (LLM, VSTs) is the fresh seeded model's, and the fingerprint follows the new weights; a
    checkpoint of another architecture or a folder without weights is refused by name."""
    from model.training import part_of
    from tasks.train import TrainError, load_for_training

    donor = fresh_toy_model(seed=5)
    donor.save_pretrained(tmp_path / "donor")
    fresh = fresh_toy_model(seed=0)
    vx = load_for_training(TrainConfig(out=str(tmp_path / "run"), init_vision=str(tmp_path / "donor")))
    got, want_llm, want_vis = vx.model.state_dict(), fresh.model.state_dict(), donor.model.state_dict()
    parts = {part_of(k) for k in got}
    assert {"vision", "projector", "llm", "vst"} <= parts
    for k, v in got.items():
        ref = want_vis[k] if part_of(k) in ("vision", "projector") else want_llm[k]
        assert torch.equal(v, ref), k
    proj = next(k for k in got if part_of(k) == "projector")
    assert not torch.equal(want_vis[proj], want_llm[proj])  # the two seeds differ: the test can fail
    assert vx.fingerprint not in (fresh.fingerprint, donor.fingerprint)

    other = fresh_toy_model(seed=0, image_size=32)
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "empty").mkdir()
    for folder, match in ((tmp_path / "other", "of another shape"), (tmp_path / "empty", "--init-vision")):
        with pytest.raises(TrainError, match=match) as err:
            load_for_training(TrainConfig(out=str(tmp_path / "run"), init_vision=str(folder)))
        assert err.value.kind == "model" and str(folder) in str(err.value)
    with pytest.raises(TrainError, match="--init-vision"):
        TrainConfig(out=str(tmp_path / "x"), init_vision=str(tmp_path / "missing")).validate()


def test_the_describe_caption_tells_what_the_frames_show_in_order():
    """`describe` (a training-only question type): read back from the caption, the backgrounds in
    order and the object's colour and shape equal what the rendered frames show, read from every
    frame's pixels (not from the truth's scenes); the scene count is the number of those backgrounds.
    `describe` is accepted by `--question-types` and `types=`, and is not among the scored types."""
    import re

    from tasks.qa import DESCRIBE_QUESTION, QUESTION_TYPES, TRAINING_TYPES, make_question
    from tasks.samples import BACKGROUNDS, COLORS, SHAPES, plan_toy_video, render_frames
    from tasks.train import Item, parse_toy_source, sample_turns, toy_source_types

    assert "describe" in TRAINING_TYPES and "describe" not in QUESTION_TYPES
    by_rgb = {tuple(rgb): name for name, rgb in BACKGROUNDS.items()}
    for seed in (21, 22, 23, 24):
        plan = plan_toy_video(seed, width=160, height=120, fps=8)
        shown, colours = [], set()
        for frame in render_frames(plan):
            bg = by_rgb[tuple(int(v) for v in frame[0, 0])]
            if not shown or shown[-1] != bg:
                shown.append(bg)
            colours |= {n for n, rgb in COLORS.items() if (frame == np.array(rgb, dtype=np.uint8)).all(-1).any()}
        qa = make_question(plan, "describe", np.random.default_rng(0))
        text = qa.answer
        assert qa.question == DESCRIBE_QUESTION and qa.options == (text,)
        start = re.match(r"It starts on an? ([a-z ]+?) background\.", text).group(1)
        cuts = re.findall(r"The scene cuts from an? ([a-z ]+?) background to an? ([a-z ]+?) one\.", text)
        read = [start] + [b for _, b in cuts]
        assert all(a == read[i] for i, (a, _) in enumerate(cuts)), text  # the cuts chain up
        assert read == shown, (seed, text)
        assert re.search(r"It ends on an? ([a-z ]+?) background\.", text).group(1) == shown[-1]
        assert text.endswith(f"It has {len(shown)} scenes.")
        appear = re.search(r"An? ([a-z ]+) (" + "|".join(SHAPES) + r") appears", text)
        assert {appear.group(1)} == colours and appear.group(2) == plan["object"]["shape"], (seed, text)

    cfg = TrainConfig(out="unused", question_types=["describe", "bg_end"], questions_per_sample=2)
    truth = plan_toy_video(1_000_000)
    turns = sample_turns(Item(key="a", frames="", source="toy:4:1", truth=truth), 0, 0, cfg)
    assert sorted(t.question for t in turns) == sorted([DESCRIBE_QUESTION, "What is the background colour at the end of the video?"])
    assert toy_source_types("toy:4:1:types=describe") == ("describe",)
    assert parse_toy_source("toy:4:1:types=describe") == parse_toy_source("toy:4:1")


def test_event_questions_point_at_the_lines_the_truth_orders():
    """`event_order` and the training-only `event_label` and `event_pair` list 3 events of the truth
    JSON as numbered lines. Read back from the question text: `event_order`'s answer names the lines
    in the truth's time order (by `start_s`), its other options are other orders of the same labels;
    `event_label`'s answer is the number of the line whose text it quotes; `event_pair`'s is the
    earlier of its two lines. All draw the same 3 lines from the same seed."""
    import re

    from tasks.qa import QUESTION_TYPES, TRAINING_TYPES, make_question
    from tasks.samples import plan_toy_video

    assert {"event_label", "event_pair"} <= set(TRAINING_TYPES) - set(QUESTION_TYPES)
    seen = 0
    for seed in range(30, 60):
        truth = plan_toy_video(seed, width=160, height=120, fps=8)
        start = {ev["text"].rstrip(".").lower(): ev["start_s"] for ev in truth["events"]}
        order = make_question(truth, "event_order", np.random.default_rng(seed))
        label = make_question(truth, "event_label", np.random.default_rng(seed))
        if len(truth["events"]) < 3:
            assert order is None and label is None
            continue
        seen += 1
        lines = dict(re.findall(r"^(\d)\. (.+?)\.?$", order.question, flags=re.M))
        assert sorted(lines) == ["1", "2", "3"], order.question
        assert dict(re.findall(r"^(\d)\. (.+?)\.?$", label.question, flags=re.M)) == lines
        times = [start[lines[x].lower()] for x in order.answer.split(", ")]
        assert times == sorted(times), (seed, order)
        assert order.answer in order.options and len(set(order.options)) == len(order.options) > 1
        assert all(sorted(o.split(", ")) == ["1", "2", "3"] for o in order.options)
        quoted = re.search(r'Which number is the event "(.+)"\?', label.question).group(1)
        assert lines[label.answer] == quoted and label.options == ("1", "2", "3"), (seed, label)
        pair = make_question(truth, "event_pair", np.random.default_rng(seed))
        assert dict(re.findall(r"^(\d)\. (.+?)\.?$", pair.question, flags=re.M)) == lines
        a, b = re.search(r"Which happens first: event (\d) or event (\d)\?", pair.question).groups()
        assert pair.options == (a, b) and a != b
        assert pair.answer == min((a, b), key=lambda x: start[lines[x].lower()]), (seed, pair)
    assert seen >= 10

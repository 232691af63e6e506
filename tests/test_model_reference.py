"""Equivalence with independent references: transformers' Qwen2ForCausalLM and CLIPVisionModel with
the same weights, and a slow explicit re-implementation of the VST forward (reference_videoxl.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_videoxl import reference_encode_and_logits
from transformers import CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

from model.memory import VSTMemory

pytestmark = pytest.mark.fidelity

def _frames(n, h=336, w=336, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hf_qwen2(tiny_vx):
    cfg = tiny_vx.config
    qcfg = Qwen2Config(**{k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")},
        rope_theta=cfg.rope_parameters["rope_theta"])
    ref = Qwen2ForCausalLM(qcfg).eval()
    state = {k: v for k, v in tiny_vx.model.state_dict().items()
             if "beacon" not in k and "vision_tower" not in k and "mm_projector" not in k}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    return ref


@torch.no_grad()
def test_decoder_without_video_equals_qwen2(tiny_vx, hf_qwen2):
    """Sink-only memory + question through the VST path == plain Qwen2 on the same token ids."""
    q = "What happens first in the video?"
    sink = tiny_vx.encode(_frames(1), tiny_vx.plan(1)).sink
    memory = VSTMemory(sink=sink, window_kv=[], windows=[], fingerprint=tiny_vx.fingerprint)
    ids = tiny_vx._sink_ids + tiny_vx._question_ids(memory, q, 0)
    ref = hf_qwen2(torch.tensor([ids])).logits[0]  # (T, V)
    ours = tiny_vx.next_token_logits(memory, q)
    assert (ours - ref[-1]).abs().max().item() <= 1e-5

    # the whole text as one pass through our step() also matches at every position
    cache = tiny_vx.model.rotated_cache(tiny_vx._empty_kv())
    all_logits = tiny_vx.model.step(tiny_vx._embed_ids(ids), cache, logits_for_last=len(ids))
    assert (all_logits - ref).abs().max().item() <= 1e-5


@torch.no_grad()
def test_vision_features_equal_clip_reference(tiny_vx):
    frames = _frames(3, seed=1)
    clip = CLIPVisionModel(tiny_vx.config.clip_config).eval()
    prefix = "model.vision_tower.vision_tower."
    state = {k[len(prefix):]: v for k, v in tiny_vx.model.state_dict().items() if k.startswith(prefix)}
    clip.load_state_dict(state, strict=True)
    px = tiny_vx.preprocess(torch.from_numpy(frames))
    hidden = clip(px, output_hidden_states=True).hidden_states[-2][:, 1:]  # (F, 576, 32)
    proj = tiny_vx.model.model.mm_projector
    y = proj[2](torch.nn.functional.gelu(proj[0](hidden)))  # (F, 576, C)
    f, p, c = y.shape
    grid = y.view(f, 12, 2, 12, 2, c).mean(dim=(2, 4))  # 2x2 average pooling, written as a reshape-mean
    ref = grid.reshape(f * 144, c)
    got = tiny_vx.vision_features(frames)
    assert got.shape == (3 * 144, tiny_vx.config.hidden_size)
    assert (got - ref).abs().max().item() < 1e-5


def test_preprocessing_resizes_and_crops_like_clip_processor(tiny_vx):
    """Non-square frames: shortest side to 336 (bicubic), centre crop, CLIP mean/std."""
    from transformers import CLIPImageProcessor

    frames = _frames(2, h=240, w=320, seed=2)
    pre = tiny_vx.config.image_processor
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              image_mean=pre["image_mean"], image_std=pre["image_std"])
    ref = proc(images=list(torch.from_numpy(frames).permute(0, 3, 1, 2)), return_tensors="pt")["pixel_values"]
    got = tiny_vx.preprocess(torch.from_numpy(frames))
    assert got.shape == ref.shape == (2, 3, 336, 336)
    assert (got - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("ratio,num_frames", [(7, 12), (8, 10), (32, 13)])
def test_fast_path_equals_slow_reference(tiny_vx, ratio, num_frames):
    """Carry across windows (ratio 7: 1440 % 7 = 5), exact division, and a ratio above window/frame."""
    frames = _frames(num_frames, seed=ratio)
    q = "Which shape appears first?"
    plan = tiny_vx.plan(frames, ratio=ratio)
    memory = tiny_vx.encode(frames, plan)
    ref_mem, ref_logits = reference_encode_and_logits(tiny_vx, frames, ratio, 10, q)
    kv = memory.kv()
    assert kv.shape[3] == ref_mem[0][0].shape[1]
    for layer, (k, v) in enumerate(ref_mem):
        assert (kv[layer, 0] - k).abs().max().item() < 1e-5
        assert (kv[layer, 1] - v).abs().max().item() < 1e-5
    logits = tiny_vx.next_token_logits(memory, q)
    assert (logits - ref_logits).abs().max().item() < 1e-4


# -- the pooling baseline (issue 13, ablation 1) ---------------------------------------------------


@pytest.fixture(scope="module")
def pool_vx(tiny_vx):
    """The tiny model's weights with `vxl_compressor="pool"`."""
    import copy

    from model.checkpoint import build_from_state, to_checkpoint_keys
    from model.video_xl import VideoXL

    cfg = copy.deepcopy(tiny_vx.config)
    cfg.vxl_compressor = "pool"
    model = build_from_state(cfg, to_checkpoint_keys(tiny_vx.model.state_dict()), torch.float32, torch.device("cpu"))
    return VideoXL(model, tiny_vx.tokenizer, "tiny-pool", tiny_vx._weights_digest)


@torch.no_grad()
def test_pooling_baseline_is_plain_qwen2_over_pooled_tokens(pool_vx, hf_qwen2):
    """With `vxl_compressor="pool"` every window's visual tokens are averaged in groups of `ratio`
    and all of them kept, so the memory plus question is one causal pass of plain Qwen2 over
    [sink, pooled tokens of every window, question]: its last logits are the reference."""
    frames = _frames(13, seed=5)  # two windows: 10 frames (1440 tokens -> 90) and 3 (432 -> 27)
    q = "What colour is the circle?"
    ratio = 16
    memory = pool_vx.encode(frames, pool_vx.plan(frames, ratio=ratio))
    assert [w.num_vst for w in memory.windows] == [90, 27]
    feats = pool_vx.vision_features(frames)  # (13 * 144, C), checked against CLIP above
    pooled = feats.view(-1, ratio, feats.shape[1]).mean(dim=1)  # 1872 / 16 = 117 groups, none across windows
    ids_q = pool_vx._question_ids(memory, q, 0)
    embeds = torch.cat([pool_vx._embed_ids(pool_vx._sink_ids)[0], pooled, pool_vx._embed_ids(ids_q)[0]])
    ref = hf_qwen2(inputs_embeds=embeds.unsqueeze(0)).logits[0, -1]
    got = pool_vx.next_token_logits(memory, q)
    assert (got - ref).abs().max().item() <= 1e-4


def test_pooling_baseline_keeps_as_many_tokens_as_vsts_and_has_its_own_fingerprint(tiny_vx, pool_vx, tmp_path):
    from model import load_model
    from model.video_xl import pool_tokens

    frames = _frames(12, seed=6)
    for ratio in (7, 16):  # 7: a carry across windows
        plan = tiny_vx.plan(frames, ratio=ratio)
        a, b = tiny_vx.encode(frames, plan), pool_vx.encode(frames, plan)
        assert a.kv().shape == b.kv().shape
        assert [w.num_vst for w in a.windows] == [w.num_vst for w in b.windows]
    assert pool_vx.fingerprint != tiny_vx.fingerprint  # same weights, another mechanism
    # groups differ in size by at most one and never cross the window's token order
    x = torch.arange(10.0).unsqueeze(1)
    assert pool_tokens(x, 3).squeeze(1).tolist() == [1.5, 5.0, 8.0]
    with pytest.raises(ValueError, match="cannot pool 10 visual tokens into 11"):
        pool_tokens(x, 11)
    # the key travels with a saved checkpoint; Video-XL's own folders do not get it
    pool_vx.save_pretrained(tmp_path / "pool")
    tiny_vx.save_pretrained(tmp_path / "vst")
    import json

    assert json.loads((tmp_path / "pool" / "config.json").read_text())["vxl_compressor"] == "pool"
    assert "vxl_compressor" not in json.loads((tmp_path / "vst" / "config.json").read_text())
    back = load_model(tmp_path / "pool", device="cpu")
    assert back.config.vxl_compressor == "pool" and back.fingerprint == pool_vx.fingerprint


def test_an_unknown_compressor_is_refused():
    from model.config import tiny_config

    cfg = tiny_config()
    cfg.vxl_compressor = "qformer"
    with pytest.raises(ValueError, match="vxl_compressor='qformer'"):
        cfg.check_supported()

"""An independent, slow reference of Video-XL's VST forward, written for clarity, not speed.

Window by window, with explicit masks, explicit RoPE over `[memory ; window]` at positions
`0 .. M + T - 1`, explicit interleaving by counting visual tokens (not the modulo rule used by
`model.plan.vst_positions`), and plain tensor math for every layer. Shares only the weights with
`model/`. Used by tests/test_model_reference.py.
"""

from __future__ import annotations

import math

import torch


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x: (H, T, D); positions: (T,). The rotate-half RoPE of Qwen2."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = positions.float()[:, None] * inv[None, :]  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def layer_forward(layer, cfg, x, mem_k, mem_v, is_vst):
    """x: (T, C); mem_k/mem_v: (Hkv, M, D) pre-RoPE; is_vst: (T,) bool.

    Returns (x_out (T, C), k (Hkv, T, D) pre-RoPE, v (Hkv, T, D)).
    """
    at = layer.self_attn
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim_
    t, m = x.shape[0], mem_k.shape[1]
    h = rmsnorm(x, layer.input_layernorm.weight, cfg.rms_norm_eps)
    sel = is_vst[:, None]
    q = torch.where(sel, at.beacon_q_proj(h), at.q_proj(h)).view(t, hq, d).transpose(0, 1)
    k = torch.where(sel, at.beacon_k_proj(h), at.k_proj(h)).view(t, hkv, d).transpose(0, 1)
    v = torch.where(sel, at.beacon_v_proj(h), at.v_proj(h)).view(t, hkv, d).transpose(0, 1)
    k_all, v_all = torch.cat([mem_k, k], 1), torch.cat([mem_v, v], 1)  # (Hkv, M+T, D)
    pos = torch.arange(m + t)
    q_rot = rope(q, pos[m:], cfg.rope_parameters["rope_theta"])
    k_rot = rope(k_all, pos, cfg.rope_parameters["rope_theta"])
    rep = hq // hkv
    k_rot, v_rep = k_rot.repeat_interleave(rep, 0), v_all.repeat_interleave(rep, 0)  # (Hq, M+T, D)
    scores = q_rot @ k_rot.transpose(1, 2) / math.sqrt(d)  # (Hq, T, M+T)
    i = torch.arange(t)[:, None]
    j = torch.arange(m + t)[None, :]
    allowed = (j < m) | ((j - m) <= i)  # all memory visible, causal inside the window
    scores = scores.masked_fill(~allowed, float("-inf"))
    attn = torch.softmax(scores, dim=-1) @ v_rep  # (Hq, T, D)
    x = x + at.o_proj(attn.transpose(0, 1).reshape(t, hq * d))
    h2 = rmsnorm(x, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
    mlp = layer.mlp
    x = x + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(h2)) * mlp.up_proj(h2))
    return x, k, v


def forward_window(model, x, memory, is_vst):
    """Run all layers on x (T, C) against memory [(k, v)] per layer; returns (hidden, new K/V per layer)."""
    cfg = model.config
    new = []
    for li, layer in enumerate(model.model.layers):
        mk, mv = memory[li]
        x, k, v = layer_forward(layer, cfg, x, mk, mv, is_vst)
        new.append((k, v))
    return x, new


def interleave(feats: torch.Tensor, ratio: int, carry: int, beacon: torch.Tensor):
    """Insert one VST after every `ratio` visual tokens, counting on from `carry`.

    Returns (sequence (T, C), is_vst (T,), carry_out).
    """
    rows, flags, count = [], [], carry
    for tok in feats:
        rows.append(tok)
        flags.append(False)
        count += 1
        if count == ratio:
            rows.append(beacon)
            flags.append(True)
            count = 0
    return torch.stack(rows), torch.tensor(flags), count


@torch.no_grad()
def reference_encode_and_logits(vx, frames, ratio: int, frames_per_window: int, question: str):
    """Returns (memory K/V per layer [(k (Hkv, M, D), v)], next-token logits (V,) float32)."""
    model = vx.model
    cfg = model.config
    hkv, d = cfg.num_key_value_heads, cfg.head_dim_
    empty = (torch.zeros(hkv, 0, d), torch.zeros(hkv, 0, d))
    memory = [empty for _ in model.model.layers]
    emb = model.model.embed_tokens.weight
    sink_ids = vx._sink_ids
    _, kv = forward_window(model, emb[sink_ids], memory, torch.zeros(len(sink_ids), dtype=torch.bool))
    memory = [(k, v) for k, v in kv]
    feats = vx.vision_features(frames)  # (F*N, C)
    n = cfg.tokens_per_frame
    beacon = model.model.beacon_embed_tokens.weight[0]
    carry = 0
    for s in range(0, frames.shape[0], frames_per_window):
        e = min(s + frames_per_window, frames.shape[0])
        seq, is_vst, carry = interleave(feats[s * n : e * n], ratio, carry, beacon)
        _, kv = forward_window(model, seq, memory, is_vst)
        memory = [(torch.cat([mk, k[:, is_vst]], 1), torch.cat([mv, v[:, is_vst]], 1))
                  for (mk, mv), (k, v) in zip(memory, kv, strict=True)]
    from model.tokenizer import split_prompt

    q_ids = vx._encode_text(split_prompt(question)[1])
    h, _ = forward_window(model, emb[q_ids], memory, torch.zeros(len(q_ids), dtype=torch.bool))
    last = rmsnorm(h[-1:], model.model.norm.weight, cfg.rms_norm_eps)
    return memory, model.lm_head(last)[0].float()

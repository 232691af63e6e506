"""Video-XL modules, composed from transformers' Qwen2 and CLIP.

Shape legend: F frames, P = 576 patches per frame, N = 144 visual tokens per frame, T tokens in
the current pass, M memory tokens, L layers, Hq query heads, Hkv key/value heads, D head dim,
C hidden width.

Only the attention differs from Qwen2 (`VSTAttention`): VST tokens use separate "beacon" q/k/v
projections (with bias), and the pre-RoPE K/V of the tokens that the caller wants to keep are
handed back through a `VSTCapture` passed as a keyword argument, created per call and never
stored on the module. Everything else (decoder layers, MLP, norms, rotary embedding, masks,
attention kernels, caches) is transformers' own code.

Parameter names equal Video-XL checkpoint keys (VIDEO_XL.md section 1):
`model.layers.N.self_attn.beacon_{q,k,v}_proj`, `model.beacon_embed_tokens.weight` ([1, C]),
`model.vision_tower.vision_tower.vision_model.*` (renamed on load, see
`checkpoint.RENAMES`), `model.mm_projector.{0,2}`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Cache, CLIPVisionModel, DynamicCache, Qwen2ForCausalLM, Qwen2Model
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, eager_attention_forward, rotate_half

from .config import VideoXLConfig
from .environment import UpstreamDriftError

#: The keyword under which the installed transformers passes the cache to `Qwen2Model.forward`, its
#: decoder layers and their attention: `past_key_values` up to 5.23, `cache` from 5.24 (ECOSYSTEM.md,
#: 2026-12). An upstream internal: `VideoXLForCausalLM.step` checks after every pass that the cache
#: grew by exactly the tokens fed, and `VSTAttention` refuses a cache under any other name.
CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"

#: Keyword arguments that carry model state (a cache under an older or newer name): if one reaches
#: `VSTAttention` without being consumed, the attention would silently ignore it.
_STATE_KWARGS = ("past_key_value", "layer_past", "past_key_values", "cache")


@dataclass
class VSTCapture:
    """Per-call instructions and output for `VSTAttention`.

    Attributes:
        is_vst: bool `(T,)`, True where the token is a VST (beacon projections are used).
        keep: bool `(T,)`, positions whose pre-RoPE K/V are recorded into `kv`.
        kv: filled per layer with `(k, v)`, each `(1, Hkv, keep.sum(), D)`, pre-RoPE.
    """

    is_vst: torch.Tensor | None
    keep: torch.Tensor
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x` `(1, H, T, D)` with `cos`, `sin` `(1, T, D)` (transformers' formula)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


class VSTAttention(Qwen2Attention):
    """Qwen2 attention plus Video-XL's beacon projections for VST tokens.

    Differs from `Qwen2Attention` only in the q/k/v projections (VST rows use `beacon_*_proj`) and in
    recording pre-RoPE K/V into a `VSTCapture` when one is passed as `vst_capture=`.
    """

    def __init__(self, config: VideoXLConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.beacon_q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=True)
        self.beacon_k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=True)
        self.beacon_v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=True)

    def _project(self, proj: nn.Linear, beacon: nn.Linear, x: torch.Tensor, is_vst: torch.Tensor | None):
        if is_vst is None or not bool(is_vst.any()):
            return proj(x)
        out = x.new_empty(*x.shape[:-1], proj.out_features)  # (1, T, H*D)
        out[:, ~is_vst] = proj(x[:, ~is_vst])
        out[:, is_vst] = beacon(x[:, is_vst])
        return out

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        cache: Cache | None = None,
        vst_capture: VSTCapture | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`Qwen2Attention.forward` with VST projections; the cache is accepted under either name.

        Raises:
            UpstreamDriftError: two different caches, or a keyword argument that carries model state
                (a `Cache`, or a known cache name) that this attention would not use.
        """
        if past_key_values is not None and cache is not None and past_key_values is not cache:
            raise UpstreamDriftError("transformers", "the attention got two different caches (`past_key_values` "
                                     "and `cache`)")
        past_key_values = cache if cache is not None else past_key_values
        _refuse_state_kwargs(kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        is_vst = vst_capture.is_vst if vst_capture is not None else None

        q = self._project(self.q_proj, self.beacon_q_proj, hidden_states, is_vst)
        k = self._project(self.k_proj, self.beacon_k_proj, hidden_states, is_vst)
        v = self._project(self.v_proj, self.beacon_v_proj, hidden_states, is_vst)
        q = q.view(hidden_shape).transpose(1, 2)  # (1, Hq, T, D)
        k = k.view(hidden_shape).transpose(1, 2)  # (1, Hkv, T, D)
        v = v.view(hidden_shape).transpose(1, 2)  # (1, Hkv, T, D)

        if vst_capture is not None:  # pre-RoPE: what Video-XL caches
            keep = vst_capture.keep
            vst_capture.kv[self.layer_idx] = (k[:, :, keep], v[:, :, keep])

        cos, sin = position_embeddings
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (1, Hkv, M + T, D)

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                                 sliding_window=getattr(self, "sliding_window", None), **kwargs)
        out = out.reshape(*input_shape, -1).contiguous()  # (1, T, Hq*D)
        return self.o_proj(out), weights


def _refuse_state_kwargs(kwargs: dict) -> None:
    """Raise UpstreamDriftError when `kwargs` holds model state the attention does not consume."""
    for name, value in kwargs.items():
        if isinstance(value, Cache) or (name in _STATE_KWARGS and value is not None):
            raise UpstreamDriftError(
                "transformers", f"the decoder passed model state as `{name}=` ({type(value).__name__}), which "
                "VSTAttention does not consume: the memory would be ignored")


class VisionTower(nn.Module):
    """Holds `CLIPVisionModel` under the attribute name the checkpoint uses (`vision_tower`)."""

    def __init__(self, config: VideoXLConfig):
        super().__init__()
        self.vision_tower = CLIPVisionModel(config.clip_config)


class VideoXLModel(Qwen2Model):
    """Qwen2 decoder + beacon embedding + CLIP vision tower + `mlp2x_gelu` projector."""

    config_class = VideoXLConfig

    def __init__(self, config: VideoXLConfig):
        super().__init__(config)
        for i, layer in enumerate(self.layers):
            layer.self_attn = VSTAttention(config, i)
        self.beacon_embed_tokens = nn.Embedding(1, config.hidden_size)  # the single VST input embedding
        self.vision_tower = VisionTower(config)
        self.mm_projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )


class VideoXLForCausalLM(Qwen2ForCausalLM):
    """`model` (VideoXLModel) + `lm_head`: the checkpoint's `LlavaQwenForCausalLM` layout."""

    config_class = VideoXLConfig

    def __init__(self, config: VideoXLConfig):
        super().__init__(config)
        self.model = VideoXLModel(config)

    # -- vision -----------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP layer `mm_vision_select_layer` (CLS dropped) -> projector -> 2x2 average pooling.

        Args:
            pixel_values: `(F, 3, S, S)` normalised, in the model's dtype.
        Returns:
            `(F, N, C)` visual tokens, N = (S / patch / stride)^2 (144 for Video-XL).
        """
        cfg = self.config
        out = self.model.vision_tower.vision_tower(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[cfg.mm_vision_select_layer][:, 1:]  # (F, P, C_clip)
        feats = self.model.mm_projector(feats)  # (F, P, C)
        f, p, c = feats.shape
        side = cfg.patches_per_side
        grid = feats.view(f, side, side, c).permute(0, 3, 1, 2)  # (F, C, 24, 24)
        pooled = nn.functional.avg_pool2d(grid, cfg.mm_spatial_pool_stride)  # (F, C, 12, 12)
        return pooled.permute(0, 2, 3, 1).reshape(f, -1, c)  # (F, N, C)

    # -- one pass of the decoder against a memory -------------------------------------------------
    def step(
        self,
        inputs_embeds: torch.Tensor,
        cache: DynamicCache,
        capture: VSTCapture | None = None,
        logits_for_last: int = 0,
    ) -> torch.Tensor | None:
        """Run `inputs_embeds` `(1, T, C)` after the `M` tokens already in `cache` (rotated K/V).

        Positions are `M .. M + T - 1`; the mask is plain causal with all memory visible (Video-XL's
        "full-coverage"). `cache` grows by T tokens. Returns float32 logits `(logits_for_last, V)`
        for the last positions, or None when `logits_for_last == 0`.

        Raises:
            UpstreamDriftError: the pass did not grow every layer of the cache by exactly T tokens, or
                `capture` did not record every layer (`check_pass`).
        """
        m = cache.get_seq_length()
        t = inputs_embeds.shape[1]
        position_ids = torch.arange(m, m + t, device=inputs_embeds.device).unsqueeze(0)  # (1, T)
        out = self.model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            use_cache=True,
            vst_capture=capture,
            **{CACHE_KWARG: cache},
        )
        check_pass(self.config, cache, m, t, capture)
        if not logits_for_last:
            return None
        h = out.last_hidden_state[:, -logits_for_last:]  # (1, n, C)
        return self.lm_head(h)[0].float()  # (n, V)

    def rotated_cache(self, kv: torch.Tensor) -> DynamicCache:
        """A cache holding a memory `(L, 2, Hkv, M, D)` (pre-RoPE) rotated at positions `0 .. M-1`."""
        cache = DynamicCache(config=self.config)
        append_rotated(self, cache, kv, start=0)
        return cache


def check_pass(config: VideoXLConfig, cache: DynamicCache, before: int, fed: int,
               capture: VSTCapture | None) -> None:
    """Invariants after one decoder pass (where vxl relies on transformers internals).

    Every layer of `cache` holds exactly `before + fed` tokens (the attention used the cache it was
    given), and `capture`, if any, recorded every layer with `keep.sum()` tokens (the capture keyword
    reached every attention).

    Raises:
        UpstreamDriftError: naming the installed transformers version.
    """
    layers = config.num_hidden_layers
    lengths = [cache.get_seq_length(i) for i in range(layers)]
    if lengths != [before + fed] * layers:
        raise UpstreamDriftError(
            "transformers", f"a decoder pass fed {fed} tokens after {before} cached ones, but the cache now holds "
            f"{lengths} tokens per layer (expected {before + fed}): the attention did not use the memory")
    if capture is not None:
        want = int(capture.keep.sum())
        got = {i: int(kv[0].shape[2]) for i, kv in capture.kv.items()}
        if got != dict.fromkeys(range(layers), want):
            raise UpstreamDriftError(
                "transformers", f"the VST capture recorded layers {sorted(got)} with {sorted(set(got.values()))} "
                f"tokens; expected all {layers} layers with {want}: the capture did not reach every attention")


def append_rotated(model: VideoXLForCausalLM, cache: DynamicCache, kv: torch.Tensor, start: int) -> None:
    """Append pre-RoPE `kv` `(L, 2, Hkv, T, D)` to `cache`, keys rotated at positions `start ..`."""
    t = kv.shape[3]
    pos = torch.arange(start, start + t, device=kv.device).unsqueeze(0)  # (1, T)
    cos, sin = model.model.rotary_emb(kv, pos)  # (1, T, D), dtype of kv
    for layer in range(kv.shape[0]):
        k = apply_rope(kv[layer, 0].unsqueeze(0), cos, sin)  # (1, Hkv, T, D)
        cache.update(k, kv[layer, 1].unsqueeze(0), layer)


def truncate_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` tokens of every layer of `cache`."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # transformers 5: a negative value removes that many tokens

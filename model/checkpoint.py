"""Building Video-XL modules: from a local checkpoint folder, or the deterministic `tiny` weights.

Checkpoint layout (Video-XL / HF `sy1998/Video_XL`): `config.json`, sharded `*.safetensors` with
`model.safetensors.index.json` (or one `model.safetensors`), tokenizer files. Loading is a
shape-checked name match: parameter names equal checkpoint keys. As in Video-XL, missing
`beacon_{q,k,v}_proj` are initialised as copies of `{q,k,v}_proj` and a missing
`model.beacon_embed_tokens.weight` from the EOS row of `model.embed_tokens`.

Modules are built on the `meta` device and filled with `load_state_dict(assign=True)`, so no
random initialisation runs and no global random state is touched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .config import VideoXLConfig
from .modeling import VideoXLForCausalLM

# Checkpoint key prefix -> module key prefix. transformers 5 flattened `CLIPVisionModel` (no
# `vision_model.` level); Video-XL checkpoints keep it.
RENAMES = (("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_tower."),)

_BEACON_PROJ = re.compile(r"^(model\.layers\.\d+\.self_attn\.)beacon_([qkv])_proj\.(weight|bias)$")
TINY_SEED = 20250301


class CheckpointError(ValueError):
    """A checkpoint folder whose tensors do not match the model (names the keys)."""


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (sharded with an index json, or single file).

    Raises:
        FileNotFoundError: no safetensors files in the folder.
        CheckpointError: an index that names a missing shard.
    """
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {folder}: {missing}")
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights (Video-XL layout expected)")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(folder / shard)))
    return state


def to_module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names -> module names (`RENAMES`)."""
    out = {}
    for k, v in state.items():
        for ckpt, mod in RENAMES:
            if k.startswith(ckpt):
                k = mod + k[len(ckpt):]
        out[k] = v
    return out


def to_checkpoint_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module names -> checkpoint names (inverse of `to_module_keys`)."""
    out = {}
    for k, v in state.items():
        for ckpt, mod in RENAMES:
            if k.startswith(mod):
                k = ckpt + k[len(mod):]
        out[k] = v
    return out


def _materialize(model: VideoXLForCausalLM, device: torch.device) -> None:
    """Recreate non-persistent buffers (rotary inv_freq, CLIP position ids) left on `meta`."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    model.model.rotary_emb = Qwen2RotaryEmbedding(model.config).to(device)
    emb = model.model.vision_tower.vision_tower.embeddings
    emb.register_buffer(
        "position_ids", torch.arange(emb.num_positions, device=device).expand((1, -1)), persistent=False
    )
    left = [n for n, b in model.named_buffers() if b.is_meta]
    assert not left, f"buffers left on meta: {left}"


def build_from_state(config: VideoXLConfig, state: dict[str, torch.Tensor], dtype, device) -> VideoXLForCausalLM:
    """Instantiate the model and load `state` (checked: names and shapes).

    Raises:
        CheckpointError: missing, unexpected or mis-shaped tensors, each listed by name.
    """
    with torch.device("meta"):
        model = VideoXLForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in to_checkpoint_keys(model.state_dict()).items()}
    state = dict(state)
    # Video-XL's initialisations for parts a checkpoint may lack.
    for key in expected:
        m = _BEACON_PROJ.match(key)
        if m and key not in state:
            src = f"{m.group(1)}{m.group(2)}_proj.{m.group(3)}"
            if src in state:
                state[key] = state[src].clone()
    if "model.beacon_embed_tokens.weight" not in state and "model.embed_tokens.weight" in state:
        eos = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
        state["model.beacon_embed_tokens.weight"] = state["model.embed_tokens.weight"][eos : eos + 1].clone()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:12]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:12]}")
        if misshaped:
            parts.append(f"mis-shaped {len(misshaped)}: {misshaped[:12]}")
        raise CheckpointError("checkpoint does not match the Video-XL model: " + "; ".join(parts))
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(to_module_keys(state), strict=True, assign=True)
    _materialize(model, device)
    model.eval()
    return model


def tiny_state(config: VideoXLConfig) -> dict[str, torch.Tensor]:
    """Deterministic random fp32 weights for the `tiny` model.

    Each tensor is drawn from its own `torch.Generator` seeded by `TINY_SEED` and the tensor name
    (normal, std 0.02; norms 1; biases std 0.02), so the weights do not depend on creation order or
    on global random state. Identical in every process and on every machine.
    """
    import zlib

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in to_checkpoint_keys(VideoXLForCausalLM(config).state_dict()).items()}
    state = {}
    for name, shape in sorted(shapes.items()):
        g = torch.Generator().manual_seed(TINY_SEED + zlib.crc32(name.encode()))
        if re.search(r"(layernorm|norm|layer_norm|pre_layrnorm|post_layernorm)\.weight$", name):
            t = torch.ones(shape) + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.02 * torch.randn(shape, generator=g)
        state[name] = t
    # Embeddings and the beacon embedding at a larger scale so activations are not degenerate.
    for name in ("model.embed_tokens.weight", "model.beacon_embed_tokens.weight"):
        state[name] = state[name] * 25.0
    return state


def save_checkpoint(model: VideoXLForCausalLM, tokenizer, folder: str | Path, max_shard_bytes: int = 2**30) -> Path:
    """Write a Video-XL-layout folder: config.json, sharded safetensors + index, tokenizer, CLIP config.

    The vision tower's architecture is written to `clip_config/` and `mm_vision_tower` points there
    (relative), as in `shared/oracle/checkpoint`. Returns the folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    vision, pre = cfg.pop("vision_config"), cfg.pop("image_processor")
    cfg.update(model_type="llava_qwen", architectures=["LlavaQwenForCausalLM"], mm_vision_tower="clip_config")
    cfg.pop("_attn_implementation_autoset", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    clip_dir = folder / "clip_config"
    clip_dir.mkdir(exist_ok=True)
    (clip_dir / "config.json").write_text(json.dumps({**vision, "model_type": "clip_vision_model"}, indent=2))
    (clip_dir / "preprocessor_config.json").write_text(json.dumps(
        {"size": pre["size"], "crop_size": pre["crop_size"], "image_mean": pre["image_mean"],
         "image_std": pre["image_std"], "do_resize": True, "do_center_crop": True, "do_normalize": True,
         "resample": 3}, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in to_checkpoint_keys(model.state_dict()).items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        nbytes = state[k].numel() * state[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
    )
    tokenizer.save_pretrained(str(folder))
    return folder

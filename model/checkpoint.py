"""Building Video-XL modules: from a local checkpoint folder, or the deterministic `tiny` weights;
writing checkpoint folders (`save_checkpoint`).

Checkpoint layout (Video-XL / HF `sy1998/Video_XL`): `config.json`, sharded `*.safetensors` with
`model.safetensors.index.json` (or one `model.safetensors`), tokenizer files (`save_checkpoint`
lists what the original writes). Loading is a
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


# -- writing -------------------------------------------------------------------------------------
# `config.json` keys the original Video-XL code writes (`tests/data/oracle/checkpoint`, from
# `sy1998/Video_XL`'s training) that `VideoXLConfig` does not hold, with the original's values. They
# describe the training recipe and LLaVA options this implementation does not vary; a config that
# carries one (a loaded checkpoint, `extra_config`) wins.
ORIGINAL_CONFIG_DEFAULTS: dict = {
    "beacon_accum": True,
    "beacon_attend_prev": True,
    "beacon_parallel_window": 1,
    "beacon_ratio_mix": "step-random",
    "enable_beacon": True,
    "image_aspect_ratio": "anyres",
    "image_crop_resolution": None,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_split_resolution": None,
    "mm_patch_merge_type": "unires",
    "mm_projector_lr": None,
    "mm_resampler_type": "spatial_pool",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_tower_lr": 2e-06,
    "sliding_window": 131072,  # Qwen2-7B-Instruct's; unused (use_sliding_window false)
    "tokenizer_padding_side": "right",
    "tune_mm_mlp_adapter": False,
    "unfreeze_mm_vision_tower": True,
    "use_mm_proj": True,
    "vision_tower_pretrained": None,
}
# `PretrainedConfig.to_dict()` keys of transformers 5 not copied as they are: defaults of every config
# that the original (transformers 4.39) does not write, 5.x spellings of keys written under their 4.x
# names (`dtype` -> `torch_dtype`, `rope_parameters` -> `rope_theta` + `rope_scaling`), keys set
# afresh, and the vision settings (written to `clip_config/`).
_V5_ONLY_KEYS = (
    "_name_or_path", "_attn_implementation_autoset", "chunk_size_feed_forward", "dtype", "id2label",
    "label2id", "is_encoder_decoder", "layer_types", "output_attentions", "output_hidden_states",
    "problem_type", "return_dict", "rope_parameters", "torch_dtype", "transformers_version",
    "vision_config", "image_processor",
)
# Keys that describe the saved tensors or the folder: `extra_config` may not change them.
_STRUCTURAL_KEYS = (
    "model_type", "architectures", "mm_vision_tower", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "mm_hidden_size",
    "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "torch_dtype", "dtype", "vxl_compressor",
)
# Qwen2's chat template as Video-XL's tokenizer_config.json carries it (ChatML, default system prompt).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# CLIP vision config keys Video-XL's clip_config/config.json has that `vision_config` may lack.
_CLIP_DEFAULTS = {"attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
                  "num_channels": 3}


def _dtype_name(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def original_config(model: VideoXLForCausalLM, model_max_length: int | None = None,
                    extra_config: dict | None = None) -> dict:
    """The `config.json` dict the original Video-XL code writes for `model` (see `save_checkpoint`).

    Raises:
        ValueError: `extra_config` changes a key that describes the saved tensors (`_STRUCTURAL_KEYS`).
    """
    import transformers

    from .fingerprint import rope_fields

    config = model.config
    cfg = {k: v for k, v in config.to_dict().items() if k not in _V5_ONLY_KEYS}
    if cfg.get("pad_token_id") is None:
        cfg.pop("pad_token_id", None)
    if cfg.get("vxl_compressor") == "vst":
        cfg.pop("vxl_compressor")  # Video-XL's own mechanism: the original's keys only
    if cfg.get("sliding_window") is None:
        cfg.pop("sliding_window", None)  # transformers 5 clears it when unused; the original keeps a value
    for key, value in ORIGINAL_CONFIG_DEFAULTS.items():
        cfg.setdefault(key, value)
    rope = rope_fields(config)
    rope_theta, rope_type = rope.pop("rope_theta"), rope.pop("rope_type")
    cfg["rope_theta"] = float(rope_theta)
    cfg["rope_scaling"] = None if rope_type == "default" and not rope else {"type": rope_type, "rope_type": rope_type,
                                                                            **rope}
    cfg.setdefault("mm_spatial_pool_out_channels", config.mm_hidden_size)
    cfg.setdefault("tokenizer_model_max_length", model_max_length or config.max_position_embeddings)
    cfg.update(model_type="qwen2", architectures=["LlavaQwenForCausalLM"], mm_vision_tower="clip_config",
               torch_dtype=_dtype_name(model), transformers_version=transformers.__version__)
    for key, value in (extra_config or {}).items():
        if key in _STRUCTURAL_KEYS and cfg.get(key) != value:
            raise ValueError(
                f"extra_config sets {key}={value!r}, but the saved model has {cfg.get(key)!r}: keys that describe "
                f"the weights or the folder ({', '.join(_STRUCTURAL_KEYS)}) come from the model"
            )
        cfg[key] = value
    return cfg


def _added_token_dict(token, special: bool | None = None) -> dict:
    d = {"content": str(token), "lstrip": bool(getattr(token, "lstrip", False)),
         "normalized": bool(getattr(token, "normalized", False)), "rstrip": bool(getattr(token, "rstrip", False)),
         "single_word": bool(getattr(token, "single_word", False))}
    if special is not None:
        d["special"] = special
    return d


def is_qwen2_structured(tokenizer) -> bool:
    """Whether the fast tokenizer normalises and pre-tokenizes text as Qwen2's tokenizer does (NFC, then
    Qwen2's split regex, then byte-level), so that `Qwen2Tokenizer` built from its vocab.json +
    merges.txt gives the same ids."""
    from transformers import Qwen2Tokenizer

    ref = json.loads(Qwen2Tokenizer().backend_tokenizer.to_str())
    own = json.loads(tokenizer.backend_tokenizer.to_str())
    return all(own.get(k) == ref.get(k) for k in ("normalizer", "pre_tokenizer"))


def save_tokenizer_files(tokenizer, folder: Path, model_max_length: int) -> None:
    """The tokenizer files of a Video-XL checkpoint (see `save_checkpoint`).

    Raises:
        ValueError: a tokenizer without a byte-level BPE `tokenizers` backend.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model_json = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model_json.get("type") != "BPE":
        raise ValueError(f"{type(tokenizer).__name__}: Video-XL checkpoints hold a byte-level BPE (Qwen2) tokenizer; "
                         "this one has no tokenizers BPE backend")
    backend.save(str(folder / "tokenizer.json"))
    backend.model.save(str(folder))  # vocab.json + merges.txt ("#version: 0.2"), the slow format
    base_vocab = model_json["vocab"]
    added = {i: t for i, t in sorted(tokenizer.added_tokens_decoder.items()) if str(t) not in base_vocab}
    (folder / "added_tokens.json").write_text(json.dumps({str(t): i for i, t in added.items()}, indent=2))
    extra = [str(t) for t in (getattr(tokenizer, "extra_special_tokens", None)
                              or getattr(tokenizer, "additional_special_tokens", None) or [])]
    by_content = {str(t): t for t in tokenizer.added_tokens_decoder.values()}
    named = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    special_map: dict = {"additional_special_tokens": extra} if extra else {}
    for name, value in named.items():
        if value is not None:
            special_map[name] = _added_token_dict(by_content.get(str(value), str(value)))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, sort_keys=True))
    tok_cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _added_token_dict(t, special=bool(getattr(t, "special", True)))
                                 for i, t in added.items()},
        "additional_special_tokens": extra,
        "chat_template": getattr(tokenizer, "chat_template", None) or QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer" if is_qwen2_structured(tokenizer) else "PreTrainedTokenizerFast",
        **{name: (str(v) if v is not None else None) for name, v in named.items()},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, sort_keys=True))


def save_checkpoint(model: VideoXLForCausalLM, tokenizer, folder: str | Path, max_shard_bytes: int = 2**30,
                    extra_config: dict | None = None) -> Path:
    """Write a checkpoint folder in the layout the original Video-XL code writes and reads.

    The reference is `tests/data/oracle/checkpoint` (written by the original code, transformers
    4.39). Files:

    - `config.json`: the original's keys and spellings: `model_type` "qwen2", `architectures`
      ["LlavaQwenForCausalLM"], `rope_theta` + `rope_scaling` (not transformers 5's
      `rope_parameters`), `torch_dtype` (not `dtype`), the Qwen2, `beacon_*` and `mm_*` keys, and
      `transformers_version` (the installed one). Values come from `model.config`; keys it does not
      hold take the original's values (`ORIGINAL_CONFIG_DEFAULTS`: `beacon_ratio_mix`,
      `beacon_accum`, `enable_beacon`, ...). transformers 5's generic defaults (`id2label`,
      `return_dict`, ...) are left out. `extra_config` is merged last (e.g. the training curriculum:
      `beacon_ratio`, `beacon_ratio_mix`, a `vxl_training` dict); it may not change the keys that
      describe the weights (`_STRUCTURAL_KEYS`: ValueError). `model.config.load_config` reads the
      folder back (transformers 5 turns `rope_theta` into `rope_parameters`; extra keys become
      config attributes).
    - `generation_config.json`: bos/eos only (greedy = argmax), as the original.
    - `clip_config/config.json` + `preprocessor_config.json`: the vision tower's architecture and
      CLIP preprocessing; `mm_vision_tower` is "clip_config" (relative to the folder).
    - `model-0000i-of-0000n.safetensors` shards of at most `max_shard_bytes` (one tensor may
      exceed it) + `model.safetensors.index.json`, tensors under the checkpoint names (`RENAMES`).
    - Tokenizer: `tokenizer.json` (the fast tokenizer as it is), `vocab.json` + `merges.txt` (the
      slow Qwen2 format, the backend's BPE model as `tokenizers` saves it; the original loads these
      with `use_fast=False`), `added_tokens.json`, `special_tokens_map.json`, `tokenizer_config.json`
      with the original's keys (ChatML `chat_template`, `model_max_length`, ...).
      `tokenizer_class` is "Qwen2Tokenizer" when the tokenizer normalises and pre-tokenizes as
      Qwen2's does (`is_qwen2_structured`; real Video-XL tokenizers), so `Qwen2Tokenizer` from
      vocab.json + merges.txt gives the same ids. transformers 5 has no slow Qwen2 tokenizer:
      `transformers.Qwen2Tokenizer` is its `tokenizers`-backed class, which builds Qwen2's NFC
      normaliser and split regex around the vocab and merges, as the slow class did. A tokenizer
      with another pre-tokenizer (the `tiny` one: GPT-2's byte-level regex, which keeps digit runs
      together) would tokenize differently under that class, so its `tokenizer_class` is
      "PreTrainedTokenizerFast": the original code (transformers 4 `AutoTokenizer`, also with
      `use_fast=False`) then loads `tokenizer.json` as it is. vxl's `load_tokenizer` always loads
      `tokenizer.json` as it is (transformers 5's `AutoTokenizer` imposes `Qwen2Tokenizer` on
      `model_type` "qwen2"), so the folder tokenizes as the saved model did.

    Returns the folder.

    Raises:
        ValueError: `extra_config` changes a structural key; a tokenizer that is not a BPE one.
        TypeError: an `extra_config` value that JSON cannot hold.
    """
    import transformers
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    max_len = getattr(tokenizer, "model_max_length", None)
    max_len = max_len if isinstance(max_len, int) and max_len < 2**31 else config.max_position_embeddings
    cfg = original_config(model, max_len, extra_config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
           "transformers_version": transformers.__version__}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    clip_dir = folder / "clip_config"
    clip_dir.mkdir(exist_ok=True)
    vision, pre = config.vision_config, config.image_processor
    clip = {**_CLIP_DEFAULTS, **vision, "architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
            "torch_dtype": _dtype_name(model), "transformers_version": transformers.__version__}
    (clip_dir / "config.json").write_text(json.dumps(clip, indent=2, sort_keys=True) + "\n")
    (clip_dir / "preprocessor_config.json").write_text(json.dumps(
        {"size": pre["size"], "crop_size": pre["crop_size"], "image_mean": pre["image_mean"],
         "image_std": pre["image_std"], "do_resize": True, "do_center_crop": True, "do_normalize": True,
         "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3}, indent=2, sort_keys=True) + "\n")
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
    save_tokenizer_files(tokenizer, folder, max_len)
    return folder

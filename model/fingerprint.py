"""The model fingerprint: a digest of exactly the fields that change a memory (or an answer).

A memory is only loaded by a model with the same fingerprint (DESIGN.md, archive invariants). The
fingerprint is built from an explicit list, never from `config.to_dict()`: a default that upstream
adds or renames in its config (transformers 5 added `rope_parameters`, `layer_types`, `id2label`...)
must not invalidate an archive, and a key that does change the computation must never be left out.
The list is documented in docs/ARCHIVE_FORMAT.md ("Model fingerprint").

What is deliberately *not* in it: the device and the attention kernel (`sdpa`/`eager`): the same
model on another device makes the same memory up to kernel rounding, which the archive's numerics
probe (`model.probe`) bounds; library versions (recorded per memory as `library_versions`);
`beacon_ratio` and `beacon_embed_init` (the ratio of each window is part of the stored plan; the
embedding's initialisation is overwritten by the weights).
"""

from __future__ import annotations

import hashlib
import json

#: Bump when the encode algorithm changes the memory for the same inputs, or when the list below
#: changes meaning. 2: fields from this explicit list (1 hashed the whole config dict).
FINGERPRINT_VERSION = 2

#: Qwen2 decoder keys that change the computation (`VideoXLConfig` attributes).
DECODER_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "eos_token_id",
)
#: Video-XL keys: VST windows and attention, vision feature selection, projector and pooling.
VIDEO_XL_KEYS = (
    "beacon_window", "beacon_stride", "beacon_param", "beacon_pos", "beacon_attn", "beacon_sink_size",
    "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
    "mm_spatial_pool_stride", "mm_spatial_pool_mode",
)
#: CLIP vision tower architecture keys (`vision_config`); `projection_dim` is not used by the tower.
VISION_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
    "patch_size", "hidden_act", "layer_norm_eps", "num_channels",
)
#: Preprocessing keys (`image_processor`).
PREPROCESSING_KEYS = ("size", "crop_size", "image_mean", "image_std")


def rope_fields(config) -> dict:
    """RoPE settings however the installed transformers spells them (`rope_parameters` in 5.x,
    `rope_theta` + `rope_scaling` in 4.x): `{"rope_theta": float, "rope_type": str, ...scaling}`."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", None))
    params.setdefault("rope_type", params.pop("type", "default"))
    return {k: params[k] for k in sorted(params)}


def attention_fields(config) -> dict:
    """Sliding-window attention, the only Qwen2 attention variant: the window per layer, or None."""
    if not getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None) is None:
        return {"sliding_window": None}
    return {"sliding_window": config.sliding_window, "max_window_layers": getattr(config, "max_window_layers", None)}


def config_fields(config) -> dict:
    """The fingerprinted view of a `VideoXLConfig` (JSON-able)."""
    out = {k: getattr(config, k, None) for k in DECODER_KEYS + VIDEO_XL_KEYS}
    if out["head_dim"] is None:
        out["head_dim"] = config.hidden_size // config.num_attention_heads
    out["rope"] = rope_fields(config)
    out["attention"] = attention_fields(config)
    vision = config.vision_config or {}
    out["vision"] = {k: vision.get(k) for k in VISION_KEYS}
    if out["vision"]["num_channels"] is None:
        out["vision"]["num_channels"] = 3  # CLIPVisionConfig's default
    pre = config.image_processor or {}
    out["preprocessing"] = {k: pre.get(k) for k in PREPROCESSING_KEYS}
    compressor = getattr(config, "vxl_compressor", "vst")
    if compressor != "vst":  # absent for Video-XL itself, so its fingerprints are unchanged
        out["vxl_compressor"] = compressor
    return out


def tokenizer_fields(tokenizer) -> dict:
    """Vocabulary (token -> id, added tokens included), BPE merges and special tokens, as sha256 hex.

    Read from the tokenizers backend's model (not its serialisation, whose format changes between
    tokenizers releases). Merges are normalised to "left right" strings (tokenizers >= 0.20 stores
    pairs).
    """
    vocab = sorted(tokenizer.get_vocab().items())
    merges: list[str] = []
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))

    def digest(obj) -> str:
        return hashlib.sha256(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()

    return {"vocab": digest(vocab), "merges": digest(merges), "special_tokens": digest(special)}


def fingerprint_payload(config, weights_digest: str, tokenizer, template: str, dtype) -> dict:
    """Everything the fingerprint covers, as a JSON-able dict (shown by `vxl archive show --json`)."""
    return {
        "version": FINGERPRINT_VERSION,
        "config": config_fields(config),
        "weights": weights_digest,
        "tokenizer": tokenizer_fields(tokenizer),
        "template": template,
        "dtype": str(dtype),
    }


def fingerprint(payload: dict) -> str:
    """sha256 hex of the canonical JSON of `fingerprint_payload(...)`."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()

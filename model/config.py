"""Video-XL configuration: Qwen2 keys plus the `beacon_*` (VST) and `mm_*` (vision) keys.

Values and key names follow the released Video-XL checkpoint (`sy1998/Video_XL`, VIDEO_XL.md
section 1). The vision tower's *architecture* comes from `mm_vision_tower` (a folder with a CLIP
vision `config.json`, or a known hub name whose configuration is built in here); its *weights*
always come from the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPVisionConfig, Qwen2Config

# The CLIP preprocessing of `openai/clip-vit-large-patch14-336` (its preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Known vision towers, so a checkpoint naming a hub id loads without network access.
KNOWN_VISION_TOWERS: dict[str, dict] = {
    "openai/clip-vit-large-patch14-336": {
        "config": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        "preprocessor": dict(size=336, crop_size=336, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)),
    },
}

#: Window compressors (`VideoXLConfig.vxl_compressor`): Video-XL's VSTs, and the pooling baseline.
COMPRESSORS = ("vst", "pool")


class VideoXLConfig(Qwen2Config):
    r"""Configuration of a Video-XL model (`LlavaQwenForCausalLM` in the original code).

    Args:
        beacon_window (`int`, *optional*, defaults to 1440):
            Visual tokens per window (10 frames x 144 tokens), VIDEO_XL.md section 1.
        beacon_stride (`int`, *optional*, defaults to 1440):
            Window stride in visual tokens; Video-XL uses `beacon_stride == beacon_window`.
        beacon_ratio (`list[int]`, *optional*, defaults to `[8]`):
            Allowed compression ratios (visual tokens per VST). The demo and evaluation use `[8]`.
        beacon_param (`list[str]`, *optional*, defaults to `["q", "k", "v"]`):
            Projections that have a separate VST ("beacon") copy.
        beacon_pos (`str`, defaults to `"interleave"`), beacon_attn (`str`, defaults to `"full-coverage"`):
            The only VST placement and attention supported (Video-XL's released setting).
        beacon_sink_size (`int`, defaults to 0): extra sink tokens kept per window (0 in Video-XL).
        mm_hidden_size (`int`, defaults to 1024): CLIP hidden width (projector input).
        mm_projector_type (`str`, defaults to `"mlp2x_gelu"`).
        mm_vision_select_layer (`int`, defaults to -2): CLIP hidden state used (second to last).
        mm_spatial_pool_stride (`int`, defaults to 2): 2x2 average pooling after the projector.
        mm_spatial_pool_mode (`str`, defaults to `"average"`).
        mm_vision_tower (`str`): CLIP architecture: folder (absolute or relative to the checkpoint)
            or a name in `KNOWN_VISION_TOWERS`.
        vision_config (`dict`, *optional*): the resolved CLIP vision configuration.
        image_processor (`dict`, *optional*): size, crop_size, image_mean, image_std.
        vxl_compressor (`str`, defaults to `"vst"`): how a window becomes memory. `"vst"` is
            Video-XL (VSTs interleaved, only their K/V kept). `"pool"` is the paper's pooling
            baseline (its ablation at 16x, VIDEO_XL.md section 3: pooling 33.7 against VST 41.4 on
            MLVU): a window's visual tokens are average-pooled into as many tokens as it would get
            VSTs (`model.video_xl.pool_tokens`), and those are fed to the LLM and all kept, so the
            memory sizes are equal. A vxl extension key, written to config.json only when it is not
            `"vst"`; the original code does not read it.
    """

    model_type = "llava_qwen"

    def __init__(
        self,
        beacon_window: int = 1440,
        beacon_stride: int = 1440,
        beacon_ratio: list[int] | None = None,
        beacon_param: list[str] | None = None,
        beacon_pos: str = "interleave",
        beacon_attn: str = "full-coverage",
        beacon_sink_size: int = 0,
        beacon_embed_init: str = "eos",
        mm_hidden_size: int = 1024,
        mm_projector_type: str = "mlp2x_gelu",
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        mm_spatial_pool_stride: int = 2,
        mm_spatial_pool_mode: str = "average",
        mm_vision_tower: str = "openai/clip-vit-large-patch14-336",
        vision_config: dict | None = None,
        image_processor: dict | None = None,
        vxl_compressor: str = "vst",
        **kwargs,
    ):
        self.beacon_window = beacon_window
        self.beacon_stride = beacon_stride
        self.beacon_ratio = list(beacon_ratio) if beacon_ratio is not None else [8]
        self.beacon_param = list(beacon_param) if beacon_param is not None else ["q", "k", "v"]
        self.beacon_pos = beacon_pos
        self.beacon_attn = beacon_attn
        self.beacon_sink_size = beacon_sink_size
        self.beacon_embed_init = beacon_embed_init
        self.mm_hidden_size = mm_hidden_size
        self.mm_projector_type = mm_projector_type
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        self.mm_spatial_pool_stride = mm_spatial_pool_stride
        self.mm_spatial_pool_mode = mm_spatial_pool_mode
        self.mm_vision_tower = mm_vision_tower
        self.vision_config = vision_config
        self.image_processor = image_processor
        self.vxl_compressor = vxl_compressor
        super().__init__(**kwargs)

    # -- derived sizes (units in the names) -----------------------------------------------------
    @property
    def clip_config(self) -> CLIPVisionConfig:
        if self.vision_config is None:
            raise ValueError("vision_config is not resolved; load the config with load_config()")
        return CLIPVisionConfig(**self.vision_config)

    @property
    def patches_per_side(self) -> int:
        vc = self.vision_config
        return vc["image_size"] // vc["patch_size"]

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens per frame after pooling: (24 / 2)^2 = 144 for Video-XL."""
        return (self.patches_per_side // self.mm_spatial_pool_stride) ** 2

    @property
    def head_dim_(self) -> int:
        return getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K+V bytes per kept token over all layers at 2 bytes/element (57344 = 56 KiB for 7B)."""
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim_ * 2

    def check_supported(self) -> None:
        """Raise ValueError for Video-XL settings this implementation does not reproduce."""
        problems = []
        if self.beacon_pos != "interleave":
            problems.append(f"beacon_pos={self.beacon_pos!r} (only 'interleave')")
        if self.beacon_attn != "full-coverage":
            problems.append(f"beacon_attn={self.beacon_attn!r} (only 'full-coverage')")
        if self.beacon_stride != self.beacon_window:
            problems.append(f"beacon_stride={self.beacon_stride} != beacon_window={self.beacon_window}")
        if self.beacon_sink_size != 0:
            problems.append(f"beacon_sink_size={self.beacon_sink_size} (only 0)")
        if sorted(self.beacon_param) != ["k", "q", "v"]:
            problems.append(f"beacon_param={self.beacon_param} (only [q, k, v])")
        if self.mm_projector_type != "mlp2x_gelu":
            problems.append(f"mm_projector_type={self.mm_projector_type!r} (only 'mlp2x_gelu')")
        if self.mm_spatial_pool_mode != "average":
            problems.append(f"mm_spatial_pool_mode={self.mm_spatial_pool_mode!r} (only 'average')")
        if self.mm_vision_select_feature != "patch":
            problems.append(f"mm_vision_select_feature={self.mm_vision_select_feature!r} (only 'patch')")
        if self.vxl_compressor not in COMPRESSORS:
            problems.append(f"vxl_compressor={self.vxl_compressor!r} (only {', '.join(COMPRESSORS)})")
        if self.vision_config is not None and self.beacon_window % self.tokens_per_frame:
            problems.append(f"beacon_window={self.beacon_window} is not a whole number of frames")
        if problems:
            raise ValueError("unsupported Video-XL configuration: " + "; ".join(problems))


def resolve_vision_tower(name: str, checkpoint_dir: Path | None) -> tuple[dict, dict]:
    """CLIP vision config and preprocessing for `mm_vision_tower`.

    Order: an absolute folder, a folder relative to the checkpoint, then `KNOWN_VISION_TOWERS`.

    Raises:
        ValueError: naming the value and the places looked at.
    """
    candidates = []
    p = Path(name)
    if p.is_absolute():
        candidates.append(p)
    elif checkpoint_dir is not None:
        candidates.append(checkpoint_dir / p)
    for folder in candidates:
        cfg_file = folder / "config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            cfg = cfg.get("vision_config", cfg)  # a full CLIPConfig holds vision_config
            keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "image_size", "patch_size", "projection_dim", "hidden_act", "layer_norm_eps",
                    "num_channels", "attention_dropout")
            vision = {k: cfg[k] for k in keep if k in cfg}
            pre_file = folder / "preprocessor_config.json"
            pre = json.loads(pre_file.read_text()) if pre_file.is_file() else {}
            return vision, _preprocessor(pre, vision["image_size"])
    if name in KNOWN_VISION_TOWERS:
        known = KNOWN_VISION_TOWERS[name]
        return dict(known["config"]), dict(known["preprocessor"])
    raise ValueError(
        f"mm_vision_tower {name!r}: no CLIP config.json at {[str(c) for c in candidates]} and not a known "
        f"name ({sorted(KNOWN_VISION_TOWERS)}). Put the CLIP vision config.json in a folder and point "
        "mm_vision_tower at it (absolute or relative to the checkpoint)."
    )


def _preprocessor(pre: dict, image_size: int) -> dict:
    size = pre.get("size", image_size)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height", image_size))
    crop = pre.get("crop_size", image_size)
    if isinstance(crop, dict):
        crop = crop.get("height", image_size)
    return dict(
        size=int(size),
        crop_size=int(crop),
        image_mean=list(pre.get("image_mean", CLIP_MEAN)),
        image_std=list(pre.get("image_std", CLIP_STD)),
    )


def load_config(checkpoint_dir: str | Path) -> VideoXLConfig:
    """Read `config.json` of a Video-XL checkpoint (`model_type` `llava_qwen` or `qwen2`).

    Raises:
        FileNotFoundError: no config.json in the folder.
        ValueError: another model type, or settings this implementation does not support.
    """
    folder = Path(checkpoint_dir)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: a Video-XL checkpoint folder holds config.json")
    raw = json.loads(cfg_file.read_text())
    mt = raw.get("model_type")
    if mt not in ("llava_qwen", "qwen2"):
        raise ValueError(f"{cfg_file}: model_type {mt!r} is not a Video-XL model (llava_qwen or qwen2)")
    raw.pop("model_type", None)
    for k in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        raw.pop(k, None)
    if raw.get("vision_config") is None:
        vision, pre = resolve_vision_tower(raw.get("mm_vision_tower", ""), folder)
        raw["vision_config"], raw["image_processor"] = vision, pre
    cfg = VideoXLConfig(**raw)
    cfg.check_supported()
    return cfg


def tiny_config() -> VideoXLConfig:
    """The built-in `tiny` model: Video-XL's geometry, small widths (tests and the demo on 2 CPUs).

    336 px frames, patch 14 -> 24x24 patches, 2x2 pooling -> 144 tokens per frame, 1440-token
    windows (10 frames), ratio 8; Qwen2 hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16;
    CLIP hidden 32, 2 layers. Same widths as `shared/oracle/checkpoint`.
    """
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=336, patch_size=14, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    cfg = VideoXLConfig(
        vocab_size=576,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=512,
        eos_token_id=514,
        pad_token_id=None,
        mm_hidden_size=32,
        mm_vision_tower="vxl-tiny-clip",
        vision_config=vision,
        image_processor=_preprocessor({}, 336),
    )
    cfg.check_supported()
    return cfg


def toy_config(vocab_size: int, bos_token_id: int, eos_token_id: int, *, image_size: int = 64,
               window_frames: int = 8, compressor: str = "vst", layers: int = 4) -> VideoXLConfig:
    """The `toy` model's architecture: Video-XL's mechanism at a size that trains on 2 CPU cores.

    64 px frames, patch 8 -> 8x8 patches, 2x2 pooling -> 16 visual tokens per frame; windows of
    128 visual tokens (8 frames); ratios up to 16 give every frame at least one VST. Qwen2 hidden
    128, 4 layers, 4 heads, 2 KV heads (head_dim 32); CLIP hidden 64, 2 layers. Chosen to train on
    2 CPU cores: `make toy-model` makes the shipped model in about two hours, 92.7% on held-out
    videos (docs/EVALUATION.md; the issue-12 target is 30 minutes and 90% per type). Nothing in the
    code depends on these values.

    Args:
        vocab_size: rows of the embedding and LM head (the tokenizer's size, special tokens included).
        bos_token_id, eos_token_id: `<|endoftext|>` and `<|im_end|>` ids of the tokenizer.
        image_size: frame side in pixels (patch 8, 2x2 pooling: `(image_size / 16)^2` tokens per frame).
        window_frames: frames per window (`beacon_window` = window_frames x tokens per frame).
        compressor: `vxl_compressor` ("vst", or "pool" for the pooling baseline of issue 13).
        layers: Qwen2 decoder layers (4 by default; each one more layer of VST K/V in the memory).
    """
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=8, projection_dim=64, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    tokens_per_frame = (image_size // 8 // 2) ** 2
    cfg = VideoXLConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1e4,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        beacon_window=window_frames * tokens_per_frame,
        beacon_stride=window_frames * tokens_per_frame,
        beacon_ratio=[2, 4, 8, 12, 16],
        mm_hidden_size=64,
        mm_vision_tower="vxl-toy-clip",
        vision_config=vision,
        image_processor=_preprocessor({}, image_size),
        vxl_compressor=compressor,
    )
    cfg.check_supported()
    return cfg

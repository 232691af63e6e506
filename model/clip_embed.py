"""open_clip image/text embeddings for the `dynamic` chunk planner (DESIGN.md "Chunk planning").

The paper measures information density with CLIP image embeddings of adjacent sampled frames
(VIDEO_XL.md section 4); `ClipEmbedder.embed_images` produces those embeddings, `model.dynamic`
turns them into a plan. `embed_text` embeds questions/captions into the same space (used to rank
windows by `model.dynamic.window_mean_embeddings`).

open_clip is imported lazily, inside functions (STYLE.md 11): importing this module costs nothing.

Shapes: F frames, H, W pixels, E embedding width (512 for ViT-B-32, 32 for `vxl-tiny-clip`), n texts.

Weights: no hub access here, so `weights` is a local state-dict file (`.pt`/`.bin`/`.safetensors`,
loaded by open_clip's `load_checkpoint`), or None for random weights. Random weights are
deterministic: the model is built inside `torch.random.fork_rng(devices=[])` seeded with
`RANDOM_INIT_SEED`, so the global CPU RNG is touched only inside the fork and is restored afterwards
(open_clip's initialisers draw from the global RNG; no other way to seed them short of
re-implementing each initialiser). CUDA RNGs are not forked: the model is built on the CPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

TINY_CLIP = "vxl-tiny-clip"
"""Name of the tiny random open_clip config registered by `register_tiny_clip` (tests, demo)."""

TINY_CLIP_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
"""Tiny ViT (64 px images, 4x4 patches of 16 px, width 64, 2 layers, 2 heads) and a 2-layer text
tower with the standard CLIP BPE vocabulary (bundled simple tokenizer, works offline)."""

RANDOM_INIT_SEED = 0
"""Seed of the forked RNG that builds random (weights=None) models."""

_EMBED_DTYPE = np.float32


def register_tiny_clip() -> None:
    """Register `TINY_CLIP_CONFIG` under `TINY_CLIP` in open_clip's model-config registry (idempotent).

    Written straight into `open_clip.factory._MODEL_CONFIGS` (what `add_model_config` fills from
    json files; a later `add_model_config` rescan keeps existing entries).
    """
    import open_clip.factory as factory

    if TINY_CLIP not in factory._MODEL_CONFIGS:
        factory._MODEL_CONFIGS[TINY_CLIP] = {k: dict(v) if isinstance(v, dict) else v
                                             for k, v in TINY_CLIP_CONFIG.items()}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ClipEmbedder:
    """L2-normalised open_clip image and text embeddings, computed in batches.

    Args:
        model_name: an open_clip config name (`"ViT-B-32"`, `"ViT-B-32-quickgelu"` for OpenAI's own
            checkpoint, `TINY_CLIP`, ...).
        weights: path of a local state-dict file for that config, or None for deterministic random
            weights (seed `RANDOM_INIT_SEED`).
        device: torch device; None picks `"cuda"` when available, else `"cpu"`. (Embeddings on GPU
            and CPU agree to about 1e-6, not bit for bit.)
        batch_size: frames (or texts) per forward pass; at most this many frames are preprocessed
            at once.

    Raises:
        ValueError: `batch_size < 1` or an unknown `model_name`.
        FileNotFoundError: `weights` is given but is not a file.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        import open_clip

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        register_tiny_clip()
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {model_name!r}; known: {TINY_CLIP!r}, 'ViT-B-32', ... "
                "(see open_clip.list_models())"
            )
        weights_path = None
        if weights is not None:
            weights_path = Path(weights).expanduser().resolve()
            if not weights_path.is_file():
                raise FileNotFoundError(f"CLIP weights file {str(weights)!r} does not exist")
        self.model_name = model_name
        self.weights = str(weights_path) if weights_path is not None else None
        self.batch_size = batch_size
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

        # open_clip initialises every model from the global RNG before loading any checkpoint;
        # fork it so that construction is deterministic and leaves the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(
                model_name, pretrained=self.weights, device="cpu", load_weights=weights_path is not None
            )
        self.model = model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = dict(self.model.visual.preprocess_cfg)
        self.image_size: tuple[int, int] = tuple(int(s) for s in cfg["size"])  # (H, W) pixels
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.interpolation: str = cfg.get("interpolation", "bicubic")
        self.resize_mode: str = cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r} of {model_name!r} is not supported")
        digest = _file_digest(weights_path) if weights_path is not None else f"random-seed-{RANDOM_INIT_SEED}"
        self.fingerprint: str = hashlib.sha256(f"open_clip:{model_name}:{digest}".encode()).hexdigest()
        """64 hex chars: sha256 of the model name and the weights file's sha256 (or the random seed)."""

    @property
    def embed_dim(self) -> int:
        """E, the width of the joint embedding space."""
        return int(self.model.text_projection.shape[1]) if self.model.text_projection is not None \
            else int(self.model.visual.output_dim)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """open_clip's eval transform on a batch of uint8 frames, done on tensors.

        Same steps as `open_clip.image_transform(..., is_train=False)`: resize the shortest side to
        the model's image size (bicubic, antialiased; or squash both sides for `resize_mode="squash"`),
        center crop, scale to [0, 1], normalise with the model's mean/std. On the CPU the resize runs on
        uint8 like PIL's and matches it to one grey level (max |diff| 0.015 after normalisation);
        on a GPU it runs in float32 (max |diff| about 0.09 at sharp edges; embeddings agree to
        cosine > 0.999).

        Args:
            frames: uint8 (B, H, W, 3) RGB, any device.

        Returns:
            float32 (B, 3, S, S) on `self.device`.
        """
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        x = frames.to(self.device).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        if x.device.type != "cpu":
            x = x.float()  # uint8 antialiased resize has a fast path on the CPU only (12x faster there)
        out_h, out_w = self.image_size
        interp = InterpolationMode(self.interpolation)
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            if (h, w) != (out_h, out_w):
                x = TF.resize(x, [out_h, out_w], interpolation=interp, antialias=True)
        else:
            short = min(out_h, out_w)
            if min(h, w) != short:
                x = TF.resize(x, [short], interpolation=interp, antialias=True)  # shorter edge -> short
            x = TF.center_crop(x, [out_h, out_w])
        x = x.float().clamp_(0.0, 255.0).div_(255.0)
        return (x - self.mean) / self.std  # (B, 3, S, S)

    @torch.inference_mode()
    def embed_images(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed sampled frames, `batch_size` at a time.

        Args:
            frames: uint8 (F, H, W, 3) RGB, numpy or torch, F >= 1.

        Returns:
            float32 (F, E) numpy, each row L2-normalised.

        Raises:
            ValueError: wrong dtype, wrong shape, or no frames.
        """
        if isinstance(frames, np.ndarray):
            dtype_ok = frames.dtype == np.uint8
        elif isinstance(frames, torch.Tensor):
            dtype_ok = frames.dtype == torch.uint8
        else:
            raise ValueError(f"frames must be a uint8 numpy array or torch tensor, got {type(frames).__name__}")
        if not dtype_ok:
            raise ValueError(f"frames must be uint8 (F, H, W, 3), got dtype {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must have shape (F, H, W, 3), got {tuple(frames.shape)}")
        if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
            raise ValueError(f"cannot embed an empty frame array of shape {tuple(frames.shape)}")
        num = frames.shape[0]
        out = np.empty((num, self.embed_dim), dtype=_EMBED_DTYPE)
        for s in range(0, num, self.batch_size):
            chunk = frames[s : s + self.batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
            feats = self.model.encode_image(self.preprocess(batch)).float()  # (B, E)
            out[s : s + len(batch)] = torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()
        return out

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Embed texts with open_clip's tokenizer for this model (77-token context, truncated).

        Args:
            texts: n >= 1 strings.

        Returns:
            float32 (n, E) numpy, each row L2-normalised.

        Raises:
            ValueError: `texts` is a bare string, empty, or holds a non-string.
        """
        if isinstance(texts, str) or not isinstance(texts, list | tuple) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must hold only strings")
        out = np.empty((len(texts), self.embed_dim), dtype=_EMBED_DTYPE)
        for s in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[s : s + self.batch_size])).to(self.device)  # (B, 77)
            feats = self.model.encode_text(tokens).float()  # (B, E)
            out[s : s + len(tokens)] = torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()
        return out

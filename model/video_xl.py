"""`VideoXL`: load, plan, encode a video into a `VSTMemory`, answer from a memory.

The encode loop reproduces Video-XL's inference (VIDEO_XL.md section 2, `shared/oracle/`):

1. sink pass: the prompt prefix before `<image>` (14 tokens), K/V kept (pre-RoPE);
2. one pass per window: visual tokens with VSTs interleaved (`plan.vst_positions`), against the
   memory so far (plain causal mask, memory fully visible, positions `0 .. M + T - 1`), after which
   only the VSTs' pre-RoPE K/V are kept and appended to the memory;
3. question: the text after `<image>` against the memory, then decoding, every token kept.

Implementation note: keys are *stored* pre-RoPE (the memory is position-free), and while encoding
or answering a rotated copy is kept in a transformers `DynamicCache`: memory token `i` always sits at
position `i`, so rotating the memory once and appending each window's VSTs rotated at their memory
positions gives exactly the original's "re-apply RoPE to `[memory ; window]` at every step".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import VideoXLConfig, load_config, tiny_config
from .fingerprint import FINGERPRINT_VERSION, fingerprint, fingerprint_payload  # noqa: F401 (re-exported)
from .memory import VSTMemory, WindowSpan
from .modeling import VideoXLForCausalLM, VSTCapture, append_rotated, truncate_cache
from .plan import PLANNERS, ChunkPlan, vst_positions
from .tokenizer import PROMPT_TEMPLATE, load_tokenizer, split_prompt, tiny_tokenizer


@dataclass
class Answer:
    """A generated answer.

    Attributes:
        text: decoded answer (special tokens removed).
        token_ids: generated ids (the EOS that stopped generation excluded).
        ttft_s: seconds from the call to the first generated token (question prefill included).
        total_s: seconds for the whole call.
        num_tokens: generated tokens.
        prompt_tokens: memory tokens + question tokens attended to by the first generated token.
    """

    text: str
    token_ids: list[int]
    ttft_s: float
    total_s: float
    num_tokens: int
    prompt_tokens: int
    timings: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        decode = self.total_s - self.ttft_s
        return (self.num_tokens - 1) / decode if self.num_tokens > 1 and decode > 0 else float("nan")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VideoXL:
    """A loaded Video-XL model. Stateless between calls: memories are passed in and returned.

    Use `load_model` to build one.
    """

    def __init__(self, model: VideoXLForCausalLM, tokenizer, name: str, weights_digest: str,
                 vision_batch_frames: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.config: VideoXLConfig = model.config
        self.vision_batch_frames = vision_batch_frames
        self._weights_digest = weights_digest
        prefix, _ = split_prompt("")
        self._sink_ids = self._encode_text(prefix)
        from transformers import CLIPImageProcessor

        pre = self.config.image_processor
        self._resize_crop = CLIPImageProcessor(  # resize + crop only; normalisation in `preprocess`
            size={"shortest_edge": pre["size"]}, crop_size={"height": pre["crop_size"], "width": pre["crop_size"]},
            do_resize=True, do_center_crop=True, do_rescale=False, do_normalize=False, resample=3,
            do_convert_rgb=False,
        )
        self.fingerprint = self._fingerprint()

    # -- identity -------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _fingerprint(self) -> str:
        """sha256 over exactly the fields that change a memory (`model.fingerprint`): the listed
        config keys, weights digest, vocabulary and merges, prompt template, preprocessing, dtype and
        the algorithm version. Not the device nor library versions (see `model.fingerprint`)."""
        return fingerprint(self.fingerprint_payload())

    def fingerprint_payload(self) -> dict:
        """What `fingerprint` is the digest of (JSON-able)."""
        return fingerprint_payload(self.config, self._weights_digest, self.tokenizer, PROMPT_TEMPLATE, self.dtype)

    def describe(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "dtype": str(self.dtype),
                "device": str(self.device), "layers": self.config.num_hidden_layers,
                "kv_heads": self.config.num_key_value_heads, "head_dim": self.config.head_dim_}

    def save_pretrained(self, folder: str | Path, max_shard_bytes: int = 2**30,
                        extra_config: dict | None = None) -> Path:
        """Write this model as a checkpoint folder in the original Video-XL layout; `extra_config` is
        merged into config.json (see `model.checkpoint.save_checkpoint`). `load_model(folder)` loads it."""
        from .checkpoint import save_checkpoint

        return save_checkpoint(self.model, self.tokenizer, folder, max_shard_bytes=max_shard_bytes,
                               extra_config=extra_config)

    # -- text -----------------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        t = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model.model.embed_tokens(t)  # (1, T, C)

    # -- frames ---------------------------------------------------------------------------------
    def _check_frames(self, frames) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"frames must be a uint8 array (F, H, W, 3), got {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (F, H, W, 3) RGB, got dtype {frames.dtype}")
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must have shape (F, H, W, 3), got {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise ValueError("frames is empty: a video needs at least one frame")
        return frames

    def model_frames(self, frames) -> torch.Tensor:
        """uint8 `(F, H, W, 3)` -> uint8 `(F, S, S, 3)` on the model's device: the resize (shortest
        side, bicubic) and center crop of `preprocess`, without the normalisation. Frames already
        `S x S` pass unchanged, so cached model frames (training) give what the video gives."""
        frames = self._check_frames(frames)
        s = self.config.image_processor["crop_size"]
        if tuple(frames.shape[1:3]) == (s, s):
            return frames.to(self.device)
        chw = frames.permute(0, 3, 1, 2).to(self.device)  # (F, 3, H, W) uint8
        out = self._resize_crop(images=list(chw), return_tensors="pt", device=self.device)["pixel_values"]
        return out.permute(0, 2, 3, 1).contiguous()  # (F, S, S, 3) uint8

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP preprocessing of uint8 `(F, H, W, 3)` frames -> `(F, 3, S, S)` in the model's dtype.

        Resize (shortest side, bicubic) and center crop by transformers' `CLIPImageProcessor` on
        uint8, then `(x / 255 - mean) / std` in float32, as the original CLIP processor computes it
        (bit-identical to the oracle's pixel values).
        """
        pre = self.config.image_processor
        chw = self.model_frames(frames).permute(0, 3, 1, 2)  # (F, 3, S, S) uint8
        mean = torch.tensor(pre["image_mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(pre["image_std"], device=self.device).view(1, 3, 1, 1)
        x = (chw.float() / 255.0 - mean) / std  # (F, 3, S, S) float32
        return x.to(self.dtype)

    @torch.inference_mode()
    def vision_features(self, frames) -> torch.Tensor:
        """Visual tokens of `frames` (uint8 `(F, H, W, 3)`): `(F * N, C)`, N = 144, in bounded batches."""
        return self._vision_features(frames)

    def _vision_features(self, frames) -> torch.Tensor:
        """`vision_features` under the caller's grad mode (training runs it with gradients)."""
        frames = self._check_frames(frames)
        out = []
        for s in range(0, frames.shape[0], self.vision_batch_frames):
            px = self.preprocess(frames[s : s + self.vision_batch_frames])
            out.append(self.model.image_features(px).flatten(0, 1))  # (f * N, C)
        return torch.cat(out)

    # -- planning -------------------------------------------------------------------------------
    def plan(self, frames, ratio: int = 8, planner: str = "fixed", **kwargs) -> ChunkPlan:
        """A chunk plan for `frames` (uint8 `(F, H, W, 3)`) or a frame count.

        `fixed` (default): windows of `beacon_window` tokens at one `ratio` (8 as Video-XL's demo).
        Other planners from `model.plan.PLANNERS` get `**kwargs`.

        Raises:
            ValueError: no frames, a ratio that is not a positive integer, an unknown planner.
        """
        n = frames if isinstance(frames, int) else int(self._check_frames(frames).shape[0])
        if planner not in PLANNERS:
            raise ValueError(f"unknown planner {planner!r}; known: {sorted(PLANNERS)}")
        geom = dict(tokens_per_frame=self.config.tokens_per_frame, window_tokens=self.config.beacon_window)
        if planner == "fixed":
            return PLANNERS["fixed"](n, ratio=ratio, **geom)
        return PLANNERS[planner](**kwargs, **geom)

    # -- encoding -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, frames, plan: ChunkPlan, timestamps=None, *, on_window=None) -> VSTMemory:
        """Compress a video into its VST memory.

        Args:
            frames: uint8 `(F, H, W, 3)` RGB (numpy or torch), the sampled frames in time order.
            plan: a `ChunkPlan` covering exactly F frames.
            timestamps: optional `(F,)` presentation times in seconds, stored in `WindowSpan`s.
            on_window: optional `callable(windows_done, windows_total, frames_done)` called after
                each window (progress inside a long video; it must not raise).
        Returns:
            `VSTMemory` in the model's dtype, on the model's device.
        Raises:
            ValueError: wrong frame dtype/shape, empty frames, a plan that does not cover the
                frames, timestamps of the wrong length.
        """
        return self.encode_memory(frames, plan, timestamps, on_window=on_window)

    def encode_memory(self, frames, plan: ChunkPlan, timestamps=None, *, checkpoint_windows: bool = False,
                      on_window=None) -> VSTMemory:
        """`encode` under the caller's grad mode: the one implementation of the encode loop.

        Training (`model.training`) calls it with gradients enabled, so the loss reaches every
        earlier window through the kept VST K/V. With `checkpoint_windows`, each window's pass is
        recomputed in the backward pass (`torch.utils.checkpoint`, non-reentrant): activation memory
        is one window's instead of the video's, at the cost of a second forward per window. The
        checkpointed pass rebuilds the rotated cache from the memory so far (the same tensors the
        incremental cache holds), so it computes exactly what the uncheckpointed pass computes.

        Args and errors: as `encode`.
        """
        frames = self._check_frames(frames)
        f = int(frames.shape[0])
        plan.validate(f, self.config.beacon_window)
        if plan.tokens_per_frame != self.config.tokens_per_frame:
            raise ValueError(f"plan has {plan.tokens_per_frame} tokens per frame, model {self.config.tokens_per_frame}")
        if timestamps is not None and len(timestamps) != f:
            raise ValueError(f"{len(timestamps)} timestamps for {f} frames")
        model = self.model
        cache = model.rotated_cache(self._empty_kv())

        # 1. sink: every token kept
        sink_ids = self._sink_ids
        cap = VSTCapture(is_vst=None, keep=torch.ones(len(sink_ids), dtype=torch.bool, device=self.device))
        model.step(self._embed_ids(sink_ids), cache, cap)
        sink = _stack(cap)  # (L, 2, Hkv, S, D)

        # 2. windows
        beacon = model.model.beacon_embed_tokens.weight[0]  # (C,)
        n_tok = self.config.tokens_per_frame
        windows, kvs = [], []
        pool = self.config.vxl_compressor == "pool"
        for idx, (w, (n_vst, carry)) in enumerate(zip(plan.windows, plan.layout(), strict=True)):
            feats = self._vision_features(frames[w.frame_start : w.frame_end])  # (n, C)
            if pool:  # the pooling baseline: n_vst pooled tokens, all kept (no VSTs)
                x = pool_tokens(feats, n_vst)
                is_vst = torch.zeros(n_vst, dtype=torch.bool, device=self.device)
                keep = torch.ones(n_vst, dtype=torch.bool, device=self.device)
            else:
                is_vst = vst_positions(feats.shape[0], w.ratio, carry).to(self.device)  # (n + n_vst,)
                x = torch.zeros(is_vst.shape[0], feats.shape[1], dtype=feats.dtype, device=feats.device)
                x = x.masked_scatter(~is_vst.unsqueeze(1), feats)  # visual tokens in order
                x = torch.where(is_vst.unsqueeze(1), beacon.to(x.dtype), x)  # VSTs: the beacon embedding
                keep = is_vst
            m = cache.get_seq_length()
            if checkpoint_windows and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                memory_so_far = torch.cat([sink, *kvs], dim=3)  # (L, 2, Hkv, m, D)
                kv = checkpoint(self._window_pass_fresh, memory_so_far, x, is_vst, keep, use_reentrant=False)
            else:
                kv = self._window_pass(cache, x, is_vst, keep)
            truncate_cache(cache, m)  # drop the window's raw tokens (and the VSTs at their window positions)
            append_rotated(model, cache, kv, start=m)  # VSTs at their memory positions
            kvs.append(kv)
            windows.append(WindowSpan(
                index=idx, frame_start=w.frame_start, frame_end=w.frame_end, ratio=w.ratio,
                num_vst=n_vst, carry_in=carry,
                start_s=float(timestamps[w.frame_start]) if timestamps is not None else None,
                end_s=float(timestamps[w.frame_end - 1]) if timestamps is not None else None,
            ))
            assert kv.shape[3] == n_vst and n_tok * w.num_frames == feats.shape[0]
            if on_window is not None:
                on_window(idx + 1, len(plan.windows), w.frame_end)
        return VSTMemory(sink=sink, window_kv=kvs, windows=windows, fingerprint=self.fingerprint)

    def _window_pass(self, cache, x: torch.Tensor, is_vst: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """One window `x` `(T, C)` after the memory in `cache`: the pre-RoPE K/V `(L, 2, Hkv, n_keep, D)`
        of the tokens where `keep` (bool `(T,)`; the VSTs, or every pooled token). `cache` grows by T
        tokens (the caller truncates it)."""
        cap = VSTCapture(is_vst=is_vst, keep=keep)
        self.model.step(x.unsqueeze(0), cache, cap)
        return _stack(cap)

    def _window_pass_fresh(self, memory: torch.Tensor, x: torch.Tensor, is_vst: torch.Tensor,
                           keep: torch.Tensor) -> torch.Tensor:
        """`_window_pass` against a cache rebuilt from `memory` `(L, 2, Hkv, M, D)` (pure: for checkpointing)."""
        return self._window_pass(self.model.rotated_cache(memory), x, is_vst, keep)

    def _empty_kv(self) -> torch.Tensor:
        c = self.config
        return torch.empty(c.num_hidden_layers, 2, c.num_key_value_heads, 0, c.head_dim_,
                           dtype=self.dtype, device=self.device)  # (L, 2, Hkv, 0, D)

    # -- answering ------------------------------------------------------------------------------
    def _check_memory(self, memory: VSTMemory) -> None:
        c = self.config
        want = (c.num_hidden_layers, 2, c.num_key_value_heads, c.head_dim_)
        got = (memory.num_layers, 2, memory.num_kv_heads, memory.head_dim)
        if got != want:
            raise ValueError(f"memory geometry (L, 2, Hkv, D) = {got} does not fit this model {want}")
        if memory.fingerprint is not None and memory.fingerprint != self.fingerprint:
            raise ValueError(
                f"memory was made by model {memory.fingerprint[:16]}..., this model is {self.fingerprint[:16]}...; "
                "re-index the video with this model"
            )

    def _question_ids(self, memory: VSTMemory, question: str, extra_tokens: int) -> list[int]:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty: ask something about the video")
        ids = self._encode_text(split_prompt(question)[1])
        limit = self.config.max_position_embeddings
        need = memory.num_tokens + len(ids) + extra_tokens
        if need > limit:
            raise ValueError(
                f"question of {len(ids)} tokens + memory of {memory.num_tokens} tokens + {extra_tokens} tokens to "
                f"generate = {need} > context limit {limit}; shorten the question or select fewer windows"
            )
        return ids

    def _prefill(self, memory: VSTMemory, ids: list[int]):
        self._check_memory(memory)
        cache = self.model.rotated_cache(memory.kv().to(self.device, self.dtype))
        logits = self.model.step(self._embed_ids(ids), cache, logits_for_last=1)[0]  # (V,)
        return cache, logits

    @torch.inference_mode()
    def next_token_logits(self, memory: VSTMemory, question: str) -> torch.Tensor:
        """float32 `(vocab,)` logits of the first answer token, on the CPU.

        Raises:
            ValueError: empty question, question over the context limit, a memory from another model.
        """
        ids = self._question_ids(memory, question, 0)
        _, logits = self._prefill(memory, ids)
        return logits.float().cpu()

    @torch.inference_mode()
    def answer(self, memory: VSTMemory, question: str, max_new_tokens: int = 64, do_sample: bool = False,
               temperature: float = 1.0, seed: int = 0) -> Answer:
        """Answer `question` from `memory` (no video, no vision tower).

        Greedy (argmax) by default; `do_sample=True` samples at `temperature` from a generator
        seeded with `seed` (no global random state). Stops at EOS (`<|im_end|>`) or `max_new_tokens`.

        Raises:
            ValueError: empty question, question over the context limit, a memory from another model,
                `max_new_tokens < 1`.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        t0 = time.perf_counter()
        ids = self._question_ids(memory, question, max_new_tokens)
        cache, logits = self._prefill(memory, ids)
        gen = torch.Generator(device="cpu").manual_seed(seed) if do_sample else None
        eos = self.config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        out: list[int] = []
        ttft = None
        for _ in range(max_new_tokens):
            if do_sample:
                probs = torch.softmax(logits.float().cpu() / max(temperature, 1e-6), dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            else:
                nxt = int(torch.argmax(logits))
            if ttft is None:
                ttft = time.perf_counter() - t0
            if nxt in eos_ids:
                break
            out.append(nxt)
            logits = self.model.step(self._embed_ids([nxt]), cache, logits_for_last=1)[0]
        total = time.perf_counter() - t0
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return Answer(text=text, token_ids=out, ttft_s=ttft or total, total_s=total, num_tokens=len(out),
                      prompt_tokens=memory.num_tokens + len(ids))

    @torch.inference_mode()
    def score_options(self, memory: VSTMemory, question: str, options: list[str]) -> list[float]:
        """Log-likelihood (natural log, summed over tokens) of each option's text as the answer.

        The question is prefilled once; each option is scored after it and the cache is cropped
        back. Used for multiple-choice benchmarks (CinePile, MLVU style).

        Raises:
            ValueError: no options or an empty option, empty question, over the context limit.
        """
        if not options or any(not o.strip() for o in options):
            raise ValueError("options must be a non-empty list of non-empty strings")
        opt_ids = [self._encode_text(o) for o in options]
        ids = self._question_ids(memory, question, max(len(o) for o in opt_ids))
        cache, first = self._prefill(memory, ids)
        base = cache.get_seq_length()
        scores = []
        for o in opt_ids:
            if len(o) > 1:
                logits = self.model.step(self._embed_ids(o[:-1]), cache, logits_for_last=len(o) - 1)
                truncate_cache(cache, base)
                all_logits = torch.cat([first.unsqueeze(0), logits])  # (len(o), V)
            else:
                all_logits = first.unsqueeze(0)
            logp = torch.log_softmax(all_logits.float(), dim=-1)
            scores.append(float(logp[torch.arange(len(o)), torch.tensor(o)].sum()))
        return scores


def pool_tokens(feats: torch.Tensor, n_out: int) -> torch.Tensor:
    """Average-pool a window's visual tokens `(n, C)` into `(n_out, C)`: `n_out` contiguous groups in
    time order, sizes differing by at most one (`torch.tensor_split`). The pooling baseline's
    compressor (`VideoXLConfig.vxl_compressor == "pool"`): `n_out` is the window's VST count, so a
    group holds `ratio` tokens (frame-major, so at a ratio of `tokens_per_frame` a group is one frame).

    Raises:
        ValueError: `n_out` > n (a group would be empty).
    """
    n = int(feats.shape[0])
    if n_out > n:
        raise ValueError(f"cannot pool {n} visual tokens into {n_out} groups")
    if n_out == 0:
        return feats[:0]
    return torch.stack([g.mean(dim=0) for g in torch.tensor_split(feats, n_out, dim=0)])


def _stack(cap: VSTCapture) -> torch.Tensor:
    """Captured per-layer `(1, Hkv, T, D)` K and V -> `(L, 2, Hkv, T, D)`."""
    layers = [torch.stack([k[0], v[0]]) for _, (k, v) in sorted(cap.kv.items())]  # each (2, Hkv, T, D)
    return torch.stack(layers).contiguous()  # (L, 2, Hkv, T, D)


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _resolve_dtype(dtype, config: VideoXLConfig, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in table:
            raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(table)}")
        return table[dtype]
    return dtype


#: Built-in model names: `tiny` (deterministic random weights, built in code) and checkpoints
#: shipped in the repository (`toy`: trained by `vxl train`, docs/EVALUATION.md).
BUILTIN_CHECKPOINTS: dict[str, Path] = {"toy": Path(__file__).resolve().parent / "weights" / "toy"}
BUILTIN_MODELS: tuple[str, ...] = ("tiny", *BUILTIN_CHECKPOINTS)


def is_model_name(name: str | Path) -> bool:
    """True for a built-in model name (`BUILTIN_MODELS`) or an existing folder."""
    return str(name) in BUILTIN_MODELS or Path(name).is_dir()


def load_model(name_or_path: str | Path = "tiny", dtype=None, device=None, attn_implementation: str = "sdpa",
               vision_batch_frames: int = 16) -> VideoXL:
    """Load `"tiny"` (built-in, deterministic random weights), `"toy"` (the trained toy checkpoint
    shipped in `model/weights/toy`) or a local Video-XL checkpoint folder.

    Args:
        name_or_path: `"tiny"` or a folder in Video-XL's layout (config.json, safetensors shards with
            `model.safetensors.index.json`, tokenizer files, `mm_vision_tower` resolvable).
        dtype: torch dtype or name; default float32 on CPU, bfloat16 on GPU.
        device: default `cuda` when available, else `cpu`.
        attn_implementation: transformers attention backend (`sdpa`, `eager`, `flash_attention_2`).
        vision_batch_frames: frames per CLIP batch (bounds activation memory).
    Raises:
        FileNotFoundError: the folder or its config/weights/tokenizer is missing.
        model.checkpoint.CheckpointError: tensors missing, unexpected or mis-shaped (names them).
        ValueError: unsupported configuration.
    """
    from .checkpoint import build_from_state, read_safetensors, tiny_state

    device = torch.device(device) if device is not None else _default_device()
    if str(name_or_path) == "tiny":
        config = tiny_config()
        state = tiny_state(config)
        tokenizer = tiny_tokenizer()
        name = "tiny"
    else:
        builtin = BUILTIN_CHECKPOINTS.get(str(name_or_path))
        folder = builtin if builtin is not None else Path(name_or_path)
        if not folder.is_dir():
            if builtin is not None:
                raise FileNotFoundError(f"the built-in {str(name_or_path)!r} checkpoint is missing at {folder}; "
                                        "restore it from git (git checkout -- model/weights) or retrain it "
                                        "(docs/EVALUATION.md)")
            raise FileNotFoundError(f"model {str(name_or_path)!r} is neither one of {list(BUILTIN_MODELS)} nor a "
                                    "checkpoint folder")
        config = load_config(folder)
        state = read_safetensors(folder)
        tokenizer = load_tokenizer(folder)
        name = str(name_or_path) if builtin is not None else folder.name
    config._attn_implementation = attn_implementation
    dtype = _resolve_dtype(dtype, config, device)
    digest = _weights_digest(state)
    model = build_from_state(config, state, dtype, device)
    return VideoXL(model, tokenizer, name, digest, vision_batch_frames=vision_batch_frames)

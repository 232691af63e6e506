"""Training Video-XL: the training forward (the inference forward with gradients), the loss, the
curriculum over compression ratios, parameter groups, and a fresh model to train from.

The training pass is `VideoXL.encode_memory` (sink, windows with interleaved VSTs, only the VSTs'
K/V kept after each window) followed, for every question/answer turn, by the question and the answer
tokens against that memory, exactly as `VideoXL.next_token_logits` / `score_options` answer from an
archived memory. Gradients flow from the answer tokens through the kept VST K/V into every earlier
window (and, when trainable, the projector and the vision tower). The loss is the cross-entropy on
the answer tokens and the `<|im_end|>` that closes them (LLaVA's convention: the human turn and the
prompt are masked). Each turn of a multi-turn LLaVA sample is a separate question against the same
memory, which is how vxl answers (`vxl ask` asks every question afresh from the archive).

Curriculum (Video-XL paper section 3.3; the released configs' `beacon_ratio` list with
`beacon_ratio_mix: step-random`): a schedule of ratio sets by optimizer step, e.g.
`{0: [2, 4], 300: [2, 4, 8, 12, 16]}`; each window of each sample draws its ratio from the set in
force, from a generator seeded by `(seed, step, sample index, window index)`.

No prefect, no ray here (DESIGN.md); the distributed loop is `tasks.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .plan import ChunkPlan, PlannedWindow

#: Parameter groups selectable for training (`trainable_parameters`), by checkpoint-name rule.
PARTS: tuple[str, ...] = ("vst", "llm", "projector", "vision")


@dataclass(frozen=True)
class Turn:
    """One question and its answer text (the LLaVA human/gpt pair, `<image>` removed)."""

    question: str
    answer: str


@dataclass
class TurnLoss:
    """Summed cross-entropy (nats) over `num_tokens` answer tokens, and their logits `(num_tokens, V)`."""

    loss_sum: torch.Tensor
    num_tokens: int
    logits: torch.Tensor


def answer_token_ids(vx, answer: str) -> list[int]:
    """Target ids of an answer: its tokens then `<|im_end|>` (what the chat template closes a turn with).

    Raises:
        ValueError: an empty answer.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("answer is empty: every training turn needs an answer text")
    eos = vx.config.eos_token_id if isinstance(vx.config.eos_token_id, int) else vx.config.eos_token_id[0]
    return vx._encode_text(answer) + [int(eos)]


def turn_logits(vx, memory, question: str, answer_ids: list[int]) -> torch.Tensor:
    """Teacher-forced float32 logits `(len(answer_ids), V)`: row i predicts `answer_ids[i]`.

    The question (the template text after `<image>`) and `answer_ids[:-1]` run in one pass after
    the memory (positions `M ..`), so row 0 is what `VideoXL.next_token_logits(memory, question)`
    computes. Runs under the caller's grad mode.
    """
    ids = vx._question_ids(memory, question, len(answer_ids))
    vx._check_memory(memory)
    cache = vx.model.rotated_cache(memory.kv().to(vx.device, vx.dtype))
    feed = ids + list(answer_ids[:-1])
    return vx.model.step(vx._embed_ids(feed), cache, logits_for_last=len(answer_ids))  # (A, V) float32


LOSS_WEIGHTINGS = ("token", "turn")
"""How `sample_loss` averages a sample's answer tokens: `token` (every answer token counts the same,
LLaVA's and Video-XL's loss) or `turn` (each question's mean token loss, then the mean over the
sample's questions, so a one-word answer weighs as much as a 90-token caption)."""


def sample_loss(vx, frames, plan: ChunkPlan, turns: list[Turn], *, checkpoint_windows: bool = False,
                weighting: str = "token") -> tuple[torch.Tensor, int, list[TurnLoss]]:
    """The training forward of one sample: encode `frames` with `plan`, then every turn against the memory.

    Args:
        vx: a `VideoXL` (its module in train or eval mode, parameters trainable or not).
        frames: uint8 `(F, H, W, 3)` sampled frames (any size; `(F, S, S, 3)` skips the resize).
        plan: a `ChunkPlan` covering the F frames.
        turns: at least one question/answer turn.
        checkpoint_windows: recompute each window in backward (`VideoXL.encode_memory`).
        weighting: `token` or `turn` (`LOSS_WEIGHTINGS`).
    Returns:
        `(loss, num_tokens, per_turn)`: `loss` is the sample's mean cross-entropy per answer token
        (`token`) or the mean over turns of each turn's mean per token (`turn`), a 0-dim float32
        tensor with grad when grad is enabled; `num_tokens` the answer tokens counted, `per_turn`
        each turn's summed loss and logits.
    Raises:
        ValueError: no turns, an empty question or answer, bad frames or plan (see `VideoXL.encode`),
            an unknown `weighting`.
    """
    if not turns:
        raise ValueError("a training sample needs at least one question/answer turn")
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    memory = vx.encode_memory(frames, plan, checkpoint_windows=checkpoint_windows)
    per_turn = []
    total = None
    count = 0
    for turn in turns:
        target = answer_token_ids(vx, turn.answer)
        logits = turn_logits(vx, memory, turn.question, target)
        tgt = torch.tensor(target, device=logits.device)
        loss_sum = torch.nn.functional.cross_entropy(logits, tgt, reduction="sum")
        per_turn.append(TurnLoss(loss_sum, len(target), logits))
        part = loss_sum if weighting == "token" else loss_sum / len(target)
        total = part if total is None else total + part
        count += len(target)
    return total / (count if weighting == "token" else len(turns)), count, per_turn


FRAME_POOLS = ("max", "token")
"""How `frame_label_loss` reads a frame's visual tokens: `max` (one prediction per frame, from the
max over its tokens) or `token` (every token predicts the frame's labels)."""


def frame_label_logits(vx, frames, head: torch.nn.Linear, pool: str = "max") -> tuple[torch.Tensor, int]:
    """`head`'s float32 logits over a frame's visual tokens (`VideoXL._vision_features`, under the
    caller's grad mode): `(F, K)` for `pool="max"` (the max over each frame's tokens), `(F * N, K)`
    frame-major for `pool="token"` (one row per token; labels repeat each frame's N times). Also
    returns N, the rows per frame (1 for `max`).

    Raises:
        ValueError: an unknown `pool`, or bad frames (see `VideoXL.encode`).
    """
    if pool not in FRAME_POOLS:
        raise ValueError(f"pool must be one of {FRAME_POOLS}, got {pool!r}")
    frames = vx._check_frames(frames)
    f = int(frames.shape[0])
    feats = vx._vision_features(frames)  # (F * N, C)
    tokens = feats.shape[0] // f
    if pool == "max":
        return head(feats.view(f, tokens, feats.shape[-1]).amax(dim=1).float()), 1
    return head(feats.float()), tokens


def frame_label_loss(vx, frames, labels: dict[str, torch.Tensor], head: torch.nn.Linear,
                     groups: dict[str, int], pool: str = "max") -> torch.Tensor:
    """The vision pretraining objective (`--objective frames`): per-frame labels from the visual tokens.

    Each frame's visual tokens, as the LLM receives them (vision tower, projector, spatial pooling:
    `VideoXL._vision_features`), are classified by `head`, one softmax per label group:
    - `pool="max"`: the max over the frame's tokens, one prediction per frame. It rewards a token
      that carries a small object on its own, which the VSTs must then pick out of a window.
    - `pool="token"`: every token predicts the whole frame's labels (the loss is the mean over
      tokens). Each token then carries what the frame shows, as a pretrained CLIP's patch tokens
      carry global content, so a VST that averages a window (what its attention does before it is
      trained) already holds the object; docs/EVALUATION.md ("Ninth session") measures both.

    This stands in for the contrastive pretraining the real CLIP tower had (Video-XL starts from a
    pretrained CLIP ViT-L/14-336); the toy tower starts from random weights.

    Args:
        vx: a `VideoXL`.
        frames: uint8 `(F, H, W, 3)`.
        labels: per group, int64 `(F,)` class indices, -1 where the frame has no label.
        head: `Linear(hidden_size, sum(groups.values()))`.
        groups: group name -> number of classes, in the order of `head`'s outputs.
        pool: `max` or `token` (`FRAME_POOLS`).
    Returns:
        0-dim float32: the sum over groups of the mean cross-entropy over the frames (`max`) or the
        tokens (`token`) labelled in that group (groups with no labelled frame add nothing).
    Raises:
        ValueError: a label array whose length is not F, no group with a labelled frame, or an
            unknown `pool`.
    """
    logits, tokens = frame_label_logits(vx, frames, head, pool)
    f = int(logits.shape[0]) // tokens
    total, start = None, 0
    for name, k in groups.items():
        y = labels[name].to(logits.device)
        if y.shape != (f,):
            raise ValueError(f"labels[{name!r}] has shape {tuple(y.shape)}, expected ({f},)")
        y = y.repeat_interleave(tokens)  # a no-op for `max` (one row per frame)
        if bool((y >= 0).any()):
            loss = torch.nn.functional.cross_entropy(logits[:, start : start + k], y, ignore_index=-1)
            total = loss if total is None else total + loss
        start += k
    if total is None:
        raise ValueError("no frame has a label in any group")
    return total


def question_from_human(value: str) -> str:
    """A LLaVA human turn -> the question text vxl asks (`<image>` marker and its newline removed).

    Raises:
        ValueError: the turn is empty once the marker is removed.
    """
    text = value.replace("<image>\n", "").replace("<image>", "").strip()
    if not text:
        raise ValueError("human turn has no question besides <image>")
    return text


def conversation_turns(conversations: list[dict]) -> list[Turn]:
    """LLaVA `conversations` (`[{"from": "human", "value"}, {"from": "gpt", "value"}, ...]`) -> turns.

    Raises:
        ValueError: naming the entry that is not a human/gpt alternation.
    """
    turns = []
    if not conversations or len(conversations) % 2:
        raise ValueError(f"conversations must alternate human/gpt turns, got {len(conversations or [])} entries")
    for i in range(0, len(conversations), 2):
        h, g = conversations[i], conversations[i + 1]
        if h.get("from") != "human" or g.get("from") != "gpt":
            raise ValueError(f"conversations[{i}:{i + 2}] are from {h.get('from')!r}, {g.get('from')!r}; expected "
                             "'human' then 'gpt'")
        turns.append(Turn(question_from_human(str(h.get("value", ""))), str(g.get("value", "")).strip()))
    return turns


# -- curriculum ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curriculum:
    """Ratio sets by optimizer step, and the per-window draw (`beacon_ratio_mix: step-random`).

    Attributes:
        stages: `((first_step, (ratios...)), ...)`, first stage at step 0, steps increasing.
        seed: seeds every draw (with the step, the sample index and the window index).
    """

    stages: tuple[tuple[int, tuple[int, ...]], ...] = ((0, (2, 4)), (300, (2, 4, 8, 12, 16)))
    seed: int = 0

    def __post_init__(self):
        if not self.stages or self.stages[0][0] != 0:
            raise ValueError(f"curriculum must start at step 0, got {self.stages}")
        steps = [s for s, _ in self.stages]
        if steps != sorted(set(steps)):
            raise ValueError(f"curriculum stage steps must increase, got {steps}")
        for s, ratios in self.stages:
            if not ratios or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ratios):
                raise ValueError(f"curriculum stage at step {s}: ratios must be positive integers, got {ratios}")

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> Curriculum:
        """`"0:2,4;300:2,4,8,12,16"` -> Curriculum. A single set `"16"` means direct training.

        Raises:
            ValueError: naming the malformed part.
        """
        stages = []
        for part in text.split(";"):
            part = part.strip()
            if not part:
                continue
            step, _, ratios = part.rpartition(":")
            try:
                stages.append((int(step) if step else 0, tuple(int(r) for r in ratios.split(","))))
            except ValueError:
                raise ValueError(f"curriculum part {part!r}: expected STEP:R1,R2,... (e.g. 0:2,4;300:2,4,8)") from None
        return cls(tuple(stages), seed)

    def ratios_at(self, step: int) -> tuple[int, ...]:
        """The ratio set in force at optimizer step `step`."""
        current = self.stages[0][1]
        for first, ratios in self.stages:
            if step >= first:
                current = ratios
        return current

    def rng(self, step: int, sample: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step, sample, 0xC0])

    def fixed_plan(self, num_frames: int, step: int, sample: int, *, tokens_per_frame: int,
                   window_tokens: int) -> ChunkPlan:
        """Windows of `window_tokens` (as `plan_fixed`), each with a ratio drawn from `ratios_at(step)`."""
        from .plan import plan_fixed

        base = plan_fixed(num_frames, tokens_per_frame=tokens_per_frame, window_tokens=window_tokens, ratio=1)
        ratios = self.ratios_at(step)
        g = self.rng(step, sample)
        picks = [int(ratios[int(i)]) for i in g.integers(len(ratios), size=len(base.windows))]
        windows = tuple(PlannedWindow(w.frame_start, w.frame_end, r) for w, r in zip(base.windows, picks, strict=True))
        return ChunkPlan(windows, tokens_per_frame, "fixed", {"window_tokens": window_tokens, "ratios": picks,
                                                              "curriculum_step": step})

    def dynamic_plan(self, embeddings, step: int, sample: int, *, tokens_per_frame: int,
                     window_tokens: int) -> ChunkPlan:
        """The `dynamic` planner (CLIP windows and ratios) with the ratio set in force and a target
        ratio drawn from it, as training with dynamic chunking must match dynamic testing."""
        from .dynamic import plan_dynamic

        ratios = self.ratios_at(step)
        target = int(ratios[int(self.rng(step, sample).integers(len(ratios)))])
        return plan_dynamic(embeddings, tokens_per_frame=tokens_per_frame, window_tokens=window_tokens,
                            target_ratio=target, ratios=sorted(ratios))

    def to_dict(self) -> dict:
        return {"stages": [[s, list(r)] for s, r in self.stages], "seed": self.seed, "mix": "step-random"}


# -- parameters, schedule -------------------------------------------------------------------------


def part_of(name: str) -> str:
    """The `PARTS` group of a module parameter name."""
    if "beacon_" in name:
        return "vst"
    if ".vision_tower." in name or name.startswith("model.vision_tower"):
        return "vision"
    if ".mm_projector." in name or name.startswith("model.mm_projector"):
        return "projector"
    return "llm"


def trainable_parameters(module: torch.nn.Module, parts, lr: float, vision_lr: float | None = None,
                         weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups for `parts` (subset of `PARTS`; `llm` includes the VST parameters, as
    in Video-XL's LLM training); everything else is frozen (`requires_grad=False`). The vision
    tower gets `vision_lr` (Video-XL's `mm_vision_tower_lr`) when given. Norms and biases get no
    weight decay.

    Raises:
        ValueError: an unknown part, or no parameter selected.
    """
    parts = set(parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)}; choose from {PARTS}")
    if "llm" in parts:
        parts.add("vst")
    groups: dict[tuple[float, float], list] = {}
    for name, p in module.named_parameters():
        part = part_of(name)
        p.requires_grad_(part in parts)
        if not p.requires_grad:
            continue
        g_lr = vision_lr if (part == "vision" and vision_lr is not None) else lr
        wd = 0.0 if (p.dim() < 2 or "norm" in name) else weight_decay
        groups.setdefault((g_lr, wd), []).append(p)
    if not groups:
        raise ValueError(f"no trainable parameter in parts {sorted(parts)}")
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warmup over `warmup` steps, then cosine to `min_ratio`
    at `total` (the schedule of Video-XL's and LLaVA's training scripts, `cosine` with warmup)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# -- a fresh model --------------------------------------------------------------------------------


def init_state(config, seed: int) -> dict[str, torch.Tensor]:
    """Random fp32 weights for `config` in checkpoint names: normal(0, `initializer_range`) for
    matrices and embeddings (transformers' Qwen2 init), zero biases, unit norms; the beacon
    projections copy `{q,k,v}_proj` and the beacon embedding the EOS row (Video-XL's init, see
    `model.checkpoint`). Each tensor from its own generator seeded by `seed` and its name.
    """
    import re
    import zlib

    from .checkpoint import to_checkpoint_keys
    from .modeling import VideoXLForCausalLM

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in to_checkpoint_keys(VideoXLForCausalLM(config).state_dict()).items()}
    std = float(getattr(config, "initializer_range", 0.02))
    state = {}
    for name, shape in sorted(shapes.items()):
        if "beacon_" in name:
            continue  # Video-XL's init below
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if re.search(r"(layernorm|norm|layer_norm|pre_layrnorm|post_layernorm)\.weight$", name):
            state[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = std * torch.randn(shape, generator=g)
    return state  # build_from_state fills beacon_{q,k,v}_proj and beacon_embed_tokens from these

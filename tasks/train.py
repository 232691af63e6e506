"""Training Video-XL: data preparation (decode once, cache), the training loop, checkpoints.

Data sources (`TrainConfig.data`, any mix):
- `toy:COUNT[:SEED][:scenes=N][:seconds=A-B][:types=T1,T2]`: COUNT toy-family videos (`tasks.samples.plan_toy_video`,
  seeds `SEED * 1_000_000 + i`), rendered at their own resolution at the sampled times only (no file
  is written) and resized as the model resizes; questions from `tasks.qa`, fresh ones every epoch.
  `scenes` and `seconds` narrow the family (`plan_toy_video`'s `num_scenes` and `scene_s`), e.g.
  `toy:400:2:scenes=2:seconds=2-4`: short videos, on which a fresh LLM first learns to find the
  object (docs/EVALUATION.md, stage 3). `types` asks that source's videos only those question types
  (`toy_source_types`), e.g. object questions on the short videos and every type on the others.
- a folder: every video in it (`tasks.video.discover`) that has a ground-truth JSON next to it
  (`vxl sample-videos`, `tasks.samples.make_toy_videos`), decoded as the index decodes; questions
  from `tasks.qa`.
- a `.json`/`.jsonl` file of LLaVA samples (`{"id", "video", "conversations"}`, what `vxl vico`
  writes), videos relative to `TrainConfig.video_root` (default: the file's folder).

Frames are sampled as at inference (`fps`, `max_frames`, `tasks.video.decode`), resized to the
model's input (`VideoXL.model_frames`) and cached as `.npy` under `cache_dir`, once; every epoch
and every worker reads the cache.

The loop (`train_loop`) runs in one process per worker (Ray Train, `tasks.train_ray`, or directly
for one worker): DDP (`torch.nn.parallel.DistributedDataParallel`, through Ray Train's
`prepare_model`) over a `TrainForward` module whose forward is `model.training.sample_loss`.
Global batch `batch_size` samples per optimizer step; worker `r` of `W` takes samples `r, r + W, ...`
of the step, and the loss is scaled so that DDP's gradient average equals the mean over the
global batch: the parameters after N steps do not depend on the number of workers (tested).

Checkpoints (`out/checkpoints/step_NNNNNN/`, every `checkpoint_every` steps and at the end):
the model in Video-XL's layout (`VideoXL.save_pretrained`) plus `trainer_state.pt` (optimizer,
scheduler, step, losses). A restarted run resumes from the newest complete checkpoint; data order,
question draws and ratios are functions of (seed, step, sample), so the loss curve continues as if
never interrupted (tested).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.options import JobOptions, flag, option
from tasks.qa import QUESTION_TYPES, TRAINING_TYPES

log = logging.getLogger(__name__)

TOY_INIT = "toy-init"
OBJECTIVES = ("answers", "frames")
TOY_VOCAB = 640  # learned BPE tokens of the toy tokenizer (3 ChatML tokens follow)


class TrainError(Exception):
    """A training run cannot start or continue; `kind` is `usage`, `data` or `model`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # picklable with both arguments: Ray ships a worker's error to the driver
        return (type(self), (self.kind, str(self)))


class TrainConfig(JobOptions):
    """Everything a training run depends on: the one options model of the training job (issue 15),
    read by `vxl train` (its flags, `tasks.options.cli_command`), the `train-videoxl` flow (its
    `options` parameter) and `tasks.train_ray.run_training`; stored in every checkpoint's
    `trainer_state.pt` and in the saved model's config.json under `vxl_training`.

    Each field's description is its documentation (and the CLI help). `data` sources: the module
    doc. `model`: `toy-init` (a fresh `toy` architecture, `model.config.toy_config`, seeded) or a
    Video-XL checkpoint folder to fine-tune. `objective` `frames` is vision pretraining
    (`model.training.frame_label_loss`: per-frame ground-truth labels, `tasks.samples.frame_labels`;
    ground-truth sources only; trains only the `vision`/`projector` parts of `trainable`).
    Construction checks types (pydantic `ValidationError`); `validate()` raises
    `TrainError(kind="usage")` for values no run can satisfy.
    """

    out: str = option(..., "--out", "-o", help="Run folder: checkpoints, frame cache, train_log.jsonl, "
                      "final/ (the trained model).")
    data: list[str] = option(None, "--data", default_factory=lambda: ["toy:400"], help="Training data "
                             "(repeatable): toy:COUNT[:SEED][:scenes=N][:seconds=A-B][:types=T1,T2], a folder of videos with "
                             "NAME.json ground truth, or a LLaVA .json/.jsonl. Default toy:400.")
    model: str = option(TOY_INIT, "--model", help="'toy-init' (a fresh toy-size model; "
                        "toy-init:image_size=N,window_frames=N,layers=N,compressor=vst|pool to change its shape, pool being "
                        "the pooling baseline) or a Video-XL checkpoint folder to fine-tune.")
    init_vision: str | None = option(None, "--init-vision", help="A checkpoint folder whose vision tower and "
                                     "projector replace --model's before training (as LLaVA/Video-XL load "
                                     "pretrain_mm_mlp_adapter; e.g. --model toy-init on a tower pretrained with "
                                     "--objective frames).")
    video_root: str | None = option(None, "--video-root", help="Folder of a LLaVA file's relative video paths "
                                    "(default: the file's folder).")
    steps: int = option(1000, "--steps", help="Optimizer steps.")
    batch_size: int = option(8, "--batch-size", help="Samples per step over all workers (a multiple of --workers).")
    lr: float = option(1e-3, "--lr", help="AdamW learning rate (warmup, then cosine).")
    vision_lr: float | None = option(None, "--vision-lr", help="The vision tower's learning rate (Video-XL's "
                                     "mm_vision_tower_lr; default --lr).")
    weight_decay: float = option(0.01, "--weight-decay", help="AdamW weight decay.")
    warmup_steps: int = option(50, "--warmup-steps", help="Linear warmup steps.")
    min_lr_ratio: float = option(0.1, "--min-lr-ratio", help="Floor of the cosine schedule, as a fraction of --lr.")
    grad_clip: float | None = option(1.0, "--grad-clip", help="Maximum gradient norm.")
    trainable: list[str] = option(None, "--trainable", split=",", default_factory=lambda: ["llm", "projector", "vision"],
                                  help="Comma-separated parts to train: vst, llm (includes vst), projector, vision.")
    curriculum: str = option("0:2,4;300:2,4,8,12,16", "--curriculum", help="Compression-ratio sets by step: "
                             "'STEP:R1,R2;STEP:...'; each window draws its ratio from the set in force.")
    planner: str = option("fixed", "--planner", help="Chunk planner while training: fixed, dynamic (CLIP windows "
                          "and ratios) or mixed (each sample draws one).")
    question_types: list[str] = option(None, "--question-types", split=",", default_factory=lambda: list(QUESTION_TYPES),
                                       help="Comma-separated tasks.qa question types drawn for ground-truth videos, describe "
                                       "(a dense caption), event_label (which numbered line is a quoted event) or event_pair "
                                       "(which of two numbered events is first; default: every scored type; a type "
                                       "given twice is drawn twice as often).")
    questions_per_sample: int = option(4, "--questions-per-sample", help="Question/answer turns per video and step "
                                       "(each against the same memory).")
    objective: str = option("answers", "--objective", help="answers (the answer-token loss: Video-XL's training) or "
                            "frames (vision pretraining: the vision tower and projector learn each frame's "
                            "ground-truth background and object; truth-JSON data only).")
    loss_weighting: str = option("token", "--loss-weighting", help="token (every answer token of a sample counts "
                                 "the same: LLaVA's loss) or turn (each question's mean token loss, averaged over the "
                                 "sample's questions: a one-word answer weighs as much as a long caption).")
    frame_pool: str = option("max", "--frame-pool", help="With --objective frames: max (one prediction per frame "
                             "from the max over its visual tokens) or token (every visual token predicts its frame's "
                             "labels, so each token carries what the frame shows).")
    fps: float = option(1.0, "--fps", help="Sampled frames per second of video (as vxl index).")
    max_frames: int = option(128, "--max-frames", help="At most this many frames per video.")
    checkpoint_every: int = option(100, "--checkpoint-every", help="Steps between checkpoints (0: only at the end).")
    keep_checkpoints: int = option(2, "--keep-checkpoints", help="Newest checkpoints kept.")
    grad_checkpointing: bool = option(False, "--grad-checkpointing", help="Recompute each window in backward (less "
                                      "memory, about a third more compute).")
    num_workers: int = option(1, "--workers", help="Ray Train workers (DDP); one CPU, or one GPU with --gpu, each.")
    use_gpu: bool = option(False, "--gpu", help="One GPU per worker (NCCL); bf16 autocast.")
    strategy: str = option("ddp", "--strategy", help="ddp, or fsdp (GPU only) for models that do not fit one GPU.")
    precision: str = option("auto", "--precision", help="auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16.")
    seed: int = option(0, "--seed", help="Seeds the initial weights, data order, questions and ratios.")
    cache_dir: str | None = option(None, "--cache-dir", help="Frame cache (default OUT/cache).")

    @classmethod
    def usage_error(cls, message: str) -> TrainError:
        return TrainError("usage", message)

    def validate(self) -> None:
        """Raise TrainError(kind="usage") naming the option that no run can satisfy."""
        from model.training import FRAME_POOLS, LOSS_WEIGHTINGS, PARTS, Curriculum

        def bad(msg: str):
            raise TrainError("usage", msg)

        for name in ("steps", "batch_size", "num_workers", "questions_per_sample", "max_frames", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{flag(TrainConfig, name)} must be an integer >= 1, got {v!r}")
        for name in ("lr", "fps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(f"{flag(TrainConfig, name)} must be a finite number > 0, got {v!r}")
        for name in ("vision_lr", "grad_clip"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                bad(f"{flag(TrainConfig, name)} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad(f"--weight-decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            bad(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0:
            bad("--warmup-steps and --checkpoint-every must be >= 0")
        if self.batch_size % self.num_workers:
            bad(f"--batch-size {self.batch_size} is not a multiple of --workers {self.num_workers}")
        if set(self.trainable) - set(PARTS) or not self.trainable:
            bad(f"--trainable {self.trainable}: choose from {list(PARTS)}")
        if self.planner not in ("fixed", "dynamic", "mixed"):
            bad(f"--planner must be fixed, dynamic or mixed, got {self.planner!r}")
        if set(self.question_types) - set(TRAINING_TYPES) or not self.question_types:
            bad(f"--question-types {self.question_types}: choose from {list(TRAINING_TYPES)}")
        if self.objective not in OBJECTIVES:
            bad(f"--objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            bad(f"--loss-weighting must be one of {list(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}")
        if self.frame_pool not in FRAME_POOLS:
            bad(f"--frame-pool must be one of {list(FRAME_POOLS)}, got {self.frame_pool!r}")
        if self.objective == "frames" and not set(self.trainable) & {"vision", "projector"}:
            bad(f"--objective frames trains the vision tower and the projector; --trainable {self.trainable} has neither")
        if self.strategy not in ("ddp", "fsdp"):
            bad(f"--strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            bad(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not self.data:
            bad("no training data: give --data toy:COUNT, a folder of videos with truth JSON, or a LLaVA .json")
        for src in self.data:
            if src.startswith("toy:"):
                parse_toy_source(src)  # a malformed toy source is a usage error before Ray starts
        try:
            Curriculum.parse(self.curriculum, self.seed)
        except ValueError as exc:
            bad(f"--curriculum: {exc}")
        if self.model.startswith(TOY_INIT):
            parse_toy_init(self.model)
        elif not Path(self.model).is_dir():
            bad(f"--model {self.model!r} is neither {TOY_INIT!r} nor a checkpoint folder")
        if self.init_vision is not None and not Path(self.init_vision).is_dir():
            bad(f"--init-vision {self.init_vision!r} is not a checkpoint folder")

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "cache"

    def to_dict(self) -> dict:
        return self.model_dump()

    def with_absolute_paths(self) -> TrainConfig:
        """This config with every local path absolute (`out`, `cache_dir`, a checkpoint `model`,
        `video_root`, file and folder `data` sources): Ray Train workers run in another folder."""
        def ab(p: str | None) -> str | None:
            return str(Path(p).resolve()) if p else p

        return self.model_copy(update=dict(
            out=ab(self.out), cache_dir=ab(self.cache_dir), video_root=ab(self.video_root),
            init_vision=ab(self.init_vision),
            model=self.model if self.model.startswith(TOY_INIT) else ab(self.model),
            data=[d if d.startswith("toy:") else ab(d) for d in self.data]))


# -- the model ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def toy_corpus() -> list[str]:
    """Text the toy tokenizer is trained on: the prompt template, every question and answer form
    of `tasks.qa`, the sample videos' names and captions, digits."""
    from model.tokenizer import PROMPT_TEMPLATE
    from tasks.qa import make_questions
    from tasks.samples import BACKGROUNDS, COLORS, POSITIONS, SHAPES, plan_toy_video

    lines = [PROMPT_TEMPLATE.format(question="")]
    rng = np.random.default_rng(12345)
    for seed in range(60):
        truth = plan_toy_video(10_000_000 + seed)
        for q in make_questions(truth, rng):
            lines.append(PROMPT_TEMPLATE.format(question=q.question) + q.answer + "<|im_end|>")
            lines.extend(q.options)
        lines.extend(e["text"] for e in truth["events"])
    names = [*BACKGROUNDS, *COLORS, *SHAPES, *POSITIONS]
    lines += [" ".join(names), " ".join(f" {n}" for n in names), "0 1 2 3 4 5 6 7 8 9 10, then A. B. C. D."]
    lines += ["".join(chr(c) for c in range(32, 127))]
    return lines


def parse_toy_init(spec: str) -> dict:
    """`toy-init` or `toy-init:image_size=32,window_frames=16,layers=6,compressor=pool` -> `toy_config`
    keyword arguments (`compressor=pool`: the pooling baseline of issue 13's ablation 1; `layers`:
    the LLM's decoder layers).

    Raises:
        TrainError(kind="usage"): not of that form.
    """
    from model.config import COMPRESSORS

    if spec == TOY_INIT:
        return {}
    head, _, rest = spec.partition(":")
    bad = TrainError("usage", f"--model {spec!r}: expected {TOY_INIT} or "
                     f"{TOY_INIT}:image_size=N,window_frames=N,layers=N,compressor={'|'.join(COMPRESSORS)}")
    if head != TOY_INIT or not rest:
        raise bad
    out: dict = {}
    for part in rest.split(","):
        k, _, v = part.partition("=")
        if k in ("image_size", "window_frames", "layers") and v.isdigit() and int(v) > 0:
            out[k] = int(v)
        elif k == "compressor" and v in COMPRESSORS:
            out[k] = v
        else:
            raise bad
    return out


def fresh_toy_model(seed: int = 0, device=None, **arch):
    """A `toy` VideoXL with fresh weights (`model.training.init_state`) and the toy tokenizer;
    `arch`: `toy_config` keyword arguments (image_size, window_frames, compressor, layers)."""
    import torch

    from model.checkpoint import build_from_state
    from model.config import toy_config
    from model.tokenizer import SPECIAL_TOKENS, bpe_tokenizer_json, fast_tokenizer
    from model.training import init_state
    from model.video_xl import VideoXL, _weights_digest

    tok = fast_tokenizer(bpe_tokenizer_json(toy_corpus(), TOY_VOCAB))
    bos, _, eos = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    vocab = -(-len(tok) // 64) * 64
    config = toy_config(vocab, bos, eos, **arch)
    config._attn_implementation = "sdpa"
    state = init_state(config, seed)
    device = torch.device(device or "cpu")
    model = build_from_state(config, state, torch.float32, device)
    return VideoXL(model, tok, "toy", _weights_digest(model.state_dict()))


def load_for_training(cfg: TrainConfig, device=None):
    """The model a run starts from (before any checkpoint of the run is restored)."""
    from model.video_xl import load_model

    if cfg.model.startswith(TOY_INIT):
        vx = fresh_toy_model(cfg.seed, device, **parse_toy_init(cfg.model))
    else:
        vx = load_model(cfg.model, dtype="float32", device=device)
    if cfg.init_vision:
        vx = load_vision_from(vx, Path(cfg.init_vision))
    return vx


def load_vision_from(vx, folder: Path):
    """`vx` with its vision tower and projector (`model.training.part_of` in {vision, projector})
    replaced by those of the checkpoint `folder` (the module is changed in place; the returned
    `VideoXL` carries the new weights' fingerprint). The LLM and the VST parameters are untouched.

    Raises:
        TrainError(kind="model"): the folder has no weights, or lacks one of these tensors, or has
            one of another shape (another architecture).
    """
    from model.checkpoint import read_safetensors, to_module_keys
    from model.training import part_of
    from model.video_xl import VideoXL, _weights_digest

    try:
        weights = to_module_keys(read_safetensors(folder))
    except FileNotFoundError as exc:
        raise TrainError("model", f"--init-vision {folder}: {exc}") from None
    state = vx.model.state_dict()
    wanted = [k for k in state if part_of(k) in ("vision", "projector")]
    missing = [k for k in wanted if k not in weights]
    other = [k for k in wanted if k in weights and weights[k].shape != state[k].shape]
    if not wanted or missing or other:
        raise TrainError("model", f"--init-vision {folder}: not the vision tower and projector of this model "
                                  f"({len(missing)} missing, e.g. {missing[:2]}; {len(other)} of another shape, "
                                  f"e.g. {other[:2]})")
    vx.model.load_state_dict({k: weights[k] for k in wanted}, strict=False)
    return VideoXL(vx.model, vx.tokenizer, vx.name, _weights_digest(vx.model.state_dict()))


# -- data -----------------------------------------------------------------------------------------


@dataclass
class Item:
    """One training video: cached frames and either a ground truth (questions drawn per epoch) or
    fixed LLaVA turns."""

    key: str
    frames: str  # .npy path, uint8 (F, S, S, 3)
    source: str
    truth: dict | None = None
    turns: list[list[str]] | None = None  # [[question, answer], ...]
    embeddings: str | None = None  # .npy float32 (F, E) for the dynamic planner


def _safe_key(text: str) -> str:
    import xxhash

    return xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogateescape"))


def _file_key(path: Path) -> str:
    """Cache key of a video file: its path, size and modification time (a changed file is decoded again)."""
    try:
        st = path.stat()
        return _safe_key(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    except OSError:
        return _safe_key(str(path))


def prepare_data(cfg: TrainConfig, vx=None, progress: Callable[[int, int, str], None] | None = None) -> list[Item]:
    """Decode (or render) every training video once into the frame cache; the list of items.

    Idempotent: cached videos are not decoded again. Writes the run's item list to
    `manifest_path(cfg, crop_size)`, named by what it depends on, so runs with other data can share
    one `--cache-dir` (frames are keyed by video and sampling; the manifests do not overwrite
    each other).

    Raises:
        TrainError(kind="data"): a source that does not exist or holds nothing usable (named),
            a LLaVA entry without a video or with malformed conversations (named by id).
    """
    from model.training import conversation_turns

    vx = vx or load_for_training(cfg)
    cache = cfg.cache
    cache.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]], dict]] = []
    for src in cfg.data:
        if src.startswith("toy:"):
            from tasks.samples import plan_toy_video

            count, base, plan_kw, tag = parse_toy_source(src)
            types = toy_source_types(src) or cfg.question_types
            unusable = []  # answer training: videos that can pose none of the source's question types
            for i in range(count):
                seed = base * 1_000_000 + i
                if cfg.objective == "answers" and not can_pose(plan_toy_video(seed, **plan_kw), types):
                    unusable.append(seed)
                    continue
                jobs.append((f"toy-{seed}{tag}", _toy_renderer(seed, cfg, plan_kw),
                             {"source": src, "seed": seed, "plan_kw": plan_kw}))
            if len(unusable) == count:
                raise TrainError("data", f"data source {src!r}: none of its {count} videos can pose a question of "
                                         f"the types {list(types)}; add a type they can pose (e.g. bg_start)")
            if unusable:
                log.warning("data source %r: %d of %d videos (seeds %s) can pose none of its question types; "
                            "left out", src, len(unusable), count, _seed_list(unusable))
            continue
        p = Path(src)
        if p.is_dir():
            from tasks.video import discover

            found = [v for v in discover([str(p)]) if Path(v.path).with_suffix(".json").is_file()]
            if not found:
                raise TrainError("data", f"{p}: no video with a ground-truth JSON next to it (NAME.json)")
            for v in found:
                jobs.append((f"file-{_file_key(Path(v.path))}", _file_decoder(str(v.path), cfg),
                             {"source": str(v.path), "truth_path": str(Path(v.path).with_suffix(".json"))}))
        elif p.is_file() and p.suffix in (".json", ".jsonl"):
            root = Path(cfg.video_root) if cfg.video_root else p.parent
            text = p.read_text()
            try:
                entries = [json.loads(x) for x in text.splitlines() if x.strip()] if p.suffix == ".jsonl" else json.loads(text)
            except json.JSONDecodeError as exc:
                raise TrainError("data", f"{p}: not valid JSON ({exc})") from None
            for n, e in enumerate(entries):
                if not isinstance(e, dict) or not e.get("video") or "conversations" not in e:
                    raise TrainError("data", f"{p}: entry {n} ({(e or {}).get('id') if isinstance(e, dict) else e!r}) "
                                             "needs 'video' and 'conversations'")
                try:
                    turns = [[t.question, t.answer] for t in conversation_turns(e["conversations"])]
                except ValueError as exc:
                    raise TrainError("data", f"{p}: entry {e.get('id', n)!r}: {exc}") from None
                video = root / e["video"]
                jobs.append((f"file-{_file_key(video)}", _file_decoder(str(video), cfg),
                             {"source": f"{p}#{e.get('id', n)}", "turns": turns}))
        else:
            raise TrainError("data", f"data source {src!r} is not toy:COUNT, a folder or a .json/.jsonl file")
    items: list[Item] = []
    want_emb = cfg.planner in ("dynamic", "mixed")
    clip = None
    # the cache key names what the frames depend on: source, sampling and the model's input size
    tag = f"{cfg.fps:g}fps-max{cfg.max_frames}-{vx.config.image_processor['crop_size']}px"
    for n, (key, load, meta) in enumerate(jobs):
        fpath = cache / f"{key}-{tag}.npy"
        epath = cache / f"{key}-{tag}.emb.npy"
        if not fpath.is_file() or (want_emb and not epath.is_file()):
            raw = load()
            if want_emb and not epath.is_file():
                if clip is None:
                    from model.clip_embed import ClipEmbedder
                    from tasks.index import TINY_CLIP

                    clip = ClipEmbedder(TINY_CLIP, device="cpu")
                np.save(epath, np.asarray(clip.embed_images(raw), dtype=np.float32))
            frames = vx.model_frames(raw).cpu().numpy()
            tmp = _partial_name(fpath)
            np.save(tmp, frames)
            os.replace(tmp, fpath)
        truth = meta.get("truth")
        if "truth_path" in meta:
            truth = json.loads(Path(meta["truth_path"]).read_text())
        elif "seed" in meta:
            from tasks.samples import plan_toy_video

            truth = plan_toy_video(meta["seed"], **meta["plan_kw"])
        items.append(Item(key=key, frames=str(fpath), source=meta["source"], truth=truth, turns=meta.get("turns"),
                          embeddings=str(epath) if want_emb else None))
        if progress:
            progress(n + 1, len(jobs), key)
    manifest = manifest_path(cfg, vx.config.image_processor["crop_size"])
    tmp = _partial_name(manifest)
    tmp.write_text(json.dumps([asdict(i) for i in items]))
    os.replace(tmp, manifest)
    return items


def can_pose(truth: dict, types) -> bool:
    """Whether the video of `truth` can pose at least one question of `types` (`tasks.qa.make_question`
    returns None for a type it cannot pose, e.g. `event_order` with fewer than 3 events; that depends
    on the truth only, not on the random draw)."""
    from tasks.qa import make_question

    rng = np.random.default_rng(0)
    return any(make_question(truth, t, rng) is not None for t in dict.fromkeys(types))


def _seed_list(seeds: list[int], shown: int = 5) -> str:
    head = ", ".join(str(x) for x in seeds[:shown])
    return head + (f" and {len(seeds) - shown} more" if len(seeds) > shown else "")


def _partial_name(path: Path) -> Path:
    """A temporary name next to `path`, unique to this process and call, for write-then-rename:
    two runs preparing the same video on one cache never write the same temporary file."""
    import uuid

    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def manifest_path(cfg: TrainConfig, crop_size: int) -> Path:
    """`CACHE/manifest-<digest>.json`: the item list of `cfg`'s data (sources, video root, sampling,
    CLIP embeddings or not) at the model's input size `crop_size` (pixels)."""
    import hashlib

    key = json.dumps([cfg.data, cfg.video_root, cfg.fps, cfg.max_frames, cfg.planner in ("dynamic", "mixed"),
                      int(crop_size)])
    return cfg.cache / f"manifest-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def parse_toy_source(src: str) -> tuple[int, int, dict, str]:
    """`toy:COUNT[:SEED][:scenes=N][:seconds=A-B][:types=T1,T2]` -> (count, seed base,
    `plan_toy_video` keyword arguments, cache-key suffix). `types` (`toy_source_types`) does not
    change the videos, so it is not in the cache key.

    Raises:
        TrainError(kind="usage"): a malformed source, unknown question types, or parameters
            `plan_toy_video` refuses.
    """
    count, base, plan_kw, tag, _ = _parse_toy(src)
    return count, base, plan_kw, tag


@functools.lru_cache(maxsize=256)
def toy_source_types(src: str) -> tuple[str, ...] | None:
    """The question types a `toy:...:types=T1,T2` source's videos are asked (in place of
    `TrainConfig.question_types` for that source; a type listed twice is drawn twice as often), or
    None when the source does not narrow them. E.g. object questions only on short videos
    (`toy:800:2:scenes=2:seconds=2-4:types=object_color,object_shape`), where every other type
    would teach a shortcut such as "the video ends with its second background" (docs/EVALUATION.md,
    stage 3)."""
    return _parse_toy(src)[4] if src.startswith("toy:") else None


def _parse_toy(src: str) -> tuple[int, int, dict, str, tuple[str, ...] | None]:
    from tasks.samples import plan_toy_video

    usage = f"data source {src!r}: expected toy:COUNT[:SEED][:scenes=N][:seconds=A-B][:types=T1,T2]"
    parts = src.split(":")[1:]
    plan_kw: dict = {}
    types: tuple[str, ...] | None = None
    try:
        count = int(parts[0])
        base = int(parts[1]) if len(parts) > 1 and "=" not in parts[1] else 0
        for part in parts[1 + (len(parts) > 1 and "=" not in parts[1]):]:
            key, _, value = part.partition("=")
            if key == "scenes" and "num_scenes" not in plan_kw:
                plan_kw["num_scenes"] = int(value)
            elif key == "seconds" and "scene_s" not in plan_kw:
                lo, _, hi = value.partition("-")
                plan_kw["scene_s"] = (float(lo), float(hi))
            elif key == "types" and types is None:
                types = tuple(t.strip() for t in value.split(",") if t.strip())
                if not types or set(types) - set(TRAINING_TYPES):
                    raise TrainError("usage", f"data source {src!r}: types must be among {list(TRAINING_TYPES)}")
            else:
                raise ValueError(part)
    except (IndexError, ValueError):
        raise TrainError("usage", usage) from None
    if count < 1 or base < 0:
        raise TrainError("usage", f"{usage}; COUNT >= 1 and SEED >= 0")
    try:
        plan_toy_video(base * 1_000_000, **plan_kw)
    except ValueError as exc:
        raise TrainError("usage", f"data source {src!r}: {exc}") from None
    tag = ""
    if "num_scenes" in plan_kw:
        tag += f"-scenes{plan_kw['num_scenes']}"
    if "scene_s" in plan_kw:
        tag += "-s{:g}to{:g}".format(*plan_kw["scene_s"])
    return count, base, plan_kw, tag, types


def _toy_renderer(seed: int, cfg: TrainConfig, plan_kw: dict | None = None):
    def render():
        from tasks.samples import plan_toy_video, render_frames
        from tasks.video import sample_indices

        truth = plan_toy_video(seed, **(plan_kw or {}))
        idx = sample_indices(truth["num_frames"], truth["fps"], fps=cfg.fps, max_frames=cfg.max_frames)
        return np.stack(list(render_frames(truth, only=idx)))

    return render


def _file_decoder(path: str, cfg: TrainConfig):
    def dec():
        from tasks.video import DecodeError, decode

        try:
            return decode(path, fps=cfg.fps, max_frames=cfg.max_frames).frames
        except (DecodeError, FileNotFoundError) as exc:
            raise TrainError("data", f"{path}: cannot decode ({exc}); fix or remove it from the training data") from None

    return dec


def sample_order(num_items: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Item indices of the global batch of `step`: epoch-wise seeded permutations, consumed in order."""
    out = []
    for c in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(c, num_items)
        perm = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(num_items)
        out.append(int(perm[pos]))
    return out


def sample_turns(item: Item, step: int, sample: int, cfg: TrainConfig):
    """The turns of one sample at `step`: fixed LLaVA turns, or `questions_per_sample` questions
    drawn from the truth (types shuffled by a generator seeded by (seed, step, sample)); the types
    are the source's own (`toy_source_types`) when it names them, else `cfg.question_types`."""
    from model.training import Turn
    from tasks.qa import make_questions

    if item.turns is not None:
        return [Turn(q, a) for q, a in item.turns]
    rng = np.random.default_rng([cfg.seed, step, sample, 0x9A])
    pool = toy_source_types(item.source) or cfg.question_types
    types = [pool[i] for i in rng.permutation(len(pool))]
    qs = make_questions(item.truth, rng, types)[: cfg.questions_per_sample]
    return [Turn(q.question, q.answer) for q in qs]


def sample_plan(vx, item: Item, frames_count: int, step: int, sample: int, cfg: TrainConfig):
    """The chunk plan of one sample at `step` (the curriculum's ratios; fixed or dynamic windows)."""
    from model.training import Curriculum

    cur = Curriculum.parse(cfg.curriculum, cfg.seed)
    geom = dict(tokens_per_frame=vx.config.tokens_per_frame, window_tokens=vx.config.beacon_window)
    planner = cfg.planner
    if planner == "mixed":
        planner = "dynamic" if cur.rng(step, sample).random() < 0.5 else "fixed"
    if planner == "dynamic":
        return cur.dynamic_plan(np.load(item.embeddings), step, sample, **geom)
    return cur.fixed_plan(frames_count, step, sample, **geom)


# -- the loop ---------------------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """What the loop needs from its launcher (Ray Train, or nothing for one local worker)."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    report: Callable[[dict, str | None], None] | None = None  # (metrics, checkpoint folder or None)
    prepare_model: Callable | None = None  # wraps the TrainForward module (DDP/FSDP)
    all_reduce_mean: Callable[[float], float] | None = None


def _train_forward_module():
    import torch

    class TrainForward(torch.nn.Module):
        """forward(frames, plan, turns) = `model.training.sample_loss` (so DDP/FSDP see the forward)."""

        def __init__(self, vx, checkpoint_windows: bool, weighting: str = "token"):
            super().__init__()
            self.net = vx.model
            self.__dict__["vx"] = vx  # not a submodule: the parameters are `net`'s
            self.checkpoint_windows = checkpoint_windows
            self.weighting = weighting

        def forward(self, frames, plan, turns):
            from model.training import sample_loss

            loss, ntok, _ = sample_loss(self.vx, frames, plan, turns, checkpoint_windows=self.checkpoint_windows,
                                        weighting=self.weighting)
            return loss

    return TrainForward


def _frame_forward_module():
    import torch

    class FrameForward(torch.nn.Module):
        """forward(frames, labels) = `model.training.frame_label_loss` (the head is a submodule, so
        DDP averages its gradients too)."""

        def __init__(self, vx, head, pool: str = "max"):
            super().__init__()
            self.net = vx.model
            self.head = head
            self.pool = pool
            self.__dict__["vx"] = vx

        def forward(self, frames, labels):
            from model.training import frame_label_loss
            from tasks.samples import FRAME_LABELS

            return frame_label_loss(self.vx, frames, labels, self.head, FRAME_LABELS, self.pool)

    return FrameForward


def _frame_head(vx, seed: int, device):
    """The classifier of `--objective frames`: `Linear(hidden_size, sum(FRAME_LABELS))`, seeded."""
    import torch

    from tasks.samples import FRAME_LABELS

    gen = torch.Generator().manual_seed(int(seed) + 0xF4A3)
    head = torch.nn.Linear(vx.config.hidden_size, sum(FRAME_LABELS.values()))
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.zero_()
    return head.to(device)


def _frame_label_tensors(item: Item, count: int, cfg: TrainConfig) -> dict:
    """`tasks.samples.frame_labels` of an item's cached frames (sampled as `tasks.video.sample_indices`)."""
    import torch

    from tasks.samples import frame_labels
    from tasks.video import sample_indices

    truth = item.truth
    idx = sample_indices(int(truth["num_frames"]), float(truth["fps"]), fps=cfg.fps, max_frames=cfg.max_frames)
    if len(idx) != count:
        raise TrainError("data", f"{item.source}: {count} cached frames, but sampling its ground truth gives "
                                 f"{len(idx)}; delete {cfg.cache} and rerun")
    return {k: torch.from_numpy(v) for k, v in frame_labels(truth, idx).items()}


def is_checkpoint_step(cfg: TrainConfig, step: int) -> bool:
    """Whether `train_loop` saves a checkpoint after optimizer step `step` (1-based): every
    `checkpoint_every` steps, and the last step."""
    return bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps


def checkpoint_dirs(out: str | Path) -> list[Path]:
    """Complete checkpoints of a run (`trainer_state.pt` written last), oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and (p / "trainer_state.pt").is_file())


def train_loop(cfg: TrainConfig, ctx: WorkerContext | None = None, items: list[Item] | None = None,
               on_step: Callable[[dict], None] | None = None) -> dict:
    """Train per `cfg` in this process (one worker of `ctx.world_size`). Returns the last metrics.

    Raises:
        TrainError: bad configuration or data; FloatingPointError when the loss becomes NaN/inf
            (names the step and the samples).
    """
    import contextlib

    import torch

    from model.training import trainable_parameters, warmup_cosine

    ctx = ctx or WorkerContext()
    cfg.validate()
    torch.manual_seed(cfg.seed)  # nothing random is drawn from it; set for third-party code
    device = torch.device(ctx.device)
    vx = load_for_training(cfg, device)
    resume = checkpoint_dirs(cfg.out)
    state = None
    if resume:
        from model.checkpoint import read_safetensors, to_module_keys

        last = resume[-1]
        weights = to_module_keys(read_safetensors(last))
        vx.model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=False)
        state = torch.load(last / "trainer_state.pt", map_location="cpu", weights_only=False)
    if items is None:
        manifest = manifest_path(cfg, vx.config.image_processor["crop_size"])
        if not manifest.is_file():
            raise TrainError("data", f"{manifest} not found: prepare the data first (tasks.train.prepare_data)")
        items = [Item(**d) for d in json.loads(manifest.read_text())]
    vx.model.train()
    head = None
    parts = list(cfg.trainable)
    if cfg.objective == "frames":
        head = _frame_head(vx, cfg.seed, device)
        if state is not None:
            head.load_state_dict(state["head"])
        parts = [p for p in parts if p in ("vision", "projector")]
        without = [i.source for i in items if i.truth is None]
        if without:
            raise TrainError("data", f"--objective frames needs ground-truth videos (toy:COUNT, or a folder with "
                                     f"NAME.json); {len(without)} sample(s) have none, e.g. {without[0]}")
    groups = trainable_parameters(vx.model, parts, cfg.lr, cfg.vision_lr, cfg.weight_decay)
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": cfg.lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
    start, history = 0, []
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = int(state["step"]), list(state["history"])
    if head is not None:
        fwd = _frame_forward_module()(vx, head, cfg.frame_pool)
    else:
        fwd = _train_forward_module()(vx, cfg.grad_checkpointing, cfg.loss_weighting)
    net = ctx.prepare_model(fwd) if ctx.prepare_model else fwd
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    params = [p for g in groups for p in g["params"]]
    per_worker = cfg.batch_size // ctx.world_size
    metrics: dict = {}
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        batch = sample_order(len(items), step, cfg.batch_size, cfg.seed)
        mine = list(range(ctx.rank, cfg.batch_size, ctx.world_size))
        opt.zero_grad(set_to_none=True)
        local_loss, frames_seen = 0.0, 0
        for j, pos in enumerate(mine):
            item = items[batch[pos]]
            sample = step * cfg.batch_size + pos
            frames = torch.from_numpy(np.load(item.frames))
            if head is not None:
                args = (frames, _frame_label_tensors(item, int(frames.shape[0]), cfg))
            else:
                args = (frames, sample_plan(vx, item, int(frames.shape[0]), step, sample, cfg),
                        sample_turns(item, step, sample, cfg))
            last = j == len(mine) - 1
            sync = contextlib.nullcontext() if (last or not hasattr(net, "no_sync")) else net.no_sync()
            amp = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
            with sync:
                with amp:
                    loss = net(*args)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {step}: loss {float(loss)} on sample {item.key} ({item.source})")
                (loss / per_worker).backward()
            local_loss += float(loss.detach())
            frames_seen += int(frames.shape[0])
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        sched.step()
        loss_mean = local_loss / per_worker
        if ctx.all_reduce_mean:
            loss_mean = ctx.all_reduce_mean(loss_mean)
        dt = time.perf_counter() - t0
        metrics = {"step": step + 1, "loss": loss_mean, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm,
                   "samples_per_s": cfg.batch_size / dt, "frames_per_s": frames_seen * ctx.world_size / dt,
                   "ratios": list(_ratios_at(cfg, step))}
        history.append({"step": step + 1, "loss": loss_mean})
        ckpt = None
        if is_checkpoint_step(cfg, step + 1):
            ckpt = (save_training_checkpoint(cfg, vx, opt, sched, step + 1, history,
                                             head=head.state_dict() if head is not None else None)
                    if ctx.rank == 0 else None)
        if ctx.report:
            ctx.report(metrics, str(ckpt) if ckpt else None)
        if on_step:
            on_step(metrics)
    if ctx.rank == 0 and start < cfg.steps:
        final = Path(cfg.out) / "final"
        save_model(cfg, vx, final, history)
    return {**metrics, "history": history}


def _ratios_at(cfg: TrainConfig, step: int):
    from model.training import Curriculum

    return Curriculum.parse(cfg.curriculum, cfg.seed).ratios_at(step)


def training_record(cfg: TrainConfig, history: list[dict]) -> dict:
    """What the saved config.json records about the run (`vxl_training`) and the curriculum keys."""
    from model.training import Curriculum

    cur = Curriculum.parse(cfg.curriculum, cfg.seed)
    all_ratios = sorted({r for _, rs in cur.stages for r in rs})
    return {
        "beacon_ratio": all_ratios,
        "beacon_ratio_mix": "step-random",
        "vxl_training": {"config": cfg.to_dict(), "curriculum": cur.to_dict(), "steps_done": len(history),
                         "final_loss": history[-1]["loss"] if history else None},
    }


def save_model(cfg: TrainConfig, vx, folder: Path, history: list[dict]) -> Path:
    """The trained model as a Video-XL checkpoint folder (atomic: written aside, then renamed)."""
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    was_training = vx.model.training
    vx.model.eval()
    try:
        vx.save_pretrained(tmp, extra_config=training_record(cfg, history))
    finally:
        vx.model.train(was_training)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def save_training_checkpoint(cfg: TrainConfig, vx, opt, sched, step: int, history: list[dict],
                             head: dict | None = None) -> Path:
    """`out/checkpoints/step_NNNNNN/`: model (Video-XL layout) + `trainer_state.pt` written last
    (with the frame-label head's weights under `--objective frames`: not part of the model)."""
    import torch

    folder = Path(cfg.out) / "checkpoints" / f"step_{step:06d}"
    save_model(cfg, vx, folder, history)
    tmp = folder / "trainer_state.pt.partial"
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                "history": history, "config": cfg.to_dict(), "head": head}, tmp)
    os.replace(tmp, folder / "trainer_state.pt")
    for old in checkpoint_dirs(cfg.out)[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return folder

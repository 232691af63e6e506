"""Sample videos with known ground truth, and bad/odd files for tests.

`make_sample_videos` writes real H.264 MP4 files (PyAV, libx264, yuv420p) of flat-coloured scenes
separated by hard cuts, with one coloured shape at a time that appears, moves, changes colour or
shape and disappears. Next to each `NAME.mp4` it writes `NAME.json` (docs/CONTRACTS.md):

```
{"video": "NAME.mp4", "seconds": 20.0, "fps": 8.0, "width": 320, "height": 240, "seed": 0,
 "num_frames": 160,
 "cuts": [4.625, ...],                                    # seconds, exactly frame_index / fps
 "scenes": [{"start_s": 0.0, "end_s": 4.625, "background": "navy",
             "rgb": [20, 30, 120], "frame_start": 0, "frame_end": 37}, ...],
 "events": [{"start_s": 1.0, "end_s": 3.25, "text": "a red circle appears in the upper left",
             "kind": "appear", "frame": 8, "shape": "circle", "color": "red",
             "position": "upper left"}, ...]}
```

Timing rules (all times are exact multiples of `1 / fps`, so frame `i` is shown at `i / fps`):
- A cut at `t` means frame `round(t * fps) - 1` has the old background and frame `round(t * fps)`
  the new one. `scenes` partition `[0, seconds)`; `cuts` are the scene starts after 0.
- Every event happens at a frame boundary: `start_s` is the time of the first frame showing the
  change (`frame` is its index). `end_s` is the start of the next event (or `seconds`), so the
  events partition the time from the first event to the end of the video. A `move` is spread
  over `[start_s, end_s)` (linear, arriving on the last frame before `end_s`).
- Kinds: `appear`, `move`, `recolor`, `reshape`, `disappear` (the shape) and `cut` (the
  background; its `start_s` is a cut time). Consecutive events are at least `min_gap_s` apart
  (1.5 s by default); texts are distinct one-sentence captions within a video.
- The four corners (a margin of `min(width, height) // 10` pixels) only ever show the background.

Deterministic: the same arguments write the same JSON and (libx264 being deterministic) the same
bytes. Only numpy and PyAV are used; PyAV is imported inside the writers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

# Backgrounds: dark/muted, so the bright shapes stay visible on all of them.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "navy": (20, 30, 120),
    "dark green": (20, 100, 40),
    "maroon": (120, 20, 30),
    "purple": (90, 30, 130),
    "teal": (0, 110, 110),
    "gray": (110, 110, 110),
    "brown": (110, 70, 20),
    "black": (10, 10, 10),
}
# Shape colours: bright.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (235, 40, 40),
    "yellow": (245, 225, 40),
    "white": (245, 245, 245),
    "cyan": (40, 230, 235),
    "orange": (250, 140, 20),
    "pink": (250, 120, 200),
    "green": (60, 230, 60),
    "blue": (60, 110, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# 3 x 3 grid: name -> (column fraction, row fraction) and the phrase used in captions.
POSITIONS: dict[str, tuple[float, float]] = {
    "upper left": (0.22, 0.25),
    "top": (0.5, 0.25),
    "upper right": (0.78, 0.25),
    "left": (0.22, 0.5),
    "center": (0.5, 0.5),
    "right": (0.78, 0.5),
    "lower left": (0.22, 0.75),
    "bottom": (0.5, 0.75),
    "lower right": (0.78, 0.75),
}
_PHRASE_IN = {
    "upper left": "in the upper left",
    "top": "at the top",
    "upper right": "in the upper right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "lower left": "in the lower left",
    "bottom": "at the bottom",
    "lower right": "in the lower right",
}
_PHRASE_TO = {
    "upper left": "to the upper left",
    "top": "to the top",
    "upper right": "to the upper right",
    "left": "to the left",
    "center": "to the center",
    "right": "to the right",
    "lower left": "to the lower left",
    "bottom": "to the bottom",
    "lower right": "to the lower right",
}
MIN_BACKGROUND_L1 = 120  # consecutive backgrounds differ by at least this much (sum over RGB)

#: Codecs the sample writers support: name -> (container format, file suffix, FFmpeg encoder).
CODECS: dict[str, tuple[str, str, str]] = {
    "h264": ("mp4", ".mp4", "libx264"),
    "vp9": ("webm", ".webm", "libvpx-vp9"),
    "mpeg4": ("mp4", ".mp4", "mpeg4"),
}


@dataclass
class _Shape:
    shape: str
    color: str
    position: str


def _as_fraction(fps: float) -> Fraction:
    if not math.isfinite(fps):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    fr = Fraction(fps).limit_denominator(1001)
    if fr <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return fr


def plan_sample_video(
    seconds: float = 20.0,
    fps: float = 8,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
    *,
    min_gap_s: float = 1.5,
    max_gap_s: float = 3.0,
    scene_s: float = 5.0,
) -> dict:
    """Ground truth of one sample video, without writing it (the JSON described in the module doc).

    Args:
        seconds: duration in seconds (> 0); the video has `round(seconds * fps)` frames.
        fps: frames per second (> 0).
        width, height: frame size in pixels (even, >= 64).
        seed: RNG seed; the same arguments give the same plan.
        min_gap_s, max_gap_s: gap between consecutive events, drawn uniformly, in seconds.
        scene_s: mean scene length in seconds (a cut replaces an object event about this often).

    Returns:
        dict following docs/CONTRACTS.md (plus `seed`, `num_frames`, per-scene `rgb`/frame span,
        per-event `kind`/`frame` and the shape's state).

    Raises:
        ValueError: non-positive seconds/fps, odd or too small width/height.
    """
    fr = _as_fraction(fps)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a finite number > 0, got {seconds}")
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 64 (H.264 yuv420p), got {width}x{height}")
    num_frames = max(1, round(seconds * fr))
    rng = np.random.default_rng(seed)

    # Change points: frame indices at least min_gap apart, first one after about 1 s.
    def frames_of(s: float) -> int:
        return max(1, round(s * fr))

    points: list[int] = []
    f = frames_of(float(rng.uniform(0.5, 1.5)))
    while f < num_frames:
        points.append(f)
        f += frames_of(float(rng.uniform(min_gap_s, max_gap_s)))

    bg_names = list(BACKGROUNDS)
    bg = bg_names[int(rng.integers(len(bg_names)))]
    scenes: list[dict] = [{"background": bg, "frame_start": 0}]
    events: list[dict] = []
    texts: set[str] = set()
    cur: _Shape | None = None
    last_cut = 0
    mean_scene_frames = scene_s * fr

    def add(kind: str, frame: int, text: str, **extra) -> None:
        texts.add(text)
        events.append({"frame": frame, "kind": kind, "text": text, **extra})

    def cut_candidates(frame: int) -> list[tuple[str, str]]:
        prev = scenes[-1]["background"]
        out = []
        for name in bg_names:
            l1 = sum(abs(a - b) for a, b in zip(BACKGROUNDS[name], BACKGROUNDS[prev], strict=True))
            text = f"the scene cuts from a {prev} background to a {name} one"
            if name != prev and l1 >= MIN_BACKGROUND_L1 and text not in texts:
                out.append((name, text))
        return out

    for frame in points:
        since_cut = frame - last_cut
        want_cut = since_cut >= mean_scene_frames * float(rng.uniform(0.7, 1.3))
        cands = cut_candidates(frame) if want_cut else []
        if cands:
            name, text = cands[int(rng.integers(len(cands)))]
            scenes[-1]["frame_end"] = frame
            scenes.append({"background": name, "frame_start": frame})
            last_cut = frame
            add("cut", frame, text, background=name)
            continue
        # Object event: enumerate every possible action with an unused caption.
        options: list[tuple[str, _Shape, str]] = []
        if cur is None:
            for color in COLORS:
                for shape in SHAPES:
                    for pos in POSITIONS:
                        text = f"a {color} {shape} appears {_PHRASE_IN[pos]}"
                        options.append(("appear", _Shape(shape, color, pos), text))
        else:
            the = f"the {cur.color} {cur.shape}"
            for pos in POSITIONS:
                if pos != cur.position:
                    options.append(
                        ("move", _Shape(cur.shape, cur.color, pos), f"{the} moves {_PHRASE_TO[pos]}")
                    )
            for color in COLORS:
                if color != cur.color:
                    options.append(
                        ("recolor", _Shape(cur.shape, color, cur.position), f"{the} turns {color}")
                    )
            for shape in SHAPES:
                if shape != cur.shape:
                    options.append(
                        ("reshape", _Shape(shape, cur.color, cur.position), f"{the} turns into a {shape}")
                    )
            options.append(("disappear", cur, f"{the} disappears"))
        options = [o for o in options if o[2] not in texts]
        if not options:
            continue  # every caption used (very long videos): no event at this point
        # Pick the kind first (so appear/move don't dominate by count), then the option.
        kinds = sorted({o[0] for o in options})
        weights = {"appear": 1.0, "move": 1.0, "recolor": 1.0, "reshape": 1.0, "disappear": 0.6}
        p = np.array([weights[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        options = [o for o in options if o[0] == kind]
        kind, new, text = options[int(rng.integers(len(options)))]
        add(kind, frame, text, shape=new.shape, color=new.color, position=new.position)
        cur = None if kind == "disappear" else new
    scenes[-1]["frame_end"] = num_frames

    def t(frame: int) -> float:
        return float(Fraction(frame) / fr)

    for i, ev in enumerate(events):
        ev["end_frame"] = events[i + 1]["frame"] if i + 1 < len(events) else num_frames
    out_events = []
    for ev in events:
        d = {"start_s": t(ev["frame"]), "end_s": t(ev.pop("end_frame")), "text": ev.pop("text")}
        d.update(ev)
        out_events.append(d)
    out_scenes = [
        {
            "start_s": t(s["frame_start"]),
            "end_s": t(s["frame_end"]),
            "background": s["background"],
            "rgb": list(BACKGROUNDS[s["background"]]),
            "frame_start": s["frame_start"],
            "frame_end": s["frame_end"],
        }
        for s in scenes
    ]
    return {
        "video": None,
        "seconds": t(num_frames),
        "fps": float(fr),
        "width": int(width),
        "height": int(height),
        "seed": int(seed),
        "num_frames": int(num_frames),
        "cuts": [s["start_s"] for s in out_scenes[1:]],
        "scenes": out_scenes,
        "events": out_events,
    }


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# The toy family (issue 12): what the trained `toy` model is taught and checked on.
TOY_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (160, 120), (192, 144), (240, 180), (256, 144), (320, 240), (320, 180), (426, 240), (480, 270),
    (480, 360), (640, 360), (640, 480), (854, 480), (960, 540), (1024, 576), (1280, 720),
)
TOY_FPS: tuple[float, ...] = (8, 10, 12, 15, 24, 25, 30)


def plan_toy_video(
    seed: int,
    *,
    num_scenes: int | None = None,
    scene_s: tuple[float, float] = (2.0, 20.0),
    fps: float | None = None,
    width: int | None = None,
    height: int | None = None,
) -> dict:
    """Ground truth of one video of the toy family: 2-8 scenes, one object.

    The family (issue 12): flat backgrounds from `BACKGROUNDS`, each used at most once (consecutive
    ones at least `MIN_BACKGROUND_L1` apart), hard cuts, scenes of `scene_s` seconds (2-20), and one
    shape from `SHAPES` in a colour of `COLORS` that appears (at 0.5 s or later), may move once and
    may disappear, visible at least 3 s. Resolution and frame rate are drawn from `TOY_RESOLUTIONS`
    and `TOY_FPS` unless given. The JSON has the layout of `plan_sample_video` plus
    `"object": {"shape", "color"}` and `"family": "toy"`; events are `cut`, `appear`, `move`,
    `disappear`, with distinct captions.

    Raises:
        ValueError: `num_scenes` outside 1..len(BACKGROUNDS), a bad `scene_s`, or see `plan_sample_video`.
    """
    rng = np.random.default_rng([seed, 0x70F])
    if num_scenes is None:
        num_scenes = int(rng.integers(2, 9))
    if not 1 <= num_scenes <= len(BACKGROUNDS):
        raise ValueError(f"num_scenes must be in 1..{len(BACKGROUNDS)}, got {num_scenes}")
    lo, hi = scene_s
    if not 0 < lo <= hi:
        raise ValueError(f"scene_s must be (low, high) with 0 < low <= high, got {scene_s}")
    if width is None or height is None:
        width, height = TOY_RESOLUTIONS[int(rng.integers(len(TOY_RESOLUTIONS)))]
    fps = float(TOY_FPS[int(rng.integers(len(TOY_FPS)))]) if fps is None else fps
    fr = _as_fraction(fps)
    names = list(BACKGROUNDS)
    for _ in range(1000):  # a background order whose consecutive colours are far enough apart
        order = [names[i] for i in rng.permutation(len(names))[:num_scenes]]
        if all(sum(abs(a - b) for a, b in zip(BACKGROUNDS[x], BACKGROUNDS[y], strict=True)) >= MIN_BACKGROUND_L1
               for x, y in zip(order, order[1:], strict=False)):
            break
    lengths = [max(1, round(float(rng.uniform(lo, hi)) * fr)) for _ in order]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    num_frames = int(starts[-1])
    scenes = [{"background": b, "frame_start": int(starts[i]), "frame_end": int(starts[i + 1])}
              for i, b in enumerate(order)]
    events: list[dict] = [
        {"frame": sc["frame_start"], "kind": "cut", "background": sc["background"],
         "text": f"the scene cuts from a {prev['background']} background to a {sc['background']} one"}
        for prev, sc in zip(scenes, scenes[1:], strict=False)
    ]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    pos_names = list(POSITIONS)
    pos = pos_names[int(rng.integers(len(pos_names)))]
    visible = max(1, round(3 * fr))
    cut_frames = {sc["frame_start"] for sc in scenes}

    def free(f: int) -> int:  # object events never share a frame with a cut
        while f in cut_frames:
            f += 1
        return f

    latest = max(0, num_frames - visible)
    first = free(min(latest, max(round(0.5 * fr), int(rng.uniform(0.0, 0.6) * num_frames))))
    if first < num_frames:
        events.append({"frame": first, "kind": "appear", "shape": shape, "color": color, "position": pos,
                       "text": f"{_article(color)} {color} {shape} appears {_PHRASE_IN[pos]}"})
        end = num_frames
        if rng.random() < 0.5 and num_frames - first > 2 * visible:
            f = free(first + visible + int(rng.integers(0, num_frames - first - 2 * visible + 1)))
            new = [p for p in pos_names if p != pos][int(rng.integers(len(pos_names) - 1))]
            if f < num_frames:
                events.append({"frame": f, "kind": "move", "shape": shape, "color": color, "position": new,
                               "text": f"the {color} {shape} moves {_PHRASE_TO[new]}"})
                pos, first = new, f
        if rng.random() < 0.3 and num_frames - first > 2 * visible:
            end = free(first + visible + int(rng.integers(0, num_frames - first - 2 * visible + 1)))
            if end < num_frames:
                events.append({"frame": end, "kind": "disappear", "shape": shape, "color": color, "position": pos,
                               "text": f"the {color} {shape} disappears"})
    events.sort(key=lambda e: e["frame"])

    def t(frame: int) -> float:
        return float(Fraction(frame) / fr)

    out_events = []
    for i, ev in enumerate(events):
        end_frame = events[i + 1]["frame"] if i + 1 < len(events) else num_frames
        out_events.append({"start_s": t(ev["frame"]), "end_s": t(end_frame), **ev})
    out_scenes = [{"start_s": t(sc["frame_start"]), "end_s": t(sc["frame_end"]), "background": sc["background"],
                   "rgb": list(BACKGROUNDS[sc["background"]]), "frame_start": sc["frame_start"],
                   "frame_end": sc["frame_end"]} for sc in scenes]
    return {
        "video": None, "family": "toy", "seconds": t(num_frames), "fps": float(fr), "width": int(width),
        "height": int(height), "seed": int(seed), "num_frames": num_frames,
        "cuts": [sc["start_s"] for sc in out_scenes[1:]], "scenes": out_scenes, "events": out_events,
        "object": {"shape": shape, "color": color},
    }


def make_toy_videos(out_dir: str | Path, seeds, *, codecs: tuple[str, ...] = tuple(CODECS), prefix: str = "toy",
                    **plan_kw) -> list[Path]:
    """Write one toy-family video per seed (`plan_toy_video`) with its truth JSON into `out_dir`.

    The codec of seed `s` is `codecs[s % len(codecs)]`. Names are `{prefix}_{seed:06d}{suffix}`. Files
    that exist with their JSON are kept (idempotent). Cost: dominated by encoding, about 1 s per
    minute of 320x240 video at 8 fps, 20x that at 1280x720 at 30 fps (2-core CPU).

    Returns:
        the video paths, in seed order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        codec = codecs[int(seed) % len(codecs)]
        path = out_dir / f"{prefix}_{int(seed):06d}{CODECS[codec][1]}"
        truth_path = path.with_suffix(".json")
        if not (path.is_file() and truth_path.is_file()):
            plan = plan_toy_video(int(seed), **plan_kw)
            plan["video"], plan["codec"] = path.name, codec
            tmp = path.with_name(path.stem + ".partial" + path.suffix)
            write_video(tmp, render_frames(plan), plan["fps"], plan["width"], plan["height"], codec=codec)
            tmp.replace(path)
            truth_path.write_text(json.dumps(plan, indent=1) + "\n")
        paths.append(path)
    return paths


def _shape_mask(shape: str, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.85
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.1
    if shape == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(plan: dict, only=None):
    """Yield the frames of a planned video: uint8 (H, W, 3) RGB arrays, `plan["num_frames"]` of them.

    With `only` (a collection of frame indices), yield just those frames, in index order (the state
    of the moving shape is still tracked over every frame)."""
    only = None if only is None else set(int(i) for i in only)
    w, h, n = plan["width"], plan["height"], plan["num_frames"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = min(w, h) / 10.0
    scene_of = np.zeros(n, dtype=np.int64)
    for i, s in enumerate(plan["scenes"]):
        scene_of[s["frame_start"] : s["frame_end"]] = i
    starts = sorted({e["frame"] for e in plan["events"]}) + [n]
    by_frame = {e["frame"]: e for e in plan["events"] if e["kind"] != "cut"}
    cur = None  # (shape, color, (cx, cy))
    move = None  # (from_xy, to_xy, first_frame, end_frame)
    for f in range(n):
        ev = by_frame.get(f)
        if ev is not None:
            fx, fy = POSITIONS[ev["position"]]
            xy = (fx * w, fy * h)
            move = None
            if ev["kind"] == "disappear":
                cur = None
            elif ev["kind"] == "move" and cur is not None:
                end = next(s for s in starts if s > f)
                move = (cur[2], xy, f, end)
                cur = (ev["shape"], ev["color"], xy)
            else:
                cur = (ev["shape"], ev["color"], xy)
        if only is not None and f not in only:
            continue
        frame = np.empty((h, w, 3), dtype=np.uint8)
        frame[:] = plan["scenes"][scene_of[f]]["rgb"]
        if cur is not None:
            cx, cy = cur[2]
            if move is not None and f < move[3]:
                (sx, sy), (tx, ty), f0, f1 = move
                a = (f - f0 + 1) / (f1 - f0)
                cx, cy = sx + a * (tx - sx), sy + a * (ty - sy)
            frame[_shape_mask(cur[0], cx, cy, r, yy, xx)] = COLORS[cur[1]]
        yield frame


ENCODER_THREADS = 1
"""Encoder threads for `write_video`: one, so that a seed gives the same bytes on any machine (the
bytes depend on the thread count; 6 sample videos: 1.3 s against 1.6 s with 2 threads on the 2-core
VM, which the process start dominates)."""


def write_video(path: Path, frames, fps: float, width: int, height: int, *, crf: int = 20,
                codec: str = "h264") -> None:
    """Encode RGB uint8 (H, W, 3) frames to `codec` (`CODECS`; H.264 by default), yuv420p, at `path`.

    Frame `i` gets pts `i` in time base `1 / fps`, so it is shown at exactly `i / fps` seconds.
    Keyframes every 2 s (and, for H.264, at scene cuts); MP4s have the moov atom at the front.
    H.264 and VP9 use constant quality `crf`; MPEG-4 Part 2 a bit rate of 0.2 bit per pixel.

    Raises:
        ValueError: an unknown codec.
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; one of {sorted(CODECS)}")
    container, _, encoder = CODECS[codec]
    fr = _as_fraction(fps)
    opts = {"movflags": "+faststart"} if container == "mp4" else {}
    with av.open(str(path), mode="w", format=container, options=opts) as out:
        stream = out.add_stream(encoder, rate=fr)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, int(round(2 * fr)))
        # One encoder thread: with the default (0 = one per core) the bytes depend on the machine's
        # core count; with the colour conversion below also on one thread, a seed gives the same
        # bytes everywhere (two encodes of one seed differed in loaded CI runs before).
        stream.codec_context.thread_count = ENCODER_THREADS
        if codec == "h264":
            # asm=0: x264's assembly gave other bytes for one seed depending on what the process had
            # done before (reproduced: after tests/test_model_drift.py and test_clip_embed.py in one
            # pytest process, 3 of 3 runs; never alone); the C path is deterministic (3 of 3) and
            # costs about 1.45x the encode time (6 sample videos: 1.9 s against 1.3 s)
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "asm=0"}
        elif codec == "vp9":
            stream.options = {"crf": str(crf + 10), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        else:
            stream.bit_rate = max(200_000, int(width * height * float(fr) * 0.2))  # ~0.2 bit per pixel
        for i, rgb in enumerate(frames):
            # RGB -> YUV 4:2:0 here, on one thread: PyAV's implicit conversion inside `encode` runs
            # swscale on one thread per CPU (its default), the one multi-threaded step left
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", threads=1)
            vf.pts = i
            vf.time_base = Fraction(1) / fr
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))


def make_sample_videos(
    out_dir: str | Path,
    count: int = 3,
    seconds: float = 20.0,
    fps: float = 8,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
) -> list[Path]:
    """Write `count` sample videos `sample_00.mp4 ...` and their `sample_00.json` into `out_dir`.

    Video `i` uses seed `seed * 1000 + i`, so each video differs and the set is reproducible.
    Cost: about 0.3-0.5 s per 20 s video at 320x240, 8 fps on a 2-core CPU.

    Returns:
        paths of the `.mp4` files, in order.

    Raises:
        ValueError: count < 1, or see `plan_sample_video`.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        plan = plan_sample_video(seconds, fps, width, height, seed=seed * 1000 + i)
        name = f"sample_{i:02d}.mp4"
        plan["video"] = name
        path = out_dir / name
        write_video(path, render_frames(plan), plan["fps"], width, height)
        path.with_suffix(".json").write_text(json.dumps(plan, indent=1) + "\n")
        paths.append(path)
    return paths


def load_truth(video_path: str | Path) -> dict:
    """The ground-truth JSON written next to a sample video (`NAME.mp4` -> `NAME.json`)."""
    return json.loads(Path(video_path).with_suffix(".json").read_text())


def make_bad_files(out_dir: str | Path) -> dict[str, Path]:
    """Write bad and odd inputs for decoder tests into `out_dir`.

    Returns a dict name -> path:
        `empty`: zero-byte `empty.mp4`.
        `text`: a UTF-8 text file named `not_a_video.mp4`.
        `truncated`: an 8 s, 64-frame H.264 MP4 (moov at the front) cut to its first half of bytes:
            the index promises 64 frames, the data holds fewer.
        `truncated_no_moov`: the same video without faststart, cut in half (moov atom lost).
        `audio_only`: 1 s of AAC audio in `audio_only.mp4` (no video stream).
        `one_frame`: a valid H.264 MP4 with a single frame.
        `unicode_path`: a valid 2 s sample at `"odd näme 日本/clip ü ß.mp4"` (spaces, non-ASCII).
    """
    import av

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    p = out_dir / "empty.mp4"
    p.write_bytes(b"")
    files["empty"] = p

    p = out_dir / "not_a_video.mp4"
    p.write_text("This is not a video. It is a text file with an .mp4 name.\n" * 20)
    files["text"] = p

    plan = plan_sample_video(8.0, 8, 320, 240, seed=7)
    full = out_dir / "_full.mp4"
    write_video(full, render_frames(plan), 8, 320, 240)
    data = full.read_bytes()
    p = out_dir / "truncated.mp4"
    p.write_bytes(data[: len(data) // 2])
    files["truncated"] = p
    full.unlink()

    p = out_dir / "truncated_no_moov.mp4"
    with av.open(str(p), mode="w", format="mp4") as out:  # moov at the end
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for rgb in render_frames(plan):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    files["truncated_no_moov"] = p

    p = out_dir / "audio_only.mp4"
    sr = 44100
    with av.open(str(p), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=sr)
        stream.layout = "mono"
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
        step = 1024
        for k in range(0, sr, step):
            chunk = tone[k : k + step][None, :]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            af.sample_rate = sr
            af.pts = k
            out.mux(stream.encode(af))
        out.mux(stream.encode(None))
    files["audio_only"] = p

    p = out_dir / "one_frame.mp4"
    plan1 = plan_sample_video(1 / 8, 8, 160, 120, seed=1)
    write_video(p, render_frames(plan1), 8, 160, 120)
    files["one_frame"] = p

    sub = out_dir / "odd näme 日本"
    sub.mkdir(exist_ok=True)
    p = sub / "clip ü ß.mp4"
    plan2 = plan_sample_video(2.0, 8, 160, 120, seed=2)
    plan2["video"] = p.name
    write_video(p, render_frames(plan2), 8, 160, 120)
    p.with_suffix(".json").write_text(json.dumps(plan2, indent=1, ensure_ascii=False) + "\n")
    files["unicode_path"] = p
    return files


def scene_at(truth: dict, t: float) -> dict:
    """The scene (from a sample's JSON) showing at time `t` seconds."""
    for s in truth["scenes"]:
        if s["start_s"] <= t < s["end_s"]:
            return s
    raise ValueError(f"t={t} s is outside [0, {truth['seconds']})")


FRAME_LABELS: dict[str, int] = {"background": len(BACKGROUNDS), "object_present": 2, "object_color": len(COLORS),
                                "object_shape": len(SHAPES), "object_position": len(POSITIONS)}
"""The per-frame label groups of `frame_labels` and their class counts (`--objective frames`)."""


def frame_labels(truth: dict, frame_indices) -> dict[str, np.ndarray]:
    """What a sample's frames show, per frame: the labels of the vision pretraining objective.

    Follows the events as `render_frames` draws them: `appear`, `move`, `recolor` and `reshape` set
    the one object on screen, `disappear` removes it.

    Args:
        truth: a sample's ground truth (`plan_sample_video` / `plan_toy_video` layout: `scenes` with
            `frame_start`/`frame_end`, `events` with `frame`).
        frame_indices: int (F,) frame indices into the video (as `tasks.video.sample_indices` gives).
    Returns:
        int64 (F,) arrays: `background` (index into `BACKGROUNDS`), `object_present` (0/1),
        `object_color`, `object_shape` and `object_position` (index into `COLORS` / `SHAPES` /
        `POSITIONS`; -1 when no object shows, and for the position while a `move` glides).
    Raises:
        ValueError: an index outside the video, or a background/colour/shape name not in the tables.
    """
    idx = np.asarray(frame_indices, dtype=np.int64)
    n = int(truth["num_frames"])
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"frame indices must be in [0, {n}), got {idx.min()}..{idx.max()}")
    bg_names, colors = list(BACKGROUNDS), list(COLORS)
    background = np.full(idx.shape, -1, dtype=np.int64)
    for sc in truth["scenes"]:
        background[(idx >= sc["frame_start"]) & (idx < sc["frame_end"])] = bg_names.index(sc["background"])
    color = np.full(idx.shape, -1, dtype=np.int64)
    shape = np.full(idx.shape, -1, dtype=np.int64)
    position = np.full(idx.shape, -1, dtype=np.int64)
    positions = list(POSITIONS)
    starts = sorted({e["frame"] for e in truth["events"]}) + [n]
    for ev in sorted((e for e in truth["events"] if e["kind"] != "cut"), key=lambda e: e["frame"]):
        after = idx >= ev["frame"]
        if ev["kind"] == "disappear":
            color[after], shape[after], position[after] = -1, -1, -1
        else:
            color[after], shape[after] = colors.index(ev["color"]), SHAPES.index(ev["shape"])
            position[after] = positions.index(ev["position"])
            if ev["kind"] == "move":  # `render_frames` glides it there until the frame before the next event
                end = next(s for s in starts if s > ev["frame"])
                position[after & (idx < end - 1)] = -1
    return {"background": background, "object_present": (color >= 0).astype(np.int64), "object_color": color,
            "object_shape": shape, "object_position": position}


__all__ = [
    "BACKGROUNDS",
    "CODECS",
    "COLORS",
    "FRAME_LABELS",
    "POSITIONS",
    "SHAPES",
    "frame_labels",
    "load_truth",
    "make_bad_files",
    "make_sample_videos",
    "make_toy_videos",
    "plan_toy_video",
    "plan_sample_video",
    "render_frames",
    "scene_at",
    "write_video",
]

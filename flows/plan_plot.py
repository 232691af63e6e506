"""Drawing a video's chunk plan: CLIP similarity and depth over time, boundaries, windows and ratios.

Used by `vxl archive show ID --plot out.png`. matplotlib (Agg backend) is imported on call.
"""

from __future__ import annotations

import json
from pathlib import Path

MIN_LABEL_PX = 30
"""A window's bar gets its `r=<ratio>` label only when it is at least this wide on the figure
(at 200+ windows the labels smeared into each other; the colour key names every ratio)."""


def plot_plan(record, out: str | Path) -> Path:
    """Write a PNG of `record.plan` (a `storage.VideoRecord` with status `indexed`); see `draw_plan`.

    Raises:
        ValueError: the record has no plan (a failed video).
    """
    import matplotlib.pyplot as plt

    fig = draw_plan(record)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_plan(record):
    """The figure of `record.plan`.

    Top panel (dynamic plans): adjacent-frame CLIP cosine similarity and depth score at each gap
    between sampled frames, the boundary threshold `mean + alpha * std`, and the chosen boundaries.
    Bottom panel: one bar per window over its time span, coloured by ratio, with a colour key
    (`ratio N (W windows)`); bars wide enough (`MIN_LABEL_PX`) are also labelled `r=<ratio>`.
    The x axis is the video's time in seconds (sampled frame timestamps; frame indices if unknown).

    Raises:
        ValueError: the record has no plan (a failed video).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not record.plan:
        raise ValueError(f"video {record.video_id} has no stored plan (status {record.status}); nothing to draw")
    plan = json.loads(record.plan)
    extras = plan.get("extras", {})
    windows = plan["windows"]
    n_frames = windows[-1][1]
    times = list(record.sampled_times or range(n_frames))
    step = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else 1.0
    unit = "s" if record.sampled_times else "frame"

    def t_start(f):
        return times[f]

    def t_end(f):  # exclusive frame -> end of the last frame's span
        return times[f - 1] + step

    has_curve = bool(extras.get("similarity"))
    fig, axes = plt.subplots(2 if has_curve else 1, 1, figsize=(12, 6 if has_curve else 2.6), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]} if has_curve else None, squeeze=False)
    axes = axes[:, 0]
    if has_curve:
        ax = axes[0]
        gaps = [(times[i] + times[i + 1]) / 2 for i in range(len(extras["similarity"]))]
        ax.plot(gaps, extras["similarity"], "-o", ms=2.5, color="tab:blue", label="CLIP similarity s_i")
        ax.plot(gaps, extras["depth"], "-", color="tab:orange", label="depth score")
        if extras.get("threshold") is not None:
            ax.axhline(extras["threshold"], ls="--", color="tab:red", lw=1,
                       label=f"threshold mean + {plan['params'].get('alpha', 0.5)} std")
        for k, b in enumerate(extras.get("boundaries", [])):
            ax.axvline(t_start(b), color="black", lw=1.2, alpha=0.7, label="boundary" if k == 0 else None)
        ax.set_ylabel("cosine / depth")
        ax.legend(loc="lower left", fontsize=8, ncol=4)
        ax.set_title(f"{record.source_uri or record.video_id}: {plan.get('planner')} plan, "
                     f"{len(windows)} windows, {record.num_vst_tokens} VSTs")
    ax = axes[-1]
    ratios = sorted({w[2] for w in windows})
    cmap = plt.get_cmap("viridis", max(len(ratios), 2))
    span = max(t_end(windows[-1][1]) - t_start(windows[0][0]), 1e-9)
    px_per_unit = fig.get_figwidth() * fig.dpi * 0.85 / span  # the axes take about 85% of the width
    edge = "white" if len(windows) <= 100 else "none"
    for a, b, r in windows:
        x0, x1 = t_start(a), t_end(b)
        ax.barh(0, x1 - x0, left=x0, height=0.8, color=cmap(ratios.index(r)), edgecolor=edge, linewidth=0.5)
        if (x1 - x0) * px_per_unit >= MIN_LABEL_PX:
            ax.text((x0 + x1) / 2, 0, f"r={r}", ha="center", va="center", fontsize=8,
                    color="white" if ratios.index(r) < len(ratios) / 2 else "black")
    from matplotlib.patches import Patch

    counts = {r: sum(1 for w in windows if w[2] == r) for r in ratios}
    ax.legend(handles=[Patch(color=cmap(i), label=f"ratio {r} ({counts[r]} windows)") for i, r in enumerate(ratios)],
              loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=min(len(ratios), 6), fontsize=8, frameon=False)
    ax.set_yticks([])
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("windows")
    if not has_curve:
        ax.set_title(f"{record.source_uri or record.video_id}: {plan.get('planner')} plan, {len(windows)} windows")
    fig.tight_layout()
    return fig

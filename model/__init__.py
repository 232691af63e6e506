"""Video-XL with explicit VST memory. See `model.video_xl` for the mechanism.

Heavy modules are imported on first use, so `import model` is cheap.
"""

from . import dynamic  # noqa: F401  (registers the `dynamic` planner)
from .memory import VSTMemory, WindowSpan
from .plan import PLANNERS, ChunkPlan, PlannedWindow

__all__ = ["load_model", "VideoXL", "Answer", "VSTMemory", "WindowSpan", "ChunkPlan", "PlannedWindow", "PLANNERS"]


def __getattr__(name):
    if name in ("load_model", "VideoXL", "Answer"):
        from . import video_xl

        return getattr(video_xl, name)
    raise AttributeError(name)

"""The software stack a memory is computed with: provenance, and loud failure on upstream drift.

- `library_versions()`: what computed a memory (stored on every `videos` row as `library_versions`).
- `UpstreamDriftError`: raised where vxl depends on a transformers internal and the installed version
  no longer behaves as the tested ones did (docs/OPERATIONS.md, "Upgrading dependencies"). It is
  deliberately not a `RuntimeError`/`ValueError`, so that no per-video error handler turns it into a
  failed row: the run stops, nothing is stored.
- `python -m model.environment --check`: part of the post-install check of `make install`.

Versions are read with `importlib.metadata` (no heavy import) except torch's CUDA/cuDNN, which only
torch knows.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

#: transformers versions whose behaviour the fidelity tests established (pyproject's range; the
#: lock pins the first). `make upgrade-check` is how a new one gets on this list.
TESTED_TRANSFORMERS = ("5.23.0", "5.24.0")

#: distributions recorded on every memory (besides python, CUDA, cuDNN and the device).
RECORDED = ("torch", "transformers", "tokenizers", "safetensors", "numpy")
#: video decoders; the one that decoded a video is named by the decode step, all installed are recorded.
DECODER_DISTS = ("decord", "av", "torchcodec")


class UpstreamDriftError(Exception):
    """An upstream library no longer behaves as vxl relies on; names the library and its version.

    Not a subclass of RuntimeError/ValueError on purpose (see the module docstring).
    """

    def __init__(self, library: str, what: str, fix: str | None = None) -> None:
        self.library = library
        self.version = version_of(library)
        tested = f" vxl was tested with {library} {', '.join(TESTED_TRANSFORMERS)};" if library == "transformers" else ""
        fix = fix or (f"{tested} install from the lock (`make install`) or run `make upgrade-check` "
                      "(docs/OPERATIONS.md, 'Upgrading dependencies'). Nothing was stored")
        super().__init__(f"{library} {self.version}: {what}.{fix if fix.startswith(' ') else ' ' + fix}")

    def __reduce__(self):  # picklable across Ray workers although __init__ takes other arguments
        return (_rebuild_drift, (self.library, self.version, str(self)))


def _rebuild_drift(library: str, version: str, message: str) -> UpstreamDriftError:
    err = UpstreamDriftError.__new__(UpstreamDriftError)
    Exception.__init__(err, message)
    err.library, err.version = library, version
    return err


def version_of(dist: str) -> str:
    """Installed version of distribution `dist`, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def library_versions(device=None) -> dict[str, str]:
    """The stack that computes memories in this process, as stored on `videos.library_versions`.

    Args:
        device: the torch device the model runs on (None: CPU).
    Returns:
        {"python", "torch", "transformers", "tokenizers", "safetensors", "numpy", "decord", "av",
        "torchcodec" (installed version or "not installed"), "cuda" (torch's CUDA version or "cpu"),
        "cudnn" (version or "none"), "device" (GPU name, or "cpu: <processor>")}.
    """
    import torch

    out = {"python": platform.python_version()}
    out.update({d: version_of(d) for d in RECORDED + DECODER_DISTS})
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        out["cuda"] = str(torch.version.cuda)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["cudnn"] = str(cudnn) if cudnn else "none"
        out["device"] = torch.cuda.get_device_name(dev)
    else:
        out["cuda"] = "cpu"
        out["cudnn"] = "none"
        out["device"] = f"cpu: {platform.machine()} {platform.processor() or ''}".strip()
    return out


def check_tested() -> str:
    """The installed transformers version, checked to be one of `TESTED_TRANSFORMERS` (`make install`).

    Raises:
        UpstreamDriftError: transformers is not a tested version.
    """
    tf = version_of("transformers")
    if tf not in TESTED_TRANSFORMERS:
        raise UpstreamDriftError("transformers", "this version was never run through vxl's fidelity tests")
    return tf


if __name__ == "__main__":
    if "--check" in sys.argv:
        print(f"vxl environment: transformers {check_tested()} (tested), torch {version_of('torch')}")

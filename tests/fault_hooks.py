"""Faults injected into Ray workers (`runtime_env={"worker_process_setup_hook": ...}`) by the drift and
numerics-canary tests: simulated upstream changes in the processes that load the model.

`install()` patches `VSTAttention.forward` when `VXL_TEST_FAULT_FILE` is set; the file's content,
read at every call, picks the fault: "ignore_cache" (the attention never sees the cache, as
transformers 5.24 did to a subclass that took only `past_key_values`), "perturb" (1e-3 added to
every attention output: a numerically different kernel), anything else: none.
"""

from __future__ import annotations

import os


def current_fault() -> str:
    path = os.environ.get("VXL_TEST_FAULT_FILE", "")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def install() -> None:
    if not os.environ.get("VXL_TEST_FAULT_FILE"):
        return
    from model.modeling import VSTAttention

    original = VSTAttention.forward

    def forward(self, *args, **kwargs):
        fault = current_fault()
        if fault == "ignore_cache":
            kwargs.pop("cache", None)
            kwargs.pop("past_key_values", None)
        out, weights = original(self, *args, **kwargs)
        if fault == "perturb":
            out = out + 1e-3
        return out, weights

    VSTAttention.forward = forward


# ----------------------------------------------------------------------------------------------
# Decode faults (the production decoder has no test hook; issue 15)

DECODE_FAULT_ENV = "VXL_TEST_DECODE_FAULT"
"""`hang` spins forever holding the GIL (as decord's get_batch does in dmlc/decord#373), `crash`
kills the process with SIGKILL; `hang:NAME` / `crash:NAME` apply only to files named NAME."""


def _apply_decode_fault(fault: str, path) -> None:
    import signal
    from pathlib import Path

    fault, _, only = fault.partition(":")
    if only and Path(path).name != only:
        return
    if fault == "hang":
        while True:
            pass
    elif fault == "crash":
        os.kill(os.getpid(), signal.SIGKILL)


def hanging_decode(path, **kwargs):
    """A `decode_fn` for `tasks.video.decode_with_timeout` that never returns."""
    _apply_decode_fault("hang", path)


def crashing_decode(path, **kwargs):
    """A `decode_fn` for `tasks.video.decode_with_timeout` whose process dies by SIGKILL."""
    _apply_decode_fault("crash", path)


def install_decode_fault() -> None:
    """Ray `worker_process_setup_hook`: make `tasks.video.decode` apply `$VXL_TEST_DECODE_FAULT`
    (the index pipeline decodes in Ray workers, so the fault must be installed there).

    `$VXL_TEST_WORKER_START_DELAY` seconds: every worker process sleeps this long first, as a cold
    worker start on loaded cores does (the decode timeout must not count it)."""
    delay = float(os.environ.get("VXL_TEST_WORKER_START_DELAY", "0") or 0)
    if delay > 0:
        import time

        time.sleep(delay)
    fault = os.environ.get(DECODE_FAULT_ENV, "")
    if not fault:
        return
    import tasks.video as video

    original = video._check_file

    def check_file(p):
        _apply_decode_fault(fault, p)
        return original(p)

    video._check_file = check_file

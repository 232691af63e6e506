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

"""The index pipeline's Ray metrics reach the node's Prometheus endpoint (the one the dashboard
scrapes): frames decoded, videos indexed and failed, KV bytes written, encode seconds (histogram)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, time, urllib.request
    sys.path.insert(0, {repo!r})
    from tasks.index import make_options, run_index
    from tasks.ray_runtime import ensure_ray, shutdown_if_started
    from tasks.samples import make_sample_videos
    info = ensure_ray(num_cpus=2)
    import ray
    port = ray.nodes()[0]["MetricsExportPort"]
    videos = [str(v) for v in make_sample_videos({tmp!r} + "/videos", count=1, seconds=4.0)]
    bad = {tmp!r} + "/videos/not_a_video.mp4"
    open(bad, "w").write("this is not a video")
    rep = run_index(videos + [bad], {tmp!r} + "/archive", make_options("tiny", max_frames=6, workers=1))
    seen, t0 = {{}}, time.time()
    while time.time() - t0 < 90:
        text = urllib.request.urlopen(f"http://127.0.0.1:{{port}}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("ray_vxl_"):
                name, value = line.split("{{")[0], float(line.rsplit(" ", 1)[1])
                seen[name] = seen.get(name, 0.0) + value
        if len(seen) >= 7:
            break
        seen = {{}}
        time.sleep(3)
    print(json.dumps({{"exit": rep.exit_code, "frames": rep.frames, "kv": rep.kv_bytes, "seen": seen,
                      "dashboard": info.dashboard_url}}))
    shutdown_if_started(info)
""")


@pytest.mark.slow
def test_metrics_on_prometheus_endpoint(tmp_path):
    code = SCRIPT.format(repo=str(REPO), tmp=str(tmp_path))
    # Ray pushes metrics to the agent every 10 s by default; 1 s keeps the test from waiting on it
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["exit"] == 3 and res["dashboard"].startswith("http://")
    seen = res["seen"]
    assert seen.get("ray_vxl_frames_decoded_total") == res["frames"] > 0
    assert seen.get("ray_vxl_videos_indexed_total") == 1
    assert seen.get("ray_vxl_videos_failed_total") == 1
    assert seen.get("ray_vxl_kv_bytes_written_total") == res["kv"] > 0
    assert seen.get("ray_vxl_encode_seconds_count") == 1
    assert "ray_vxl_encode_seconds_bucket" in seen and "ray_vxl_encode_seconds_sum" in seen

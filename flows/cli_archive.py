"""`vxl archive ...`: inspect and maintain the VST-KV archive.

Every command takes `--archive URI` (default: $VXL_ARCHIVE, else ./archive) and `--json`.
Exit status: 0 success, 1 infrastructure error, 2 usage error (e.g. unknown video id),
3 `verify` found problems, or `recode` could not convert some videos.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Any

import typer

from flows.cli_common import EXIT_INFRA, EXIT_USAGE, fail

ArchiveOpt = typer.Option(
    None, "--archive", "-a", help="Archive URI (folder or s3://...). Default: $VXL_ARCHIVE or ./archive."
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")

LS_FIELDS = (
    "video_id",
    "source_uri",
    "status",
    "error_kind",
    "error",
    "model_fingerprint",
    "model_name",
    "num_windows",
    "num_vst_tokens",
    "kv_bytes",
    "kv_raw_bytes",
    "kv_codec",
    "dtype",
    "duration_s",
    "indexed_at",
)


def _open(uri: str | None, as_json: bool = False):
    """The existing archive at `uri` (or $VXL_ARCHIVE, else ./archive); never creates one."""
    from storage import ArchiveError, ArchiveNotFound, open_archive
    from tasks.options import archive_or_default

    uri = archive_or_default(uri)
    try:
        return open_archive(uri, create=False)
    except ArchiveNotFound as exc:
        raise fail(str(exc), "archive_not_found", EXIT_USAGE, as_json) from None
    except (ArchiveError, OSError, ValueError, RuntimeError) as exc:  # unreachable store, format version, ...
        raise fail(f"cannot open archive {uri}: {exc}", "infrastructure", EXIT_INFRA, as_json) from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(_jsonable(obj), indent=2))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def plan_summary(plan_json: str | None) -> dict | None:
    """A few lines' worth of a stored chunk plan: planner, windows, ratio counts, settings.

    `archive show` prints this instead of the plan itself (89 KB of JSON for a 30-minute video with
    its similarity curve); `--full` prints the plan.
    """
    if not plan_json:
        return None
    try:
        plan = json.loads(plan_json)
    except (TypeError, json.JSONDecodeError):
        return {"unreadable": True}
    wins = plan.get("windows") or []
    ratios: dict[int, int] = {}
    for w in wins:
        ratios[int(w[2])] = ratios.get(int(w[2]), 0) + 1
    params = plan.get("params") or {}
    settings = params.get("index_settings") or {}
    out = {"planner": plan.get("planner"), "windows": len(wins),
           "ratios": ", ".join(f"{r}x: {n}" for r, n in sorted(ratios.items())),
           "frames": (wins[-1][1] - wins[0][0]) if wins else 0}
    for k in ("fps", "max_frames", "frames", "target_ratio", "clip_model"):
        if settings.get(k) is not None:
            out[k] = settings[k]
    if params.get("frame_cap"):
        out["frame_cap"] = params["frame_cap"]
    return out


def _resolve_id(arch, vid: str, as_json: bool = False) -> str:
    """A full video id from an id or a unique prefix (with or without `xxh3-128:`), else exit 2."""
    from storage import AmbiguousVideoId, VideoNotFound

    try:
        return arch.resolve_video_id(vid)
    except AmbiguousVideoId as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json, video_id=vid) from None
    except VideoNotFound:
        raise fail(f"no video with id {vid!r} in archive {arch.uri} (see `vxl archive ls`)", "video_not_found",
                   EXIT_USAGE, as_json, video_id=vid) from None


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="archive", help="Inspect and maintain the VST-KV archive.", no_args_is_help=True)
    app.add_typer(sub, name="archive")

    @sub.command("ls")
    def ls_cmd(
        archive: str = ArchiveOpt,
        as_json: bool = JsonOpt,
        where: str = typer.Option(None, "--where", help="SQL filter on `videos`, e.g. \"status = 'failed'\"."),
    ) -> None:
        """List videos (one line per video and model fingerprint)."""
        arch = _open(archive, as_json)
        recs = arch.list_videos(where)
        rows = [{k: getattr(r, k) for k in LS_FIELDS} for r in recs]
        if as_json:
            _print_json(rows)
            return
        typer.echo(f"{'video_id':<25} {'status':<8} {'fp':<8} {'win':>4} {'vst':>7} {'kv':>10} {'codec':<6}  "
                   "source / error")
        for r in rows:
            tail = r["source_uri"] or ""
            if r["status"] != "indexed":
                tail += f"  [{r['error_kind']}: {r['error']}]"
            typer.echo(
                f"{r['video_id'][:25]:<25} {r['status']:<8} {r['model_fingerprint'][:8]:<8} "
                f"{r['num_windows'] if r['num_windows'] is not None else '-':>4} "
                f"{r['num_vst_tokens'] if r['num_vst_tokens'] is not None else '-':>7} "
                f"{_size(r['kv_bytes']):>10} {(r['kv_codec'] or ('raw' if r['status'] == 'indexed' else '-')):<6}  {tail}"
            )
        typer.echo(f"{len(rows)} row(s)")

    @sub.command("show")
    def show_cmd(
        video_id: str = typer.Argument(..., help="Video id (or a unique prefix)."),
        archive: str = ArchiveOpt,
        as_json: bool = JsonOpt,
        plot: str = typer.Option(None, "--plot", help="Write a PNG of the chunk plan (similarity, depth, "
                                 "boundaries, windows and ratios) to this path."),
        full: bool = typer.Option(False, "--full", help="Print the whole plan (every window, the similarity "
                                  "curve) and every sampled frame instead of a summary."),
    ) -> None:
        """Show one video: its record(s) and, per fingerprint, its windows (no K/V is read)."""
        import dataclasses

        arch = _open(archive, as_json)
        vid = _resolve_id(arch, video_id, as_json)
        if plot:
            from flows.plan_plot import plot_plan

            indexed = [r for r in arch.list_videos(f"video_id = '{vid}'") if r.status == "indexed"]
            if not indexed:
                raise fail(f"video {vid} has no indexed memory, so no plan to draw", "usage", EXIT_USAGE, as_json)
            written = plot_plan(indexed[0], plot)
            if not as_json:
                typer.echo(f"plan plot written to {written}")
        out = []
        for rec in arch.list_videos(f"video_id = '{vid}'"):
            d = dataclasses.asdict(rec)
            d["library_versions"] = json.loads(rec.library_versions) if rec.library_versions else None
            if not full:
                d["plan"] = plan_summary(rec.plan)
            d["numerics_probes"] = [{k: p[k] for k in ("status", "dtype", "environment", "accepted_change",
                                                       "created_at")} for p in arch.list_probes(rec.model_fingerprint)]
            if rec.status == "indexed":
                emb, spans = arch.window_embeddings(rec.video_id, rec.model_fingerprint)
                d["windows"] = [dataclasses.asdict(s) for s in spans]
                d["has_clip_embeddings"] = emb is not None
            out.append(d)
        if as_json:
            _print_json(out)
            return
        for d in out:
            for k, v in d.items():
                if k == "windows":
                    continue
                if k in ("sampled_frames", "sampled_times") and v is not None and len(v) > 8 and not full:
                    v = f"{v[:8]}... ({len(v)})"
                if k == "plan" and isinstance(v, dict):
                    v = ", ".join(f"{a} {b}" for a, b in v.items())
                if k == "library_versions" and v:
                    v = ", ".join(f"{name} {ver}" for name, ver in v.items())
                if k == "numerics_probes":
                    v = "; ".join(f"{p['status']} {p['dtype']} on {p['environment'].get('device')} "
                                  f"(transformers {p['environment'].get('transformers')})"
                                  + (" [accepted change]" if p["accepted_change"] else "") for p in v) or "none"
                typer.echo(f"{k:>18}: {v}")
            wins = d.get("windows", [])
            if len(wins) > 12 and not full:
                typer.echo(f"           windows: {len(wins)} (first and last 3 below; --full for all)")
                wins = wins[:3] + wins[-3:]
            for w in wins:
                typer.echo(
                    f"    window {w['index']:>3}: frames {w['frame_start']}-{w['frame_end']}  "
                    f"{w['start_s']}-{w['end_s']} s  ratio {w['ratio']}  vst {w['num_vst']}  carry {w['carry_in']}"
                )
            typer.echo("")

    @sub.command("verify")
    def verify_cmd(archive: str = ArchiveOpt, as_json: bool = JsonOpt) -> None:
        """Re-check every blob checksum and per-video invariants. Exit 3 and list problems if any."""
        import dataclasses

        arch = _open(archive, as_json)
        rep = arch.verify()
        if as_json:
            _print_json(
                {
                    "ok": rep.ok,
                    "videos_checked": rep.videos_checked,
                    "blobs_checked": rep.blobs_checked,
                    "bytes_checked": rep.bytes_checked,
                    "garbage_rows": rep.garbage_rows,
                    "problems": [dataclasses.asdict(p) for p in rep.problems],
                }
            )
        else:
            typer.echo(
                f"checked {rep.videos_checked} video(s), {rep.blobs_checked} blob(s), "
                f"{_size(rep.bytes_checked)}; {rep.garbage_rows} garbage row(s) (`compact` removes them)"
            )
            for p in rep.problems:
                where = "video" if p.window is None else ("sink" if p.window < 0 else f"window {p.window}")
                typer.echo(f"BAD {p.video_id} {where} [{p.kind}]: {p.detail}", err=True)
            typer.echo("OK" if rep.ok else f"{len(rep.problems)} problem(s)")
        if not rep.ok:
            raise typer.Exit(3)

    @sub.command("stats")
    def stats_cmd(archive: str = ArchiveOpt, as_json: bool = JsonOpt) -> None:
        """Counts, K/V bytes (stored and raw, per codec, with the ratio to raw) and bytes on disk."""
        st = _open(archive, as_json).stats()
        if as_json:
            _print_json(st)
            return
        for k, v in st.items():
            if k in ("kv_bytes", "kv_raw_bytes"):
                v = f"{v} ({_size(v)})"
            if k == "kv_over_raw" and v is not None:
                v = f"{v:.4f}"
            if k == "kv_codecs":
                v = "; ".join(f"{n}: {c['videos']} video(s), {_size(c['kv_bytes'])} of {_size(c['kv_raw_bytes'])} "
                              f"raw ({c['ratio_to_raw']:.3f}x)" if c["ratio_to_raw"] is not None else
                              f"{n}: {c['videos']} video(s)" for n, c in v.items()) or "-"
            if k == "disk_bytes" and v:
                v = ", ".join(f"{n} {_size(b)}" for n, b in v.items())
            if k == "disk_over_kv" and v:
                v = f"{v:.4f}"
            typer.echo(f"{k:>15}: {v}")

    @sub.command("recode")
    def recode_cmd(
        video_ids: list[str] = typer.Argument(None, help="Video ids (or unique prefixes); default: every "
                                                         "indexed video."),
        kv_codec: str = typer.Option(..., "--kv-codec", help="Target codec: raw, int8, int4, int8-zstd, int4-zstd."),
        archive: str = ArchiveOpt,
        as_json: bool = JsonOpt,
        fingerprint: str = typer.Option(None, "--fingerprint", help="Only memories of this model fingerprint."),
        force: bool = typer.Option(False, "--force", help="Rewrite memories already stored with this codec."),
    ) -> None:
        """Rewrite stored memories with another K/V codec, one video at a time, atomically.

        Each video's new rows are written first; one commit switches the video to them; the old rows
        are deleted after it. A reader, or a recode killed at any point, sees the old memory or the
        new one. From a quantized codec the dequantized values are re-encoded (the quantization
        error is kept, also when recoding to raw).
        """
        from storage import ArchiveError, CorruptBlob
        from storage.kvcodec import KV_CODECS

        if kv_codec not in KV_CODECS:
            raise fail(f"--kv-codec must be one of {list(KV_CODECS)}, got {kv_codec!r}", "usage", EXIT_USAGE, as_json)
        arch = _open(archive, as_json)
        ids = {_resolve_id(arch, v, as_json) for v in video_ids} if video_ids else None
        recs = [r for r in arch.list_videos("status = 'indexed'")
                if (ids is None or r.video_id in ids) and (fingerprint is None or r.model_fingerprint == fingerprint)]
        results, failed = [], 0
        for r in recs:
            try:
                res = arch.recode(r.video_id, r.model_fingerprint, kv_codec, force=force)
            except (CorruptBlob, ArchiveError, OSError, RuntimeError, ValueError) as exc:  # this video only
                failed += 1
                res = {"video_id": r.video_id, "model_fingerprint": r.model_fingerprint, "status": "failed",
                       "from": r.codec_name, "to": kv_codec, "error": str(exc)}
            results.append(res)
            if not as_json:
                if res["status"] == "failed":
                    typer.echo(f"FAILED {r.video_id} [{res['from']} -> {kv_codec}]: {res['error']}", err=True)
                else:
                    typer.echo(f"{res['status']:<9} {r.video_id[:25]:<25} {r.model_fingerprint[:8]} "
                               f"{res['from']} -> {res['to']}: {_size(res['kv_bytes_before'])} -> "
                               f"{_size(res['kv_bytes'])} ({_size(res['kv_raw_bytes'])} raw)")
        before = sum(x.get("kv_bytes_before") or 0 for x in results if x["status"] != "failed")
        after = sum(x.get("kv_bytes") or 0 for x in results if x["status"] != "failed")
        summary = {"to": kv_codec, "videos": len(results),
                   "recoded": sum(1 for x in results if x["status"] == "recoded"),
                   "unchanged": sum(1 for x in results if x["status"] == "unchanged"),
                   "conflict": sum(1 for x in results if x["status"] == "conflict"),
                   "failed": failed, "kv_bytes_before": before, "kv_bytes": after}
        if as_json:
            _print_json({**summary, "results": results})
        else:
            typer.echo(f"recoded {summary['recoded']}, unchanged {summary['unchanged']}, changed meanwhile "
                       f"{summary['conflict']}, failed {failed} of {len(results)} video(s); K/V "
                       f"{_size(before)} -> {_size(after)}")
        if failed:
            raise typer.Exit(3)

    @sub.command("compact")
    def compact_cmd(
        archive: str = ArchiveOpt,
        as_json: bool = JsonOpt,
        older_than: float = typer.Option(
            600.0, "--older-than", min=0, help="Remove table versions older than this many seconds."
        ),
        grace: float = typer.Option(
            600.0, "--grace", min=0, help="Keep uncommitted K/V rows younger than this many seconds (puts in flight)."
        ),
    ) -> None:
        """Delete garbage K/V rows, compact files and remove old versions."""
        import math
        import warnings

        for flag, v in (("--older-than", older_than), ("--grace", grace)):
            if not (math.isfinite(v) and v >= 0):
                raise fail(f"{flag} must be a finite number of seconds >= 0, got {v!r}", "usage", EXIT_USAGE, as_json)

        arch = _open(archive, as_json)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = arch.compact(older_than=timedelta(seconds=older_than), garbage_grace=timedelta(seconds=grace))
        if as_json:
            _print_json(out)
        else:
            typer.echo(f"deleted {out['garbage_rows_deleted']} garbage row(s)")
            for n, s in out["tables"].items():
                typer.echo(f"{n}: {s}")

    @sub.command("rm")
    def rm_cmd(
        video_id: str = typer.Argument(..., help="Video id (or a unique prefix)."),
        archive: str = ArchiveOpt,
        as_json: bool = JsonOpt,
        fingerprint: str = typer.Option(None, "--fingerprint", help="Only this model fingerprint."),
    ) -> None:
        """Remove a video (all fingerprints unless --fingerprint) and its K/V."""
        from storage import VideoNotFound

        arch = _open(archive, as_json)
        video_id = _resolve_id(arch, video_id, as_json)
        try:
            n = arch.rm(video_id, fingerprint)
        except VideoNotFound as exc:
            raise fail(str(exc), "video_not_found", EXIT_USAGE, as_json, video_id=video_id) from None
        if as_json:
            _print_json({"video_id": video_id, "removed": n})
        else:
            typer.echo(f"removed {n} row(s) of {video_id}")


if __name__ == "__main__":  # pragma: no cover
    _app = typer.Typer()
    register(_app)
    sys.exit(_app())

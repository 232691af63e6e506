"""The VST-KV archive on LanceDB: tables `videos`, `vst_kv`, `answers`, `vico_samples`.

Write protocol of `Archive.put` (atomic per video, idempotent, safe with concurrent writers):
  1. append every `vst_kv` row of the memory (sink + windows) under a fresh random `write_id`;
  2. commit the `videos` row with `merge_insert` on the primary key `key = video_id/fingerprint`,
     naming that `write_id` (this single commit is what makes the video visible);
  3. delete the `vst_kv` rows of the write it replaced (best effort).
Readers first read the committed `videos` row, then only `vst_kv` rows of its `write_id`, both from
snapshots; so a reader sees the old memory or the new one, never a mix or a part. Rows of writes
that were never committed (a killed writer) or were replaced are garbage: invisible to readers,
reported by `verify`, removed by `compact` once older than a grace period.

lancedb and lance are imported lazily, inside methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from model.memory import VSTMemory, WindowSpan
from storage import blobread, codec, kvcodec
from storage.errors import (
    AmbiguousVideoId,
    ArchiveError,
    ArchiveNotFound,
    CorruptBlob,
    FingerprintMismatch,
    VideoNotFound,
)
from storage.schema import (
    ADDED_COLUMNS,
    ANSWERS_SCHEMA,
    EVAL_RUNS_SCHEMA,
    FORMAT_VERSION,
    LEASES_SCHEMA,
    PROBES_SCHEMA,
    READABLE_VERSIONS,
    SCHEMAS,
    SINK_WINDOW,
    VICO_SAMPLES_SCHEMA,
    VIDEOS_SCHEMA,
    VST_KV_META_COLUMNS,
)

STATUS_INDEXED = "indexed"
STATUS_FAILED = "failed"

_COMMIT_RETRIES = 4
"""attempts of a write whose commit conflict LanceDB could not resolve itself (`_retry`)."""
_OPEN_TRIES = 5
"""attempts to open-or-create a table (a concurrent creator may win the race)."""
_CACHE_ENTRIES = 4096  # per read cache; cleared when full


@dataclass
class VideoRecord:
    """One row of `videos`: a video as indexed (or failed) by one model. Key (video_id, model_fingerprint).

    Fields filled by `Archive.put` from the memory: status, num_windows, num_vst_tokens, kv_bytes,
    kv_raw_bytes, kv_codec, dtype, write_id (and indexed_at when None).
    """

    video_id: str
    """content digest of the video file (hex)."""
    model_fingerprint: str
    """`VideoXL.fingerprint` of the model that made (or failed to make) the memory."""
    model_name: str | None = None
    source_uri: str | None = None
    size_bytes: int | None = None
    """size of the video file, bytes."""
    duration_s: float | None = None
    """duration, seconds."""
    native_fps: float | None = None
    """frames per second of the file."""
    frame_count: int | None = None
    """frames in the file."""
    width: int | None = None
    """pixels."""
    height: int | None = None
    """pixels."""
    codec: str | None = None
    sampled_frames: list[int] | None = None
    """indices (into the file's frames) of the frames fed to the model."""
    sampled_times: list[float] | None = None
    """presentation times of the sampled frames, seconds."""
    status: str = STATUS_INDEXED
    """'indexed' or 'failed'."""
    error_kind: str | None = None
    """failed rows: short error class, e.g. 'DecodeError', 'Timeout'."""
    error: str | None = None
    """failed rows: the error message."""
    plan: str | None = None
    """JSON of `ChunkPlan.to_dict()` (may hold the CLIP similarity curve)."""
    num_windows: int | None = None
    num_vst_tokens: int | None = None
    """VST tokens over all windows (sink excluded)."""
    kv_bytes: int | None = None
    """K/V bytes stored (sink + windows), as encoded by `kv_codec` (= the raw size for `raw`)."""
    dtype: str | None = None
    """K/V dtype name ('float32' | 'float16' | 'bfloat16')."""
    memory_meta: str | None = None
    """JSON of `VSTMemory.meta`."""
    decode_s: float | None = None
    """seconds spent decoding frames."""
    plan_s: float | None = None
    """seconds spent planning windows."""
    encode_s: float | None = None
    """seconds spent encoding the memory."""
    indexed_at: datetime | None = None
    """UTC time of the put."""
    indexer_version: str | None = None
    write_id: str | None = None
    """the `vst_kv` write that holds this memory (None for failed rows)."""
    library_versions: str | None = None
    """JSON of `model.environment.library_versions()` of the process that computed the memory
    (torch, transformers, tokenizers, decoders, CUDA/cuDNN or "cpu", device); None before format 2."""
    kv_codec: str | None = None
    """`storage.kvcodec` codec of the window rows ('raw', 'int8', 'int4'); None before format 3 (= raw)."""
    kv_raw_bytes: int | None = None
    """K/V bytes of the memory in its dtype, unencoded (what `raw` stores); None before format 3
    (= kv_bytes)."""

    @property
    def codec_name(self) -> str:
        """`kv_codec`, with rows from before format 3 read as 'raw'."""
        return self.kv_codec or "raw"

    @property
    def raw_bytes(self) -> int | None:
        """`kv_raw_bytes`, with rows from before format 3 read as `kv_bytes`."""
        return self.kv_raw_bytes if self.kv_raw_bytes is not None else self.kv_bytes

    @property
    def key(self) -> str:
        return f"{self.video_id}/{self.model_fingerprint}"

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["key"] = self.key
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> VideoRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class Problem:
    """One thing `verify` found wrong."""

    video_id: str
    model_fingerprint: str | None
    window: int | None
    """window index, -1 = sink, None = the video as a whole."""
    kind: str
    """'checksum' | 'missing' | 'codec' (a quantized blob's header disagrees with its row) | 'invariant' |
    'duplicate' | 'schema'."""
    detail: str


@dataclass
class VerifyReport:
    videos_checked: int = 0
    blobs_checked: int = 0
    bytes_checked: int = 0
    garbage_rows: int = 0
    """vst_kv rows of writes that are not committed (ignored by readers; `compact` removes them)."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _dead_local_owner(owner: str) -> bool:
    """True when a lease owner `host:pid:run` names this host and a process that no longer exists."""
    import socket

    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _ts(t: datetime) -> str:
    """A SQL timestamp literal (UTC, microseconds) for Lance filters and merge conditions."""
    return f"timestamp '{t.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _q(s: str) -> str:
    """SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def _retry(fn: Callable[[], Any], what: str) -> Any:
    """Run a Lance write (`what` names it in the error).

    LanceDB retries commit conflicts inside each write (its own loop, with backoff), so a conflict
    that still surfaces is rare. When it is a `lance.commit.CommitConflictError` whose `retryable` is
    True (the transaction was preempted), the write is tried again a few times; a non-retryable
    conflict and every other error propagate at once.
    """
    from lance.commit import CommitConflictError

    for attempt in range(_COMMIT_RETRIES):
        try:
            return fn()
        except CommitConflictError as exc:
            if not exc.retryable or attempt == _COMMIT_RETRIES - 1:
                raise ArchiveError(f"{what}: commit conflict ({exc}); retry the command") from exc
            time.sleep(0.05 * (2**attempt) * (1 + random.random()))
    raise AssertionError("unreachable")


def answer_key(
    video_id: str, fingerprint: str, question: str, choices: Sequence[str] | None, settings: dict | None
) -> str:
    """Key of an `answers` row: sha256 hex of the canonical JSON of its inputs."""
    blob = json.dumps(
        [video_id, fingerprint, question, list(choices) if choices is not None else None, settings or {}],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _utf8(v: Any) -> Any:
    """A str that Arrow can store: lone surrogates (undecodable bytes of OS file names, PEP 383, and
    error texts that quote them) become backslash escapes (`\\udcff`) instead of failing the write."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return v.encode("utf-8", "backslashreplace").decode("utf-8")
    return v


def _table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [_utf8(r.get(f.name)) if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                     else r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def _dedupe(rows: Iterable[dict], key: str) -> list[dict]:
    out: dict[str, dict] = {}
    for r in rows:
        out[r[key]] = r
    return list(out.values())


VIDEO_ID_SCHEME = "xxh3-128:"
"""Prefix of every video id (`tasks.video.video_id`: XXH3-128 of the file's bytes)."""


_SCAN_ROWS = 4096
"""rows per record batch in maintenance scans (`verify`, `stats`, `compact`, id sets)."""
_VERIFY_BLOB_BYTES = 64 << 20
"""blob bytes `verify` reads per Lance call (one window of Video-XL-7B at ratio 8 is ~10 MB)."""
_COMPACT_ROWS = 65_536
"""rows per fragment written by `compact`. Lance's compaction holds about one output fragment in
memory, so this bounds `compact`'s memory whatever the table's size (measured: 124,000 `vst_kv` rows
with 512-float embeddings, one task of 1M rows by default: +475 MB; 32,768-row fragments: +220 MB;
bench/archive_maintenance.py, docs/PERFORMANCE.md). The vxl tables have no indices to optimise."""
_VERIFY_KV_COLUMNS = ["key", "video_id", "model_fingerprint", "write_id", "window", "num_tokens", "dtype", "shape",
                      "nbytes", "checksum", "kv_codec"]
"""the `vst_kv` columns `verify` checks (no CLIP embedding, no spans)."""



def prepare_write(record: VideoRecord, memory: VSTMemory, window_embeddings: np.ndarray | None = None,
                  kv_codec: str | None = None) -> tuple[VideoRecord, pa.Table]:
    """Step 0 of `Archive.put`: the committed-to-be `videos` record and its `vst_kv` rows under a
    fresh write_id (nothing written). Also used to build synthetic archives in bulk
    (`bench/archive_maintenance.py`). Args and errors: as `Archive.put`."""
    write_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    kvc = kvcodec.get_codec(kv_codec)
    kv = codec.memory_to_arrow(
        memory,
        video_id=record.video_id,
        fingerprint=record.model_fingerprint,
        write_id=write_id,
        window_embeddings=window_embeddings,
        written_at=now,
        kv_codec=kvc,
    )
    rec = dataclasses.replace(
        record,
        status=STATUS_INDEXED,
        error_kind=None,
        error=None,
        num_windows=len(memory.windows),
        num_vst_tokens=memory.num_vst,
        kv_bytes=sum(kv.column("nbytes").to_pylist()),
        kv_raw_bytes=memory.nbytes,
        kv_codec=kvc.name,
        dtype=codec.dtype_name(memory.dtype),
        memory_meta=codec.meta_to_json(memory.meta),
        indexed_at=record.indexed_at or now,
        write_id=write_id,
    )
    return rec, kv


def _scan(ds, columns: list[str], **kw) -> Iterator[list[dict]]:
    """Rows of Lance snapshot `ds` (`columns` only), `_SCAN_ROWS` at a time as lists of dicts."""
    for batch in ds.to_batches(columns=columns, batch_size=_SCAN_ROWS, **kw):
        yield batch.to_pylist()


class _WriteCheck:
    """Streaming invariant check of one committed write: running aggregates of its K/V rows, a few
    hundred bytes per video whatever its window count (window indices kept as a bitmask)."""

    __slots__ = ("key", "num_windows", "num_vst_tokens", "kv_bytes", "codec", "kv_raw_bytes", "sinks", "mask",
                 "dups", "extra", "tokens", "nbytes", "raw", "codecs", "geo", "row_problems")

    def __init__(self, key: str, video: dict) -> None:
        self.key = key
        self.num_windows = int(video["num_windows"] or 0)
        self.num_vst_tokens = video["num_vst_tokens"]
        self.kv_bytes = video["kv_bytes"]
        self.codec = video["kv_codec"] or kvcodec.RAW.name
        self.kv_raw_bytes = video["kv_raw_bytes"]
        self.sinks = self.mask = self.tokens = self.nbytes = self.raw = 0
        self.dups: tuple[int, ...] = ()
        self.extra: tuple[int, ...] = ()
        self.codecs: tuple[str, ...] = ()
        self.geo: tuple[tuple, ...] = ()
        self.row_problems: list[Problem] | None = None

    def _bad(self, window: int | None, detail: str) -> None:
        vid, fp = self.key.split("/", 1)
        if self.row_problems is None:
            self.row_problems = []
        self.row_problems.append(Problem(vid, fp, window, "invariant", detail))

    def add(self, m: dict) -> bool:
        """Account for K/V row `m`; False when the row itself is malformed (its blob is not read)."""
        w = int(m["window"])
        if w == SINK_WINDOW:
            self.sinks += 1
        else:
            self.tokens += int(m["num_tokens"])
            if 0 <= w < self.num_windows:
                if self.mask >> w & 1 and len(self.dups) < 10:
                    self.dups += (w,)
                self.mask |= 1 << w
            elif len(self.extra) < 10:
                self.extra += (w,)
        self.nbytes += int(m["nbytes"])
        c = codec.row_codec(m)
        if c not in self.codecs:
            self.codecs += (c,)
        shape = list(m["shape"] or [])
        g = (m["dtype"], *shape[:3], *shape[4:5])
        if g not in self.geo:
            self.geo += (g,)
        if m["dtype"] not in codec.DTYPES or len(shape) != 5 or shape[1] != 2:
            self._bad(w, f"bad dtype/shape {m['dtype']} {shape}")
            return False
        self.raw += codec.raw_nbytes(m)
        try:
            codec.check_row(m)
        except CorruptBlob as exc:
            self._bad(w, f"shape {shape} disagrees with num_tokens {m['num_tokens']} / nbytes {m['nbytes']} ({exc})")
            return False
        return True

    def problems(self) -> list[Problem]:
        """Every invariant problem of the write (row problems first, then the totals)."""
        out = list(self.row_problems or [])
        vid, fp = self.key.split("/", 1)

        def bad(window, detail):
            out.append(Problem(vid, fp, window, "invariant", detail))

        if self.sinks != 1:
            bad(SINK_WINDOW, f"{self.sinks} sink rows, expected 1")
        n = self.num_windows
        if self.mask != (1 << n) - 1 or self.dups or self.extra:
            missing = [i for i in range(n) if not self.mask >> i & 1]
            bad(missing[0] if missing else None, f"window rows: missing {missing[:10]}, duplicated "
                f"{list(self.dups)}, out of range {list(self.extra)}; expected 0..{n - 1} once each")
        if self.tokens != self.num_vst_tokens:
            bad(None, f"window tokens sum to {self.tokens}, videos says {self.num_vst_tokens}")
        if self.nbytes != self.kv_bytes:
            bad(None, f"blob bytes sum to {self.nbytes}, videos says {self.kv_bytes}")
        if not set(self.codecs) <= {self.codec, kvcodec.RAW.name}:
            bad(None, f"rows hold codecs {sorted(self.codecs)}, videos says {self.codec}")
        if len(self.geo) > 1:
            bad(None, f"rows disagree on dtype/geometry: {sorted(self.geo, key=str)}")
        if self.kv_raw_bytes is not None and self.raw != self.kv_raw_bytes:
            bad(None, f"raw sizes of the rows sum to {self.raw}, videos says kv_raw_bytes {self.kv_raw_bytes}")
        return out


class Archive:
    """A VST-KV archive at `uri` (local folder or object-store URI). Use `open_archive`.

    All methods are safe to call from several processes at once (not across `fork`: spawn only).
    """

    def __init__(self, uri: str | os.PathLike, storage_options: dict[str, str] | None = None, *,
                 create: bool = True) -> None:
        import lancedb

        self.uri = str(uri)
        self.storage_options = dict(storage_options or {})
        local = "://" not in self.uri or self.uri.startswith("file://")
        self._local_root = os.path.abspath(self.uri.removeprefix("file://")) if local else None
        """the archive folder when it is on a local file system (blob sidecars are read directly)."""
        self._db = lancedb.connect(
            self.uri,
            read_consistency_interval=timedelta(0),
            storage_options=self.storage_options or None,
        )
        self._tables: dict[str, Any] = {}
        # Read caches (per process, never persisted). A Lance snapshot is immutable, so anything
        # read from version v of a table stays true for version v; every call asks for the latest
        # version number first (a listing of `_versions/`: cheap locally, one LIST on S3).
        self._snapshots: dict[str, Any] = {}
        """table name -> Lance dataset checked out at the newest version seen."""
        self._video_cache: dict[str, tuple[int, list[dict]]] = {}
        """video_id -> (videos version, its `videos` rows at that version)."""
        self._kv_cache: dict[tuple[str, str], list[dict]] = {}
        """(key, write_id) -> metadata rows (with row addresses and blob locations) of that write."""
        self._frag_files: dict[int, str | None] = {}
        """vst_kv fragment id -> its data file path (for blob sidecar locations)."""
        if not create:
            try:
                self._db.open_table("videos")
            except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:  # lancedb: no such table
                raise ArchiveNotFound(self.uri, "no `videos` table") from exc
        for name in SCHEMAS:
            self._table(name)

    def __repr__(self) -> str:
        return f"Archive({self.uri!r})"

    # -- tables -------------------------------------------------------------------------------
    def _table(self, name: str):
        tbl = self._tables.get(name)
        if tbl is not None:
            return tbl
        schema = SCHEMAS[name]
        last: BaseException | None = None
        for attempt in range(_OPEN_TRIES):
            try:
                tbl = self._db.open_table(name)
                break
            except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:  # not created yet
                last = exc
            try:
                tbl = self._db.create_table(name, schema=schema, exist_ok=True)
                break
            except (ValueError, RuntimeError, OSError) as exc:  # lost a create race: open it next time
                last = exc
                time.sleep(0.05 * (attempt + 1) * random.random())
        else:
            raise ArchiveError(f"{self.uri}: cannot open or create table {name}: {last}") from last
        meta = tbl.schema.metadata or {}
        version = meta.get(b"vxl.format_version", b"").decode()
        if version not in READABLE_VERSIONS:
            raise ArchiveError(
                f"{self.uri}: table {name} has archive format version {version or 'none'}, this vxl "
                f"reads versions {', '.join(READABLE_VERSIONS)}; use a matching vxl or a fresh archive"
            )
        if version != FORMAT_VERSION:
            tbl = self._upgrade(name, tbl)
        self._tables[name] = tbl
        return tbl

    def _upgrade(self, name: str, tbl):
        """Bring table `name` to `FORMAT_VERSION`: add the columns later versions added (all null;
        a metadata-only commit), then write the new format version into the schema metadata.
        Idempotent and safe when several processes upgrade at once (a lost race finds the column)."""
        import lancedb

        have = set(tbl.schema.names)
        for _version, fld in ADDED_COLUMNS.get(name, []):
            if fld.name not in have:
                try:
                    tbl.add_columns(fld)
                except (OSError, RuntimeError, ValueError):
                    tbl = lancedb.connect(self.uri, storage_options=self.storage_options or None).open_table(name)
                    if fld.name not in tbl.schema.names:
                        raise
        meta = {k.decode(): v.decode() for k, v in SCHEMAS[name].metadata.items()}
        try:
            tbl.to_lance().update_schema_metadata(meta, replace=True)
        except OSError:  # lance.commit.CommitConflictError: another process upgraded it first
            pass
        tbl = self._db.open_table(name)
        if (tbl.schema.metadata or {}).get(b"vxl.format_version", b"").decode() != FORMAT_VERSION:
            raise ArchiveError(f"{self.uri}: could not upgrade table {name} to format version {FORMAT_VERSION}")
        return tbl

    def _ds(self, name: str):
        """A Lance dataset snapshot of the latest committed version of table `name`.

        The snapshot handle is kept between calls: each call only asks Lance for the latest version
        number and checks out a new snapshot when it changed. So a commit by this or any other
        process is visible to the next call (the `read_consistency_interval=0` guarantee), without
        re-opening the dataset every time. Returned snapshots are never mutated (no
        `checkout_latest` on a shared handle), so a caller may keep reading one.
        """
        ds = self._snapshots.get(name)
        if ds is None:
            ds = self._table(name).to_lance()
        else:
            latest = ds.latest_version
            if latest == ds.version:
                return ds
            ds = ds.checkout_version(latest)
        self._snapshots[name] = ds
        return ds

    def schema(self, name: str) -> pa.Schema:
        """The Arrow schema of table `name` as stored."""
        return self._table(name).schema

    # -- videos -------------------------------------------------------------------------------
    def _video_rows(self, where: str | None, columns: list[str] | None = None) -> list[dict]:
        ds = self._ds("videos")
        return ds.to_table(columns=columns, filter=where).to_pylist()

    def list_videos(self, where: str | None = None) -> list[VideoRecord]:
        """Rows of `videos` matching the SQL filter `where` (all when None), sorted by video_id."""
        rows = self._video_rows(where)
        rows.sort(key=lambda r: (r["video_id"], r["model_fingerprint"]))
        return [VideoRecord.from_row(r) for r in rows]

    # -- leases: one encode per video across concurrent runs -----------------------------------
    def acquire_lease(self, video_id: str, fingerprint: str, owner: str, ttl_s: float) -> str | None:
        """Take the lease of (video, fingerprint) for `owner` for `ttl_s` seconds, unless another
        owner holds an unexpired one.

        One conditional `merge_insert` (insert, or take over an expired lease or one already ours),
        then a read-back: of concurrent callers exactly one finds its own name in the row (Lance
        re-runs a conflicting merge against the winner's commit, whose lease is then unexpired).
        A lease whose owner (`host:pid:...`) is a dead process on this host is taken over at once
        (a rerun right after a killed run must not wait for the expiry).

        Returns:
            None when `owner` now holds the lease; else the holder's owner string.
        """
        from datetime import timedelta as _td

        now = datetime.now(UTC)
        key = f"{video_id}/{fingerprint}"
        row = {"key": key, "video_id": video_id, "model_fingerprint": fingerprint, "owner": owner,
               "acquired_at": now, "expires_at": now + _td(seconds=float(ttl_s))}
        tbl = self._table("leases")
        cond = (f"target.expires_at < {_ts(now)} OR target.owner = {_q(owner)}")
        _retry(lambda: tbl.merge_insert("key").when_matched_update_all(where=cond).when_not_matched_insert_all()
               .execute(_table_from_rows([row], LEASES_SCHEMA)), f"lease {video_id}")
        got = self._ds("leases").to_table(columns=["owner"], filter=f"key = {_q(key)}").to_pylist()
        holder = got[0]["owner"] if got else None
        if holder is not None and holder != owner and _dead_local_owner(holder):
            # its run was killed on this machine: take the lease over now instead of after its expiry
            # (conditional on the row still naming that dead owner)
            cond = f"target.owner = {_q(holder)}"
            _retry(lambda: tbl.merge_insert("key").when_matched_update_all(where=cond)
                   .execute(_table_from_rows([row], LEASES_SCHEMA)), f"lease {video_id}")
            got = self._ds("leases").to_table(columns=["owner"], filter=f"key = {_q(key)}").to_pylist()
            holder = got[0]["owner"] if got else None
        return None if holder == owner else (holder or "unknown")

    def renew_leases(self, keys: Sequence[tuple[str, str]], owner: str, ttl_s: float) -> None:
        """Push the expiry of `owner`'s leases on (video, fingerprint) `keys` to now + `ttl_s`."""
        if not keys:
            return
        from datetime import timedelta as _td

        exp = datetime.now(UTC) + _td(seconds=float(ttl_s))
        where = f"owner = {_q(owner)} AND key IN ({', '.join(_q(f'{v}/{f}') for v, f in keys)})"
        _retry(lambda: self._table("leases").update(where=where, values={"expires_at": exp}), "renew leases")

    def release_leases(self, keys: Sequence[tuple[str, str]], owner: str) -> None:
        """Drop `owner`'s leases on `keys` (a lease of another owner is left alone)."""
        if not keys:
            return
        where = f"owner = {_q(owner)} AND key IN ({', '.join(_q(f'{v}/{f}') for v, f in keys)})"
        _retry(lambda: self._table("leases").delete(where), "release leases")

    def list_leases(self) -> list[dict]:
        """Every lease row (expired ones included), oldest first."""
        rows = self._ds("leases").to_table().to_pylist()
        return sorted(rows, key=lambda r: r["acquired_at"])

    def resolve_video_id(self, text: str) -> str:
        """The full video id for `text`: an id, or a unique prefix of one, with or without the
        `xxh3-128:` scheme (`vxl archive ls` prints ids shortened; users copy the hex part).

        Args:
            text: e.g. `xxh3-128:2b0b241c...` (full), `xxh3-128:2b0b241c` or `2b0b241c` (>= 4 hex digits).

        Raises:
            VideoNotFound: no video id matches.
            AmbiguousVideoId: the prefix matches several ids.
        """
        t = text.strip().lower()
        cands = [t]
        if ":" not in t and t and all(c in "0123456789abcdef" for c in t):
            cands.append(VIDEO_ID_SCHEME + t)
        for c in cands:
            if self._video_rows(f"video_id = {_q(c)}", columns=["video_id"]):
                return c
        if len(t.rsplit(":", 1)[-1]) >= 4 and re.fullmatch(r"[0-9a-z:-]+", t):  # no LIKE wildcards
            ids = sorted({r["video_id"] for c in cands
                          for r in self._video_rows(f"video_id LIKE {_q(c + '%')}", columns=["video_id"])})
            if len(ids) == 1:
                return ids[0]
            if ids:
                raise AmbiguousVideoId(text, ids)
        raise VideoNotFound(text)

    def get_video(self, video_id: str, fingerprint: str | None = None) -> VideoRecord:
        """The `videos` row of `video_id` (for `fingerprint`; else the latest indexed, then failed).

        Raises:
            VideoNotFound: no row.
        """
        where = f"video_id = {_q(video_id)}"
        if fingerprint is not None:
            where += f" AND model_fingerprint = {_q(fingerprint)}"
        rows = self._video_rows(where)
        if not rows:
            raise VideoNotFound(video_id, fingerprint)
        epoch = datetime.min.replace(tzinfo=UTC)
        rows.sort(key=lambda r: (r["status"] == STATUS_INDEXED, r["indexed_at"] or epoch))
        return VideoRecord.from_row(rows[-1])

    def _ids(self, fingerprint: str, status: str) -> set[str]:
        where = f"model_fingerprint = {_q(fingerprint)} AND status = {_q(status)}"
        return {r["video_id"] for rows in _scan(self._ds("videos"), ["video_id"], filter=where) for r in rows}

    def indexed_ids(self, fingerprint: str) -> set[str]:
        """video_ids with an indexed memory for `fingerprint`."""
        return self._ids(fingerprint, STATUS_INDEXED)

    def failed_ids(self, fingerprint: str) -> set[str]:
        """video_ids whose indexing with `fingerprint` failed (and was not since indexed)."""
        return self._ids(fingerprint, STATUS_FAILED)

    def _commit_video(self, row: dict, *, only_if_failed: bool = False) -> None:
        tbl = self._table("videos")
        data = _table_from_rows([row], VIDEOS_SCHEMA)

        def go():
            b = tbl.merge_insert("key")
            b = b.when_matched_update_all(where=f"target.status = {_q(STATUS_FAILED)}" if only_if_failed else None)
            return b.when_not_matched_insert_all().execute(data)

        _retry(go, f"commit video {row['video_id']}")

    def put(
        self,
        record: VideoRecord,
        memory: VSTMemory,
        window_embeddings: np.ndarray | None = None,
        *,
        kv_codec: str | None = None,
    ) -> VideoRecord:
        """Store `memory` as the memory of `record.video_id` under `record.model_fingerprint`.

        Atomic (readers see the previous state or the whole new memory), idempotent (a second put of
        the same key replaces the first), safe with concurrent writers.

        Args:
            record: the `videos` row; status, counts, dtype, codec, write_id are filled in from `memory`.
            memory: sink `(L, 2, Hkv, S, D)` and windows `(L, 2, Hkv, T_w, D)`, float32/16 or bf16.
            window_embeddings: optional float32 `(num_windows, E)` per-window CLIP embeddings.
            kv_codec: `storage.kvcodec` codec of the window rows: 'raw' (None, the default: bit-exact),
                'int8' or 'int4' (the sink row is always raw). A storage property: the fingerprint
                is unchanged; `recode` changes it later.

        Returns:
            The committed record (`kv_bytes` = bytes stored, `kv_raw_bytes` = their raw size).

        Raises:
            ValueError: memory fingerprint differs from the record's, unsupported dtype or codec,
                bad embeddings.
        """
        rec, kv = prepare_write(record, memory, window_embeddings, kv_codec)
        self._write_and_commit(rec, kv)
        return rec

    def _write_and_commit(self, rec: VideoRecord, kv: pa.Table, *, replaces: str | None = None) -> bool:
        """Steps 1-3 of the write protocol for `rec` (whose `write_id` names the rows of `kv`).

        With `replaces` (a write_id), the commit happens only if the committed row still names that
        write (a conditional `merge_insert`: no other put or recode came in between, and the video
        was not removed); otherwise the new rows are deleted again and False is returned.
        """
        vst = self._table("vst_kv")
        _retry(lambda: vst.add(kv), f"write K/V of {rec.video_id}")  # 1. invisible rows
        if replaces is None:
            prev = self._committed_write_id(rec.key)
            self._commit_video(rec.to_row())  # 2. the commit point
        else:
            prev = replaces
            tbl = self._table("videos")
            data = _table_from_rows([rec.to_row()], VIDEOS_SCHEMA)
            cond = f"target.write_id = {_q(replaces)} AND target.status = {_q(STATUS_INDEXED)}"
            res = _retry(lambda: tbl.merge_insert("key").when_matched_update_all(where=cond).execute(data),
                         f"commit video {rec.video_id}")  # 2. the commit point (or nothing)
            if getattr(res, "num_updated_rows", 1) != 1:
                try:
                    _retry(lambda: vst.delete(f"key = {_q(rec.key)} AND write_id = {_q(rec.write_id)}"),
                           "delete an uncommitted write")
                except (OSError, RuntimeError, ValueError):  # garbage stays for `compact`
                    pass
                return False
        if prev is not None and prev != rec.write_id:  # 3. a replaced write is never committed again
            try:
                _retry(
                    lambda: vst.delete(f"key = {_q(rec.key)} AND write_id = {_q(prev)}"),
                    "delete replaced write",
                )
            except (OSError, RuntimeError, ValueError):  # garbage stays for `compact`
                pass
        return True

    def recode(self, video_id: str, fingerprint: str, kv_codec: str, *, force: bool = False) -> dict[str, Any]:
        """Rewrite the stored memory of `video_id` (for `fingerprint`) with codec `kv_codec`.

        The same write protocol as `put`: the new rows are added under a fresh write_id, the
        `videos` row is switched to them in one commit, and only then are the old rows deleted; a
        reader (or a process killed at any point) sees the old memory or the new one, never a mix.
        The commit is conditional on the video still naming the write that was read: a put or
        recode by another process in between wins, and this one is dropped ('conflict').
        Everything but the codec and the byte counts is kept (plan, times, embeddings, meta,
        indexed_at). From a quantized codec the dequantized values are re-encoded: quantization
        error is not undone (recoding to `raw` stores the dequantized values bit-exactly).

        Returns:
            {"video_id", "model_fingerprint", "status": 'recoded' | 'unchanged' | 'conflict',
             "from", "to", "kv_bytes_before", "kv_bytes", "kv_raw_bytes"}.

        Raises:
            VideoNotFound, FingerprintMismatch: as `load_memory`.
            CorruptBlob: a stored blob fails its checks (nothing is written).
            ValueError: unknown codec.
        """
        kvc = kvcodec.get_codec(kv_codec)
        rec, ds, rows = self._committed(video_id, fingerprint, cached=False)
        out = {"video_id": video_id, "model_fingerprint": fingerprint, "from": rec.codec_name, "to": kvc.name,
               "kv_bytes_before": rec.kv_bytes, "kv_bytes": rec.kv_bytes, "kv_raw_bytes": rec.raw_bytes}
        if rec.codec_name == kvc.name and not force:
            return {**out, "status": "unchanged"}
        for r in rows:
            codec.check_row(r)
        blobs = self._read_blobs(ds, rows)
        meta = json.loads(rec.memory_meta) if rec.memory_meta else {}
        memory = codec.memory_from_rows(rows, blobs, fingerprint=fingerprint, meta=meta)
        wins = [r for r in rows if r["window"] != SINK_WINDOW]
        embs = [r["clip_embedding"] for r in wins]
        emb = np.asarray(embs, dtype=np.float32) if wins and all(e is not None for e in embs) else None
        write_id = uuid.uuid4().hex
        kv = codec.memory_to_arrow(memory, video_id=rec.video_id, fingerprint=rec.model_fingerprint,
                                   write_id=write_id, window_embeddings=emb, written_at=datetime.now(UTC),
                                   kv_codec=kvc)
        new = dataclasses.replace(rec, write_id=write_id, kv_codec=kvc.name,
                                  kv_bytes=sum(kv.column("nbytes").to_pylist()),
                                  kv_raw_bytes=memory.nbytes)
        if not self._write_and_commit(new, kv, replaces=rec.write_id):
            return {**out, "status": "conflict"}
        return {**out, "status": "recoded", "kv_bytes": new.kv_bytes, "kv_raw_bytes": new.kv_raw_bytes}

    def put_failed(self, record: VideoRecord, *, replace_indexed: bool = False) -> bool:
        """Record that indexing `record.video_id` failed (status 'failed', error_kind, error).

        An existing indexed memory for the same key is kept unless `replace_indexed`.

        Returns:
            True if the failed row was written.
        """
        rec = dataclasses.replace(
            record,
            status=STATUS_FAILED,
            write_id=None,
            num_windows=None,
            num_vst_tokens=None,
            kv_bytes=None,
            indexed_at=record.indexed_at or datetime.now(UTC),
        )
        prev = self._committed_write_id(rec.key)
        if prev is not None and not replace_indexed:
            return False
        self._commit_video(rec.to_row(), only_if_failed=not replace_indexed)
        if replace_indexed and prev is not None:
            _retry(
                lambda: self._table("vst_kv").delete(f"key = {_q(rec.key)} AND write_id = {_q(prev)}"),
                "delete replaced write",
            )
        return True

    def _committed_write_id(self, key: str) -> str | None:
        rows = self._video_rows(f"key = {_q(key)}", columns=["write_id", "status"])
        for r in rows:
            if r["status"] == STATUS_INDEXED and r["write_id"]:
                return r["write_id"]
        return None

    def _rows_of_video(self, video_id: str, *, cached: bool = True) -> list[dict]:
        """`videos` rows of `video_id` (all fingerprints) at the latest version; cached per version."""
        ds = self._ds("videos")
        hit = self._video_cache.get(video_id) if cached else None
        if hit is not None and hit[0] == ds.version:
            return hit[1]
        rows = ds.to_table(filter=f"video_id = {_q(video_id)}").to_pylist()
        if len(self._video_cache) >= _CACHE_ENTRIES:
            self._video_cache.clear()
        self._video_cache[video_id] = (ds.version, rows)
        return rows

    def _resolve(self, video_id: str, fingerprint: str, *, cached: bool = True) -> VideoRecord:
        rows = self._rows_of_video(video_id, cached=cached)
        if not rows:
            raise VideoNotFound(video_id, fingerprint)
        match = [r for r in rows if r["model_fingerprint"] == fingerprint]
        if not match:
            raise FingerprintMismatch(
                video_id,
                fingerprint,
                [r["model_fingerprint"] for r in rows],
                [r["model_name"] for r in rows],
            )
        rec = VideoRecord.from_row(match[0])
        if rec.status != STATUS_INDEXED or not rec.write_id:
            raise VideoNotFound(
                video_id, fingerprint, f"indexing failed: {rec.error_kind or 'error'}: {rec.error or ''}"
            )
        return rec

    def _kv_meta(self, rec: VideoRecord, ds, *, cached: bool = True) -> list[dict]:
        """Metadata rows (with `_rowaddr`, and `_blob` locations when local) of the committed write
        of `rec` in snapshot `ds`, in window order.

        The rows of one write never change (a write_id is used once; rows are only ever deleted),
        so they are cached per (key, write_id) and reused while every row's fragment is still in
        `ds`. Compaction rewrites fragments under new ids (ids are never reused), which makes the
        cached row addresses stale and sends this back to a scan.
        """
        ck = (rec.key, rec.write_id)
        hit = self._kv_cache.get(ck) if cached else None
        if hit is not None:
            frags = ds.fragment_ids()
            if all((int(r["_rowaddr"]) >> 32) in frags for r in hit):
                return hit
        blob_v2 = getattr(ds.schema.field("kv").type, "extension_name", None) == "lance.blob.v2"
        columns = VST_KV_META_COLUMNS + (["kv"] if blob_v2 else [])  # v2: a scan gives descriptors
        tab = ds.to_table(
            columns=columns,
            filter=f"key = {_q(rec.key)} AND write_id = {_q(rec.write_id)}",
            with_row_address=True,
        )
        rows = tab.to_pylist()
        rows.sort(key=lambda r: r["window"])
        for r in rows:
            loc = (blobread.blob_location(ds, r, self._local_root, self._frag_files)
                   if (cached and self._local_root) else None)
            r.pop("kv", None)
            if loc is not None:
                r["_blob"] = loc
        if cached and len(rows) == (rec.num_windows or 0) + 1:
            if len(self._kv_cache) >= _CACHE_ENTRIES:
                self._kv_cache.clear()
            self._kv_cache[ck] = rows
        return rows

    def _committed(
        self, video_id: str, fingerprint: str, *, cached: bool = True
    ) -> tuple[VideoRecord, Any, list[dict]]:
        """Committed record, a `vst_kv` snapshot and its K/V rows; retried if a concurrent put
        replaced the record meanwhile. `cached=False` bypasses every read cache."""
        for _ in range(5):
            rec = self._resolve(video_id, fingerprint, cached=cached)
            ds = self._ds("vst_kv")
            rows = self._kv_meta(rec, ds, cached=cached)
            if len(rows) == (rec.num_windows or 0) + 1:
                return rec, ds, rows
            again = self._resolve(video_id, fingerprint, cached=False)
            if again.write_id == rec.write_id:
                break
        have = {r["window"] for r in rows}
        want = {SINK_WINDOW, *range(rec.num_windows or 0)}
        missing = sorted(want - have)
        raise CorruptBlob(
            video_id,
            missing[0] if missing else SINK_WINDOW,
            f"{len(rows)} K/V rows for write {rec.write_id}, expected {(rec.num_windows or 0) + 1}",
            fingerprint,
        )

    def load_memory(
        self,
        video_id: str,
        fingerprint: str,
        windows: Sequence[int] | tuple[float, float] | None = None,
        *,
        device: Any = None,
    ) -> VSTMemory:
        """Read the memory of `video_id` made by the model with `fingerprint`, verifying checksums.

        Args:
            windows: None for all windows; a list (or other non-tuple iterable) of window indices;
                or a `(start_s, end_s)` tuple: the windows overlapping that range of seconds.
                Only the blobs of the selected windows (plus the sink) are read.
            device: where the tensors go (default CPU). Quantized rows are copied there as codes
                and dequantized there (on the GPU when the answering model is there).

        Returns:
            `VSTMemory` on `device`, in the memory's dtype (the model's): sink `(L, 2, Hkv, S, D)`,
            selected windows in index order, their `WindowSpan`s, `fingerprint`, and the stored
            `meta` plus `meta["kv_codec"]`, the codec the K/V were stored with ('raw', 'int8', 'int4').

        Raises:
            VideoNotFound: no such video, or its indexing failed.
            FingerprintMismatch: the video is only stored for other model fingerprints.
            CorruptBlob: a blob fails its checksum or size check, or rows are missing.
            KeyError: a requested window index the memory does not have.
            ValueError: a time range on a memory without timestamps.
        """
        try:
            return self._load(video_id, fingerprint, windows, cached=True, device=device)
        except (CorruptBlob, OSError, RuntimeError) as exc:
            # A cached row address gone stale, a sidecar removed by `compact`, or real corruption:
            # read again with fresh scans and through Lance only; a real fault raises from here.
            blobread.note_fallback(video_id, fingerprint, exc)
            self._video_cache.pop(video_id, None)
            for k in [k for k in list(self._kv_cache) if k[0] == f"{video_id}/{fingerprint}"]:
                self._kv_cache.pop(k, None)
            return self._load(video_id, fingerprint, windows, cached=False, device=device)

    def _load(
        self, video_id: str, fingerprint: str, windows: Sequence[int] | tuple[float, float] | None, *, cached: bool,
        device: Any = None,
    ) -> VSTMemory:
        rec, ds, rows = self._committed(video_id, fingerprint, cached=cached)
        sink = [r for r in rows if r["window"] == SINK_WINDOW]
        wins = [r for r in rows if r["window"] != SINK_WINDOW]
        if windows is None:
            chosen = wins
        elif isinstance(windows, tuple):
            start_s, end_s = (float(x) for x in windows)
            for r in wins:
                if r["start_s"] is None or r["end_s"] is None:
                    raise ValueError(f"video {video_id}: window {r['window']} has no timestamps")
            chosen = [r for r in wins if r["end_s"] >= start_s and r["start_s"] <= end_s]
        else:
            wanted = sorted({int(i) for i in windows})
            by_index = {r["window"]: r for r in wins}
            missing = [i for i in wanted if i not in by_index]
            if missing:
                raise KeyError(f"video {video_id}: windows {missing} not stored (has 0..{len(wins) - 1})")
            chosen = [by_index[i] for i in wanted]
        sel = sink + chosen
        for r in sel:  # sizes and shapes checked before any buffer is allocated from them
            codec.check_row(r)
        stored = sum(int(r["nbytes"]) for r in sink + wins)
        if rec.kv_bytes is not None and stored != int(rec.kv_bytes):  # rows and their video row must agree
            raise CorruptBlob(video_id, SINK_WINDOW, f"K/V rows sum to {stored} bytes, the videos row says "
                              f"{rec.kv_bytes}", fingerprint)
        blobs = self._read_blobs(ds, sel)
        meta = json.loads(rec.memory_meta) if rec.memory_meta else {}
        meta["kv_codec"] = rec.codec_name
        return codec.memory_from_rows(sel, blobs, fingerprint=fingerprint, meta=meta, device=device)

    @staticmethod
    def _read_blobs(ds, rows: list[dict]) -> list[Any]:
        """The `kv` bytes of `rows`, in order (`storage.blobread.read_blobs`: direct reads of local
        sidecars where a row has a `_blob` location, Lance `read_blobs` for the others)."""
        return blobread.read_blobs(ds, rows)

    def window_embeddings(self, video_id: str, fingerprint: str) -> tuple[np.ndarray | None, list[WindowSpan]]:
        """Per-window CLIP embeddings and spans, without reading any K/V blob.

        Returns:
            (float32 `(W, E)` array, or None when not stored, and the W `WindowSpan`s in index order).

        Raises:
            VideoNotFound, FingerprintMismatch: as `load_memory`.
        """
        _, _, rows = self._committed(video_id, fingerprint)
        wins = [r for r in rows if r["window"] != SINK_WINDOW]
        spans = [codec.span_from_row(r) for r in wins]
        embs = [r["clip_embedding"] for r in wins]
        if not embs or any(e is None for e in embs):
            return None, spans
        return np.asarray(embs, dtype=np.float32), spans  # (W, E)

    def rm(self, video_id: str, fingerprint: str | None = None) -> int:
        """Remove `video_id` (all fingerprints, or one) from `videos` and its K/V rows.

        Returns:
            Number of `videos` rows removed.

        Raises:
            VideoNotFound: nothing to remove.
        """
        where = f"video_id = {_q(video_id)}"
        if fingerprint is not None:
            where += f" AND model_fingerprint = {_q(fingerprint)}"
        n = len(self._video_rows(where, columns=["key"]))
        if n == 0:
            raise VideoNotFound(video_id, fingerprint)
        _retry(lambda: self._table("videos").delete(where), f"rm {video_id}")  # invisible from here
        _retry(lambda: self._table("vst_kv").delete(where), f"rm K/V of {video_id}")
        return n

    # -- maintenance: streamed scans (`_scan`), memory bounded by a record batch, not by the table
    def _live_writes(self, columns: list[str]) -> tuple[dict[str, int], dict[tuple[str, str], dict]]:
        """Streamed over `videos`: rows per key, and the indexed rows (`columns`) by (key, write_id)."""
        seen: dict[str, int] = {}
        live: dict[tuple[str, str], dict] = {}
        for rows in _scan(self._ds("videos"), sorted({"key", "status", "write_id", *columns})):
            for r in rows:
                seen[r["key"]] = seen.get(r["key"], 0) + 1
                if r["status"] == STATUS_INDEXED:
                    live[(r["key"], r["write_id"])] = {c: r[c] for c in columns}
        return seen, live

    def verify(self, *, check_blobs: bool = True) -> VerifyReport:
        """Re-check every committed blob's checksum and every video's invariants.

        Invariants per indexed video: one sink row, window rows 0..num_windows-1 (unique),
        sum of window tokens = num_vst_tokens, sum of blob bytes = kv_bytes, one dtype and
        (L, 2, Hkv, *, D) geometry, shape[3] = num_tokens, nbytes = prod(shape) * itemsize, raw
        sizes sum to kv_raw_bytes. Rows of uncommitted writes are counted as garbage, not problems.

        Streams both tables in record batches of `_SCAN_ROWS` rows (only the columns checked; no
        `plan`, no CLIP embeddings) and reads blobs `_VERIFY_BLOB_BYTES` (or `_SCAN_ROWS` blobs) at a
        time: memory is one small aggregate per indexed video plus one batch (`bench/archive_maintenance.py`,
        docs/PERFORMANCE.md: 100,000 videos x 30 windows).
        """
        rep = VerifyReport()
        seen, live = self._live_writes(["num_windows", "num_vst_tokens", "kv_bytes", "kv_codec", "kv_raw_bytes"])
        for key, n in seen.items():
            if n > 1:
                vid, fp = key.split("/", 1)
                rep.problems.append(Problem(vid, fp, None, "duplicate", f"{n} videos rows for key {key}"))
        checks = {k: _WriteCheck(k[0], v) for k, v in live.items()}
        del live
        ds = self._ds("vst_kv")
        pending: list[dict] = []
        pending_bytes = 0
        for rows in _scan(ds, _VERIFY_KV_COLUMNS, with_row_address=True):
            for m in rows:
                chk = checks.get((m["key"], m["write_id"]))
                if chk is None:
                    rep.garbage_rows += 1
                    continue
                if chk.add(m) and check_blobs:
                    pending.append(m)
                    pending_bytes += int(m["nbytes"])
                    if pending_bytes >= _VERIFY_BLOB_BYTES or len(pending) >= _SCAN_ROWS:
                        self._verify_blobs(ds, pending, rep)
                        pending, pending_bytes = [], 0
        if pending:
            self._verify_blobs(ds, pending, rep)
        for chk in checks.values():
            rep.videos_checked += 1
            rep.problems.extend(chk.problems())
        return rep

    @staticmethod
    def _verify_blobs(ds, rows: list[dict], rep: VerifyReport) -> None:
        """Read `rows`' blobs through Lance in one call and check each against its row (size, xxh3,
        quantized header); a failed bulk read is retried row by row to name the bad one."""
        try:
            blobs = blobread.read_blobs(ds, rows)
        except (OSError, RuntimeError, ValueError):
            blobs = None
        for i, row in enumerate(rows):
            try:
                blob = blobs[i] if blobs is not None else blobread.read_blobs(ds, [row])[0]
                codec.check_blob(row, blob)
                rep.blobs_checked += 1
                rep.bytes_checked += int(row["nbytes"])
            except CorruptBlob as exc:
                msg = str(exc)
                kind = "checksum" if "checksum" in msg else "missing" if "missing" in msg else "codec"
                rep.problems.append(Problem(row["video_id"], row["model_fingerprint"], row["window"], kind, msg))
            except (OSError, RuntimeError, ValueError) as exc:
                rep.problems.append(Problem(row["video_id"], row["model_fingerprint"], row["window"], "missing",
                                            f"cannot read blob: {exc}"))

    def _disk_bytes(self) -> dict[str, int] | None:
        if "://" in self.uri and not self.uri.startswith("file://"):
            return None
        root = self.uri.removeprefix("file://")
        out = {}
        for name in SCHEMAS:
            total = 0
            for dirpath, _, files in os.walk(os.path.join(root, f"{name}.lance")):
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(dirpath, f))
                    except OSError:
                        pass
            out[name] = total
        return out

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: videos (indexed/failed), windows, tokens, K/V bytes stored and raw (in
        total and per codec: `kv_codecs[name]` = {videos, kv_bytes, kv_raw_bytes, ratio_to_raw}),
        disk bytes. Streams both tables (memory: the set of committed writes plus one batch)."""
        counts = {"videos": 0, "indexed": 0, "failed": 0, "windows": 0, "vst_tokens": 0, "kv_bytes": 0}
        fingerprints: set[str] = set()
        live: set[tuple[str, str]] = set()
        per_codec: dict[str, dict[str, Any]] = {}
        cols = ["key", "status", "write_id", "num_windows", "num_vst_tokens", "kv_bytes", "kv_codec", "kv_raw_bytes"]
        for rows in _scan(self._ds("videos"), cols):
            for r in rows:
                counts["videos"] += 1
                fingerprints.add(r["key"].split("/", 1)[1])
                if r["status"] == STATUS_FAILED:
                    counts["failed"] += 1
                if r["status"] != STATUS_INDEXED:
                    continue
                live.add((r["key"], r["write_id"]))
                counts["indexed"] += 1
                counts["windows"] += r["num_windows"] or 0
                counts["vst_tokens"] += r["num_vst_tokens"] or 0
                counts["kv_bytes"] += r["kv_bytes"] or 0
                c = per_codec.setdefault(r["kv_codec"] or "raw", {"videos": 0, "kv_bytes": 0, "kv_raw_bytes": 0})
                c["videos"] += 1
                c["kv_bytes"] += r["kv_bytes"] or 0
                c["kv_raw_bytes"] += r["kv_raw_bytes"] if r["kv_raw_bytes"] is not None else (r["kv_bytes"] or 0)
        kv_rows = garbage = 0
        for rows in _scan(self._ds("vst_kv"), ["key", "write_id"]):
            kv_rows += len(rows)
            garbage += sum(1 for r in rows if (r["key"], r["write_id"]) not in live)
        for c in per_codec.values():
            c["ratio_to_raw"] = c["kv_bytes"] / c["kv_raw_bytes"] if c["kv_raw_bytes"] else None
        kv_bytes = counts["kv_bytes"]
        kv_raw = sum(c["kv_raw_bytes"] for c in per_codec.values())
        disk = self._disk_bytes()
        return {
            "uri": self.uri,
            "format_version": FORMAT_VERSION,
            **{k: counts[k] for k in ("videos", "indexed", "failed")},
            "fingerprints": len(fingerprints),
            **{k: counts[k] for k in ("windows", "vst_tokens", "kv_bytes")},
            "kv_raw_bytes": kv_raw,
            "kv_over_raw": kv_bytes / kv_raw if kv_raw else None,
            "kv_codecs": dict(sorted(per_codec.items())),
            "vst_kv_rows": kv_rows,
            "garbage_rows": garbage,
            "answers": self._table("answers").count_rows(),
            "vico_samples": self._table("vico_samples").count_rows(),
            "table_versions": {n: self._table(n).version for n in SCHEMAS},
            "disk_bytes": disk,
            "disk_over_kv": (sum(disk.values()) / kv_bytes) if disk and kv_bytes else None,
        }

    def compact(
        self,
        *,
        older_than: timedelta = timedelta(minutes=10),
        garbage_grace: timedelta = timedelta(minutes=10),
    ) -> dict[str, Any]:
        """Delete garbage K/V rows, compact files, and remove old table versions.

        Streams the two tables to find garbage; compacts each table with Lance (`compact_files`,
        one thread, `_COMPACT_ROWS` rows per fragment, so memory does not follow the table), then
        removes versions older than `older_than` (`cleanup_old_versions`).

        Args:
            older_than: table versions (and their files) older than this are removed; readers that
                started on such a version may fail, so keep it above your longest read.
            garbage_grace: uncommitted K/V rows younger than this are kept (a put may be in flight).

        Returns:
            {"garbage_rows_deleted": int, "tables": {name: "compaction metrics; cleanup stats"},
            "disk_bytes": ...}
        """
        _, live = self._live_writes([])
        cutoff = datetime.now(UTC) - garbage_grace
        dead: dict[tuple[str, str], int] = {}
        for rows in _scan(self._ds("vst_kv"), ["key", "write_id", "written_at"]):
            for r in rows:
                k = (r["key"], r["write_id"])
                if k not in live and r["written_at"] <= cutoff:
                    dead[k] = dead.get(k, 0) + 1
        vst = self._table("vst_kv")
        for key, wid in dead:
            _retry(lambda key=key, wid=wid: vst.delete(f"key = {_q(key)} AND write_id = {_q(wid)}"), "gc")
        tables = {}
        for name in SCHEMAS:
            tbl = self._table(name)
            res = _retry(lambda tbl=tbl: tbl.to_lance().optimize.compact_files(
                target_rows_per_fragment=_COMPACT_ROWS, num_threads=1, batch_size=1024), f"compact {name}")
            gone = _retry(lambda tbl=tbl: tbl.to_lance().cleanup_old_versions(older_than=older_than),
                          f"clean up {name}")
            tables[name] = f"{res}; {gone}"
        return {"garbage_rows_deleted": sum(dead.values()), "tables": tables, "disk_bytes": self._disk_bytes()}

    # -- answers and vico samples ---------------------------------------------------------------
    def _upsert(self, name: str, key: str, rows: Iterable[dict], schema: pa.Schema) -> int:
        now = datetime.now(UTC)
        rows = [dict(r) for r in rows]
        for r in rows:
            r.setdefault("created_at", now)
            if r.get("created_at") is None:
                r["created_at"] = now
        rows = _dedupe(rows, key)
        if not rows:
            return 0
        data = _table_from_rows(rows, schema)
        tbl = self._table(name)
        _retry(
            lambda: tbl.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(data),
            f"write {name}",
        )
        return len(rows)

    def put_answers(self, rows: Iterable[dict]) -> int:
        """Upsert `answers` rows (dicts with the columns of `ANSWERS_SCHEMA`; `key` from `answer_key`).

        JSON columns (choices, scores, windows_used, settings) are given as JSON strings; a missing
        `created_at` is set to now. Idempotent on `key`. Returns the number of rows written.
        """
        rows = list(rows)
        for r in rows:
            for c in ("choices", "scores", "windows_used", "settings"):
                if r.get(c) is not None and not isinstance(r[c], str):
                    r[c] = json.dumps(r[c])
        return self._upsert("answers", "key", rows, ANSWERS_SCHEMA)

    def put_eval_run(self, row: dict) -> None:
        """Upsert one `eval_runs` row (`EVAL_RUNS_SCHEMA`; `summary_json` a JSON string; a missing
        `created_at` is set to now). Idempotent on `run_id`."""
        row = dict(row)
        row.setdefault("created_at", datetime.now(UTC))
        self._upsert("eval_runs", "run_id", [row], EVAL_RUNS_SCHEMA)

    def list_eval_runs(self, where: str | None = None) -> list[dict]:
        """Every `eval_runs` row (matching the SQL filter `where`), oldest first."""
        self._table("eval_runs")
        rows = self._ds("eval_runs").to_table(filter=where).to_pylist()
        return sorted(rows, key=lambda r: r["created_at"])

    def answer_keys(self) -> set[str]:
        """Keys of every stored answer."""
        return {r["key"] for rows in _scan(self._ds("answers"), ["key"]) for r in rows}

    def list_answers(self, where: str | None = None) -> list[dict]:
        """`answers` rows matching the SQL filter `where`."""
        return self._ds("answers").to_table(filter=where).to_pylist()

    def put_vico_samples(self, rows: Iterable[dict]) -> int:
        """Upsert `vico_samples` rows (sample_id, video_id, split, form, sample_json); idempotent on sample_id."""
        rows = list(rows)
        for r in rows:
            if not isinstance(r.get("sample_json"), str):
                r["sample_json"] = json.dumps(r["sample_json"])
        return self._upsert("vico_samples", "sample_id", rows, VICO_SAMPLES_SCHEMA)

    def vico_sample_ids(self) -> set[str]:
        return {r["sample_id"] for rows in _scan(self._ds("vico_samples"), ["sample_id"]) for r in rows}

    def list_vico_samples(self, where: str | None = None) -> list[dict]:
        return self._ds("vico_samples").to_table(filter=where).to_pylist()

    # -- numerics probes (model.probe) -----------------------------------------------------------
    def reference_probe(self, fingerprint: str):
        """The probe that memories of `fingerprint` in this archive are compared against (the newest
        row with status 'reference'), as a `model.probe.NumericsProbe`; None when none is recorded."""
        from model.probe import NumericsProbe

        rows = self._ds("probes").to_table(
            filter=f"model_fingerprint = {_q(fingerprint)} AND status = 'reference'").to_pylist()
        if not rows:
            return None
        r = max(rows, key=lambda r: r["created_at"])
        return NumericsProbe(
            fingerprint=r["model_fingerprint"],
            memory=np.frombuffer(r["memory"], dtype="<f4").reshape(r["memory_shape"]),
            logits=np.frombuffer(r["logits"], dtype="<f4"),
            token_ids=list(r["token_ids"]), dtype=r["dtype"], environment=json.loads(r["environment"]),
            probe_version=int(r["probe_version"]),
        )

    def put_probe(self, probe, *, accepted_change: dict | None = None, status: str = "reference") -> None:
        """Record `probe` (a `model.probe.NumericsProbe`) as the reference for its fingerprint.

        Without `accepted_change`, only when no reference exists yet (the first index; a concurrent
        first writer may win, and `reference_probe` then returns its probe). With it (the user
        accepted a numerics change, `--accept-numerics-change`), earlier references become
        'superseded' and `accepted_change` (JSON: the comparison, both environments, when) is kept
        on the new row. `status="accepted"` (an answering process accepted a change) only records
        the row: the reference stays (only indexing processes, which encode, replace it).
        """
        fp = probe.fingerprint
        if accepted_change is None and self.reference_probe(fp) is not None:
            return
        now = datetime.now(UTC)
        key = f"{fp}/{probe.digest()}" + (f"/{now.isoformat()}" if accepted_change else "")  # history kept
        row = {
            "key": key, "model_fingerprint": fp, "status": status,
            "probe_version": int(probe.probe_version), "dtype": probe.dtype,
            "environment": json.dumps(probe.environment, sort_keys=True), "token_ids": list(probe.token_ids),
            "memory_shape": list(probe.memory.shape),
            "memory": np.ascontiguousarray(probe.memory, dtype="<f4").tobytes(),
            "logits": np.ascontiguousarray(probe.logits, dtype="<f4").tobytes(),
            "accepted_change": json.dumps(accepted_change, sort_keys=True, default=str) if accepted_change else None,
            "created_at": now,
        }
        tbl = self._table("probes")
        if accepted_change is not None and status == "reference":
            _retry(lambda: tbl.update(where=f"model_fingerprint = {_q(fp)} AND status = 'reference'",
                                      values={"status": "superseded"}), "supersede probes")
        data = _table_from_rows([row], PROBES_SCHEMA)
        _retry(lambda: tbl.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data),
               "write probe")

    def list_probes(self, fingerprint: str | None = None) -> list[dict]:
        """Probe rows without their arrays (key, fingerprint, status, dtype, environment and
        accepted_change as dicts, created_at), oldest first."""
        cols = [f.name for f in PROBES_SCHEMA if f.name not in ("memory", "logits")]
        where = f"model_fingerprint = {_q(fingerprint)}" if fingerprint else None
        rows = self._ds("probes").to_table(columns=cols, filter=where).to_pylist()
        for r in rows:
            r["environment"] = json.loads(r["environment"])
            r["accepted_change"] = json.loads(r["accepted_change"]) if r["accepted_change"] else None
        return sorted(rows, key=lambda r: r["created_at"])


def open_archive(uri: str | os.PathLike, storage_options: dict[str, str] | None = None, *,
                 create: bool = True) -> Archive:
    """Open the archive at `uri`, creating it if needed unless `create` is False.

    Args:
        uri: a local folder (created if missing) or an object-store URI (`s3://bucket/prefix`,
            `gs://`, `az://`) understood by LanceDB.
        storage_options: LanceDB/object_store options, e.g. for S3-compatible servers
            `{"aws_endpoint": "http://127.0.0.1:9000", "aws_access_key_id": ..., "aws_secret_access_key": ...,
            "aws_region": "us-east-1", "allow_http": "true"}`. Environment variables
            (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, ...) work too.

        create: False for read-only use (`vxl archive ls/show/verify/stats`, `vxl ask`): a missing
            archive is an error instead of a new empty archive at a mistyped path (issue 15).

    Raises:
        ArchiveNotFound: `create` is False and there is no archive at `uri`.
        ArchiveError: `uri` is a file, or a table was written by another archive format version.
    """
    uri = os.fspath(uri)
    local = "://" not in uri or uri.startswith("file://")
    path = uri.removeprefix("file://")
    if local and os.path.exists(path) and not os.path.isdir(path):
        raise ArchiveError(f"{uri} is a file, not an archive folder: give the archive's folder (or a new path)")
    if not create and local and not os.path.isdir(path):
        raise ArchiveNotFound(uri)
    if "://" not in uri:
        os.makedirs(uri, exist_ok=True)
    return Archive(uri, storage_options, create=create)

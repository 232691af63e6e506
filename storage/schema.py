"""Arrow schemas of the archive tables (format version 3). pyarrow only.

Format history: 1 -> 2 added `videos.library_versions` and the `probes` table (numerics canary);
2 -> 3 added K/V codecs (`storage.kvcodec`): `vst_kv.kv_codec`, `videos.kv_codec`,
`videos.kv_raw_bytes`, `answers.kv_codec` (null on older rows = `raw`), and `kv_bytes`/`nbytes`
count the bytes as stored (encoded); and benchmark evaluation (`tasks.evaluate`): `answers.question_id`,
`answers.correct` and the `eval_runs` table. An older archive is upgraded in place when opened
(`storage.archive.Archive`: nullable columns and a new table, metadata-only commits); its blobs are
raw and read unchanged.

The format version and a layout description are written into each table's schema metadata
(`vxl.format_version`, `vxl.table`, `vxl.layout`), so a reader with plain pyarrow can tell what
it holds. `docs/ARCHIVE_FORMAT.md` is the human description of the same layout.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = "3"
#: versions this code opens (older ones are upgraded in place).
READABLE_VERSIONS = ("1", "2", "3")

#: Field metadata that makes Lance store a `large_binary` column as blobs (read with take_blobs).
BLOB_META = {"lance-encoding:blob": "true"}
#: Field metadata naming the (unenforced) primary key used by `merge_insert`.
PK_META = {"lance-schema:unenforced-primary-key": "true"}

#: `vst_kv.window` of the sink row (the prompt prefix before `<image>`).
SINK_WINDOW = -1

CHECKSUM_ALGO = "xxh3_128"

LAYOUT = {
    "videos": (
        "one row per (video_id, model_fingerprint), key = video_id + '/' + model_fingerprint; "
        "status 'indexed' rows name the write_id whose vst_kv rows form the memory"
    ),
    "vst_kv": (
        "one row per (video_id, model_fingerprint, write_id, window); window -1 = sink (kind 'sink'), "
        "0.. = VST windows (kind 'window'); the row's tensor has shape [layers, 2, kv_heads, tokens, "
        "head_dim] (dim 1: 0 = pre-RoPE keys, 1 = values), dtype in {float32, float16, bfloat16}; "
        "kv_codec 'raw' (or null) = kv holds its raw little-endian bytes, C order; 'int8'/'int4' = kv is a "
        "VXKV blob (64-byte header, float16 group minima and scales, 8/4-bit codes; storage/kvcodec.py); "
        "nbytes = len(kv); checksum = 'xxh3_128:' + hex digest of kv (the bytes as stored); "
        "only rows whose write_id equals videos.write_id of the committed videos row are live"
    ),
    "answers": "one row per answer key (digest of video, fingerprint, question, choices, settings)",
    "vico_samples": "one row per VideoChat-style synthetic sample, key sample_id",
    "eval_runs": (
        "one row per benchmark evaluation run (vxl eval), key run_id = digest of the question file, model "
        "fingerprint and settings; summary_json = accuracy overall, per type and per duration bucket with "
        "95% Wilson intervals and the per-question results; answers rows carry question_id and correct"
    ),
    "probes": (
        "numerics canary: one row per (model_fingerprint, probe digest); status 'reference' (the newest "
        "is compared against) or 'superseded'; memory/logits = float32 little-endian bytes of the probe "
        "memory [layers, 2, kv_heads, tokens, head_dim] and next-token logits [vocab] (model.probe)"
    ),
    "leases": (
        "one row per (video_id, model_fingerprint) being encoded, key = video_id + '/' + model_fingerprint; "
        "owner = the run holding it; a lease whose expires_at has passed is free (a killed run's lease "
        "expires); rows are deleted when the video is written or fails"
    ),
}


def _meta(table: str) -> dict[str, str]:
    return {
        "vxl.format_version": FORMAT_VERSION,
        "vxl.table": table,
        "vxl.layout": LAYOUT[table],
    }


VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False, metadata=PK_META),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("model_name", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("native_fps", pa.float64()),
        pa.field("frame_count", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("sampled_frames", pa.list_(pa.int64())),
        pa.field("sampled_times", pa.list_(pa.float64())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("plan", pa.string()),
        pa.field("num_windows", pa.int32()),
        pa.field("num_vst_tokens", pa.int64()),
        pa.field("kv_bytes", pa.int64()),
        pa.field("dtype", pa.string()),
        pa.field("memory_meta", pa.string()),
        pa.field("decode_s", pa.float64()),
        pa.field("plan_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
        pa.field("indexer_version", pa.string()),
        pa.field("write_id", pa.string()),
        pa.field("library_versions", pa.string()),
        pa.field("kv_codec", pa.string()),
        pa.field("kv_raw_bytes", pa.int64()),
    ],
    metadata=_meta("videos"),
)

VST_KV_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("write_id", pa.string(), nullable=False),
        pa.field("window", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("frame_start", pa.int32()),
        pa.field("frame_end", pa.int32()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("ratio", pa.int32()),
        pa.field("carry_in", pa.int32()),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
        pa.field("checksum", pa.string(), nullable=False),
        pa.field("clip_embedding", pa.list_(pa.float32())),
        pa.field("written_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kv", pa.large_binary(), nullable=False, metadata=BLOB_META),
        pa.field("kv_codec", pa.string()),
    ],
    metadata=_meta("vst_kv"),
)

#: vst_kv columns without the blob: what scans read.
VST_KV_META_COLUMNS = [f.name for f in VST_KV_SCHEMA if f.name != "kv"]

ANSWERS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False, metadata=PK_META),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("choices", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("chosen", pa.int32()),
        pa.field("scores", pa.string()),
        pa.field("windows_used", pa.string()),
        pa.field("settings", pa.string()),
        pa.field("ttft_s", pa.float64()),
        pa.field("total_s", pa.float64()),
        pa.field("num_tokens", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("kv_codec", pa.string()),
        pa.field("question_id", pa.string()),
        pa.field("correct", pa.bool_()),
    ],
    metadata=_meta("answers"),
)

VICO_SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False, metadata=PK_META),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("form", pa.string()),
        pa.field("sample_json", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ],
    metadata=_meta("vico_samples"),
)

PROBES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False, metadata=PK_META),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("probe_version", pa.int32(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("environment", pa.string(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("memory_shape", pa.list_(pa.int64()), nullable=False),
        pa.field("memory", pa.large_binary(), nullable=False),
        pa.field("logits", pa.large_binary(), nullable=False),
        pa.field("accepted_change", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_meta("probes"),
)

EVAL_RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False, metadata=PK_META),
        pa.field("name", pa.string()),
        pa.field("questions_file", pa.string(), nullable=False),
        pa.field("layout", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("model_fingerprint", pa.string()),
        pa.field("settings", pa.string()),
        pa.field("accuracy", pa.float64()),
        pa.field("correct", pa.int64()),
        pa.field("num_questions", pa.int64()),
        pa.field("summary_json", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_meta("eval_runs"),
)

LEASES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False, metadata=PK_META),  # video_id/model_fingerprint
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("model_fingerprint", pa.string(), nullable=False),
        pa.field("owner", pa.string(), nullable=False),  # the run holding it: host, pid, run id
        pa.field("acquired_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("expires_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_meta("leases"),
)

#: Columns added by a format version, with the version that added them: an older table gets them
#: (all null) when the archive is opened.
ADDED_COLUMNS: dict[str, list[tuple[str, pa.Field]]] = {
    "videos": [("2", VIDEOS_SCHEMA.field("library_versions")), ("3", VIDEOS_SCHEMA.field("kv_codec")),
               ("3", VIDEOS_SCHEMA.field("kv_raw_bytes"))],
    "vst_kv": [("3", VST_KV_SCHEMA.field("kv_codec"))],
    "answers": [("3", ANSWERS_SCHEMA.field("kv_codec")), ("3", ANSWERS_SCHEMA.field("question_id")),
                ("3", ANSWERS_SCHEMA.field("correct"))],
}

SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS_SCHEMA,
    "vst_kv": VST_KV_SCHEMA,
    "answers": ANSWERS_SCHEMA,
    "vico_samples": VICO_SAMPLES_SCHEMA,
    "eval_runs": EVAL_RUNS_SCHEMA,
    "probes": PROBES_SCHEMA,
    "leases": LEASES_SCHEMA,
}

#!/usr/bin/env python3
"""Start bqemulator 1.4.0 (PyPI) with a few BigQuery-parity fixes.

Fixes, all applied by monkeypatching before the server starts:
  1. DuckDB extensions (spatial, avro) load offline from the
     duckdb-extension-* wheels (no HOME trick, no network), on the
     engine's connection and on the one GEOGRAPHY values are converted on
     (stock downloaded spatial there: insertAll of a GEOGRAPHY failed, 500).
  2. Extract jobs (jobs.insert with configuration.extract) go through
     bqemulator's own EXPORT DATA writer ``write_export``: every
     destinationUri, one '*' -> 12-digit shard names, compression,
     printHeader, fieldDelimiter, statistics.extract.destinationUriFileCounts.
     Missing table -> DONE job with status.errorResult.reason = notFound.
     JSON writes INT64 as strings, as BigQuery documents ("to preserve
     64-bit precision"), and NUMERIC too, nested ones included (stock wrote
     numbers: a NUMERIC of 38 digits came out as -1e29). Whether BigQuery
     writes NUMERIC as a string or an exact number stays unverified.
     GEOGRAPHY columns are written as WKT text in every format, INTERVAL
     ones as text in Avro and Parquet (stock: Avro and Parquet extracts of
     either failed; how BigQuery writes INTERVAL there stays unverified).
  3. Every file ``write_export`` writes (extract jobs AND the EXPORT DATA
     statement) is uploaded to a fake-gcs-server at $STORAGE_EMULATOR_HOST
     (JSON media upload) before the job reports DONE, then deleted locally.
  4. tables.list pages (maxResults/pageToken/nextPageToken) and answers 404
     for a missing dataset; tables.insert answers 404 for a missing dataset
     (stock: 500). datasets.get already answers 404 in stock 1.4.0.
  5. tables.get reports live numRows (stock misses DML), a numBytes
     estimate (stock: always "0"), and a lastModifiedTime that moves with
     every change of the rows fix 10 sees (stock: metadata changes only).
  6. jobs.insert with a jobId that already exists answers HTTP 409, reason
     "duplicate" (stock silently re-runs the job and overwrites it; callers
     that retry jobs.insert with a deterministic id rely on the 409).
  7. `region-LOC.INFORMATION_SCHEMA.TABLE_STORAGE` (optionally project-
     qualified) answers like BigQuery's: one row per table and materialized
     view of the project's datasets in that location, with total_rows (live,
     from DuckDB's table statistics), total_logical_bytes (an estimate: 8
     bytes a column a row), storage_last_modified_time, deleted, table_type
     (stock: "Invalid dataset ID region-us"). It and INFORMATION_SCHEMA.TABLES
     are stored as DuckDB tables for each query instead of inlined as VALUES
     (stock takes ~5 s a thousand tables to parse those; 10,000 took minutes);
     so is INFORMATION_SCHEMA.COLUMNS (stock: 31 s for 1,000 tables).
  8. Partitioned tables: tables.insert/patch/update keep timePartitioning
     and rangePartitioning (stock dropped rangePartitioning) and check the
     partitioning column exists with a fitting type; tables.get and
     tables.list items return both (stock list items had neither).
  9. `[project.]dataset.INFORMATION_SCHEMA.PARTITIONS` answers like
     BigQuery's: one row per partition holding rows, ids YYYYMMDD /
     YYYYMMDDHH / YYYYMM / YYYY of the column (DATE, TIMESTAMP, DATETIME),
     range bucket starts, __NULL__, __UNPARTITIONED__; an unpartitioned
     table is one row with partition_id NULL (stock: one '__NULL__' row a
     table). last_modified_time is per partition: when the partition's
     content fingerprint (row count + summed DuckDB row hashes) was first
     seen. Materialized like TABLE_STORAGE (fix 7); a lone
     `table_name IN ('a', ...)` / `table_name = 'a'` filter limits the
     tables it scans.
 10. Extract jobs read table decorators (stock took `t$ID` for a table
     name): `t$ID` exports one partition (ids as in 9; no rows -> an empty
     export), `t@MS` the table as of MS ms since the epoch (negative:
     relative to now). `t$ID@MS`, or a snapshot time in the future, before
     the table was created or older than 7 days: DONE job with errorResult
     reason "invalid". For time travel, every change this launcher sees
     (insertAll; INSERT/UPDATE/DELETE/MERGE/TRUNCATE TABLE in query jobs and
     jobs.query; load/copy/query jobs with a destinationTable) first copies
     the table's rows into the emulator's own DuckDB schema, tagged with
     the time that state ended (kept 7 days).
 11. Dry runs of a SELECT report totalBytesProcessed (stock: always "0"):
     the logical bytes (as in 5) of every stored table the query names,
     views expanded into the tables they read; whole tables, where BigQuery
     counts only the columns read. A query job whose estimate is above its
     maximumBytesBilled fails unrun, reason bytesBilledLimitExceeded (stock
     ignores the cap).
 12. ALTER TABLE (ADD / DROP / RENAME / ALTER COLUMN) updates the catalog's
     schema from DuckDB, so tables.get and INFORMATION_SCHEMA.COLUMNS show
     the new columns (stock kept the old ones); a partition whose rows
     changed only with the columns keeps its last_modified_time and
     logical bytes in 9, as BigQuery's does after a metadata-only change.
 13. Answers hold only fields BigQuery's API description has (found by
     discovery_proxy.py, which checks every answer against it): stock adds
     totalItems to datasets.list and jobs.list, creationTime,
     lastModifiedTime, etag and maxTimeTravelHours to datasets.list items,
     statistics.query.totalRows to query jobs, and ddlOperationPerformed
     to jobs.query answers (a job's statistics.query has it, the answer
     does not); all dropped.
 14. Load jobs read their gs:// sourceUris from the fake-gcs-server at
     $STORAGE_EMULATOR_HOST (stock: from a local folder, BQEMU_GCS_LOCAL_ROOT);
     a destination `t$ID` is one partition (stock: looked up as a table
     named "t$ID"), which WRITE_TRUNCATE replaces alone (stock: emptied the
     whole table), and whose file rows must all belong to it (else the job
     fails "invalid", as BigQuery's does); CSV and JSON BYTES are read as
     base64 (as fix 2 writes them); CSV honours skipLeadingRows
     (default 0), fieldDelimiter and allowQuotedNewlines (stock: always a
     header, always ','), reads a quoted "" as an empty string and an empty
     field as NULL; JSON and CSV are read with the table's column types, by
     name (JSON) or position (CSV), Avro and Parquet by name; gzip'd CSV and
     JSON files are read whole; statistics.load.outputRows is the rows this
     load wrote (stock: the table's total rows). CREATE_NEVER and a missing
     table, a missing object: a DONE job with errorResult notFound.
 15. tables.get answers a view's query (view.query, view.useLegacySql), as
     BigQuery does (stock: none, so an exported view's definition had no
     query to make it again from).
 16. tables.insert / patch / update keep a column's policyTags and
     defaultValueExpression (nested ones too) and the table-level
     requirePartitionFilter, and tables.get answers them (stock dropped all
     three; it kept requirePartitionFilter only inside timePartitioning,
     where BigQuery deprecated it). Kept beside the catalog, per table and
     creation time; not enforced (a default fills nothing, a query without
     a partition filter runs).
  Empty query parameters (pageToken=, maxResults=) are accepted as "unset".

Usage:
  STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 \
    python bqemu_launcher.py --port 9050 [--grpc-port 0] [--project test-project]
Prints one JSON line {"ready": true, "rest_url": ..., "grpc": ...} on stdout
when it accepts requests; stops on SIGTERM/SIGINT.
"""

import argparse
from datetime import datetime, timedelta, timezone
import json
import os
from pathlib import Path
import re
import sys
import tempfile
import uuid
from typing import Any, Optional
import urllib.error
import urllib.parse
import urllib.request

import duckdb
import fastavro
import pyarrow as pa
import sqlglot
from fastapi import APIRouter, Query, Request, Response

import bqemulator.api.routes.jobs as jobs_routes
import bqemulator.api.routes.tabledata as tabledata_routes
import bqemulator.api.routes.tables as tables_routes
from bqemulator.catalog.etag import generate_etag
import bqemulator.catalog.ddl_sync as ddl_sync
from bqemulator.catalog.models import JobMeta, RangePartitioning, TableMeta, TableSchema
from bqemulator.config import PersistenceMode, Settings
from bqemulator.domain.errors import (
    AlreadyExistsError,
    DomainError,
    InternalError,
    NotFoundError,
    ValidationError,
)
import bqemulator.jobs.executor as ex
import bqemulator.server as bq_server
import bqemulator.types.geography as geography
import bqemulator.sql.inner_query as inner_query
import bqemulator.sql.rewriter.information_schema as info_schema
from bqemulator.storage.engine import CATALOG_SCHEMA, DuckDBEngine
from bqemulator.storage.sql_identifiers import quoted_table_ref, schema_name

_Ctx = tables_routes._Ctx  # Annotated[AppContext, Depends(get_context)]


def _not_found(what: str) -> NotFoundError:
    # BigQuery wording, e.g. "Not found: Dataset p:d" / "Not found: Table p:d.t"
    return NotFoundError(f"Not found: {what}")


# --- 1. offline DuckDB extensions ---------------------------------------------
def _extension_dir() -> str:
    """Symlink the .duckdb_extension files shipped in the duckdb-extension-*
    wheels into <venv>/bqemu-duckdb-ext/v<ver>/<platform>/ (DuckDB's layout)."""
    import duckdb_extension_avro
    import duckdb_extension_spatial

    ver = f"v{duckdb.__version__}"
    plat = duckdb.execute("PRAGMA platform").fetchone()[0]
    root = Path(sys.prefix) / "bqemu-duckdb-ext"  # inside the venv: one per venv
    dest = root / ver / plat
    dest.mkdir(parents=True, exist_ok=True)
    for pkg, name in ((duckdb_extension_spatial, "spatial"), (duckdb_extension_avro, "avro")):
        src = Path(pkg.__file__).parent / "extensions" / ver / f"{name}.duckdb_extension"
        link = dest / src.name
        if not link.exists():  # absent, or a dangling link
            link.unlink(missing_ok=True)
            try:
                link.symlink_to(src)
            except FileExistsError:  # another launcher won the race
                pass
    return str(root)


_orig_pragmas = DuckDBEngine._apply_session_pragmas


def _pragmas_with_ext_dir(self: DuckDBEngine) -> None:
    _orig_pragmas(self)  # SET TimeZone = 'UTC'
    # Runs right before _load_spatial(): INSTALL then finds the file, no download.
    self.connection.execute(f"SET extension_directory = '{_extension_dir()}'")


DuckDBEngine._apply_session_pragmas = _pragmas_with_ext_dir


def _geography_conv_conn() -> Any:
    """GEOGRAPHY values (insertAll, loads) are converted on a connection of
    their own, which stock makes with a download of the extension."""
    with geography._CONV_LOCK:
        if geography._CONV_CONN is None:
            conn = duckdb.connect(":memory:")
            conn.execute(f"SET extension_directory = '{_extension_dir()}'")
            conn.execute("LOAD spatial")
            geography._CONV_CONN = conn
        return geography._CONV_CONN


geography._ensure_conv_conn = _geography_conv_conn


# --- 3. upload what write_export wrote to fake-gcs-server ----------------------
def _gcs_base() -> Optional[str]:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def _upload(uri: str, path: str) -> None:
    """POST {base}/upload/storage/v1/b/BUCKET/o?uploadType=media&name=NAME."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    url = (
        f"{_gcs_base()}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        f"?uploadType=media&name={urllib.parse.quote(name, safe='')}"
    )
    req = urllib.request.Request(
        url,
        data=Path(path).read_bytes(),
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # bucket does not exist in fake-gcs
            raise _not_found(f"Bucket {bucket} (while writing {uri})") from exc
        raise InternalError(f"GCS upload of {uri} failed: HTTP {exc.code}") from exc


_orig_write_export = ex.write_export


def _write_export_to_gcs(arrow_table: Any, options: Any, ctx: Any) -> Any:
    """Stock writer (files under settings.gcs_local_root), then upload + delete."""
    outcome = _orig_write_export(arrow_table, options, ctx)  # ex._ExportOutcome(rows, file_count, uris)
    if _gcs_base() is None:
        return outcome  # no fake GCS configured: keep stock local-disk behaviour
    paths = [ex._resolve_uri(u, ctx) for u in outcome.uris]
    try:
        for uri, path in zip(outcome.uris, paths):
            _upload(uri, path)
    finally:
        for path in paths:
            Path(path).unlink(missing_ok=True)
    return outcome


# Module attribute: looked up at call time by ex._execute_export_data_job and
# by _extract_job below.
ex.write_export = _write_export_to_gcs


# --- 2. extract jobs -----------------------------------------------------------
async def _extract_job(project_id: str, job_id: str, config: dict, ctx: Any) -> JobMeta:
    now = ctx.clock.now()
    ext = config.get("extract") or {}
    src = ext.get("sourceTable") or {}
    p, d, t = src.get("projectId") or project_id, src.get("datasetId", ""), src.get("tableId", "")
    uris = list(ext.get("destinationUris") or ([ext["destinationUri"]] if ext.get("destinationUri") else []))
    fmt = (ext.get("destinationFormat") or "CSV").upper()
    fmt = "NEWLINE_DELIMITED_JSON" if fmt == "JSON" else fmt
    comp = (ext.get("compression") or "NONE").upper()

    # Request-shape problems -> HTTP 400 from jobs.insert (reason "invalid").
    if not uris or any(not u.startswith("gs://") for u in uris):
        raise ValidationError("extract.destinationUris must be gs:// URIs")
    if fmt not in ex._COMPRESSION_BY_FORMAT:
        raise ValidationError(f"Invalid destinationFormat: {fmt}")
    if comp not in ex._COMPRESSION_BY_FORMAT[fmt]:
        raise ValidationError(f"Compression {comp} is not supported for {fmt}")
    header = ext.get("printHeader", True)
    header = header if isinstance(header, bool) else str(header).lower() == "true"
    delim = ext.get("fieldDelimiter")
    delim = ex._resolve_field_delimiter(delim) if (delim and fmt == "CSV") else None

    statistics: dict = {}
    error: Optional[dict] = None
    try:
        # Fix 10: a `t$ID` / `t@MS` decorator picks the rows (404s itself).
        table = ctx.engine.fetch_arrow(_as_text(ctx, p, d, t, _extract_source_sql(ctx, p, d, t), fmt))
        if fmt == "NEWLINE_DELIMITED_JSON":
            table = table.cast(pa.schema([f.with_type(_json_string_numbers(f.type)) for f in table.schema]))
        counts = []
        async with ctx.engine.write_lock():  # write_export registers views on the shared connection
            # BigQuery spreads the rows over all destinationUris.
            for uri, (off, n) in zip(uris, ex._shard_offsets(table.num_rows, len(uris))):
                opts = ex._ExportOptions(
                    uri=uri,
                    format=fmt,
                    compression=None if comp == "NONE" else comp,
                    overwrite=True,  # extract jobs overwrite existing objects
                    header=header,
                    field_delimiter=delim,
                )
                counts.append(str(ex.write_export(table.slice(off, n), opts, ctx).file_count))
        statistics = {"extract": {"destinationUriFileCounts": counts, "inputBytes": str(table.nbytes)}}
    except DomainError as exc:  # notFound, invalid '*' count, bucket missing, ...
        error = {"reason": exc.bq_reason, "message": exc.message}
    except duckdb.CatalogException as exc:  # table dropped behind the catalog's back
        error = {"reason": "notFound", "message": f"Not found: Table {p}:{d}.{t} ({exc})"}
    except duckdb.Error as exc:
        error = {"reason": "invalid", "message": str(exc)}

    # insert_job() persists this with ctx.catalog.upsert_job(), so jobs.get finds it.
    return _done_job(project_id, job_id, "EXTRACT", config, statistics, error, now, ctx)


def _as_text(ctx: Any, p: str, d: str, t: str, sql: str, fmt: str) -> str:
    """`sql` with the table's GEOGRAPHY columns as WKT text, which BigQuery
    writes in every format, in CSV and JSON its BYTES columns as base64, as
    BigQuery writes them (stock: DuckDB's escapes, `\\x00\\x01`), and in
    Avro and Parquet its INTERVAL columns as text (stock: Avro and Parquet extracts of either failed, "Can't convert
    logical type 'GEOMETRY' to Avro type")."""
    m = _DECORATED.fullmatch(t)
    meta = ctx.catalog.get_table(p, d, m.group("table") if m else t)
    fields = meta.schema_.fields if meta is not None else ()
    binary = fmt in ("AVRO", "PARQUET")

    def column(f: Any) -> str:
        kind = f.type.upper()
        if kind == "GEOGRAPHY":
            return f'ST_AsText("{f.name}") AS "{f.name}"'
        if kind == "BYTES" and not binary:
            return f'base64("{f.name}") AS "{f.name}"'
        if kind == "INTERVAL" and binary:
            return f'CAST("{f.name}" AS VARCHAR) AS "{f.name}"'
        return f'"{f.name}"'

    columns = [column(f) for f in fields]
    if all(c == f'"{f.name}"' for c, f in zip(columns, fields)):
        return sql
    return f"SELECT {', '.join(columns)} FROM ({sql})"


def _json_string_numbers(kind: Any) -> Any:
    """The arrow type a JSON extract writes a column as: INT64 and NUMERIC as
    strings, nested ones too (stock wrote numbers: -1e29 for a NUMERIC)."""
    if pa.types.is_int64(kind) or pa.types.is_decimal(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(_json_string_numbers(kind.field(i).type))
                          for i in range(kind.num_fields)])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_json_string_numbers(kind.value_type)))
    return kind


def _done_job(
    project_id: str, job_id: str, job_type: str, config: dict,
    statistics: dict, error: Optional[dict], started: datetime, ctx: Any,
) -> JobMeta:
    """A finished job as insert_job() persists it (jobs.get then finds it)."""
    return JobMeta(
        project_id=project_id,
        job_id=job_id,
        job_type=job_type,
        state="DONE",
        configuration=config,
        statistics=statistics,
        error_result=error,
        creation_time=started,
        start_time=started,
        end_time=ctx.clock.now(),
        etag=generate_etag(project_id, job_id, str(started)),
    )


# insert_job() calls the name imported into bqemulator.api.routes.jobs.
jobs_routes.execute_extract_job = _extract_job


# --- 4./5./6. route overrides (prepended so they shadow the stock routes) ------
router = APIRouter(prefix="/bigquery/v2")
_TABLES = "/projects/{project_id}/datasets/{dataset_id}/tables"


def _require_dataset(ctx: Any, project_id: str, dataset_id: str) -> None:
    if ctx.catalog.get_dataset(project_id, dataset_id) is None:
        raise _not_found(f"Dataset {project_id}:{dataset_id}")


@router.get(_TABLES)
def list_tables(
    project_id: str,
    dataset_id: str,
    ctx: _Ctx,
    # str, not int: clients send "maxResults=" / "pageToken=" when unset.
    maxResults: Optional[str] = Query(default=None),  # noqa: N803
    pageToken: Optional[str] = Query(default=None),  # noqa: N803
) -> dict:
    _require_dataset(ctx, project_id, dataset_id)
    tables = sorted(ctx.catalog.list_tables(project_id, dataset_id), key=lambda m: m.table_id)
    try:
        start = int(pageToken) if pageToken else 0
        size = int(maxResults) if maxResults else 0
    except ValueError:
        raise ValidationError(f"Invalid maxResults/pageToken: {maxResults!r}/{pageToken!r}") from None
    size = size if size > 0 else 1000
    out = {
        "kind": "bigquery#tableList",
        "tables": [tables_routes._table_to_list_item(m) for m in tables[start:start + size]],
        "totalItems": len(tables),
    }
    if start + size < len(tables):
        out["nextPageToken"] = str(start + size)
    return out


@router.post(_TABLES)
async def insert_table(project_id: str, dataset_id: str, request: Request, ctx: _Ctx) -> dict:
    _require_dataset(ctx, project_id, dataset_id)
    return await tables_routes.insert_table(project_id, dataset_id, request, ctx)


@router.get(_TABLES + "/{table_id}")
async def get_table(project_id: str, dataset_id: str, table_id: str, ctx: _Ctx) -> dict:
    body = tables_routes.get_table(project_id, dataset_id, table_id, ctx)  # stock; 404s itself
    if body.get("type") == "TABLE" and not dataset_id.startswith("_bqemu"):
        try:
            # Rows counted; bytes estimated from the Arrow size of a sample (BigQuery
            # reports logical bytes). Async and under the engine's lock: DuckDB's
            # shared connection is not safe for concurrent readers (a sync route
            # would run in a thread pool).
            async with ctx.engine.write_lock():
                rows, size = _logical_size(ctx, project_id, dataset_id, table_id)
            body["numRows"] = str(rows)
            body["numBytes"] = body["numActiveLogicalBytes"] = body["numTotalLogicalBytes"] = str(size)
        except duckdb.Error:
            pass
        # BigQuery moves lastModifiedTime with every change of the rows;
        # stock only with the table's metadata. Changes seen by fix 10's hooks.
        changed = _data_changed.get((project_id, dataset_id, table_id))
        if changed is not None:
            changed_ms = int(changed.timestamp() * 1000)
            body["lastModifiedTime"] = str(max(int(body.get("lastModifiedTime") or 0), changed_ms))
    return body


def _logical_size(ctx: Any, project_id: str, dataset_id: str, table_id: str) -> tuple:
    """(rows, bytes) of a stored table: bytes from the Arrow size of a sample.
    Call under ctx.engine.write_lock(); raises duckdb.Error."""
    ref = quoted_table_ref(project_id, dataset_id, table_id)
    rows = ctx.engine.fetch_arrow(f"SELECT COUNT(*) AS n FROM {ref}").column(0)[0].as_py()
    sample = ctx.engine.fetch_arrow(f"SELECT * FROM {ref} LIMIT 1000")
    per_row = sample.nbytes / sample.num_rows if sample.num_rows else 0
    return rows, int(rows * per_row)


# (project, dataset, table) -> when its rows last changed (insertAll, DML).
_data_changed: dict = {}


# --- 6. duplicate job ids ----------------------------------------------------------
@router.post("/projects/{project_id}/jobs")
async def insert_job(project_id: str, request: Request, ctx: _Ctx, caller: jobs_routes._Caller) -> dict:
    body = await request.json()  # Starlette caches it; the stock handler reads it again
    ref = body.get("jobReference") or {}
    job_id = ref.get("jobId")
    if job_id and ctx.catalog.get_job(project_id, job_id) is not None:
        # Real BigQuery: 409 {"errors":[{"reason":"duplicate"}],"status":"ALREADY_EXISTS"}
        loc = ref.get("location") or "US"
        raise AlreadyExistsError(f"Already Exists: Job {project_id}:{loc}.{job_id}")
    # Fix 10: keep the pre-change rows of a job's destination table.
    targets = _job_destinations(body.get("configuration") or {}, project_id)
    await _before_change(ctx, targets)
    try:
        return await jobs_routes.insert_job(project_id, request, ctx, caller)
    finally:
        await _after_change(ctx, targets)


# --- 7. INFORMATION_SCHEMA: TABLE_STORAGE, and TABLES and COLUMNS at scale -----
_TABLE_STORAGE = re.compile(
    r"`?(?:(?P<project>[A-Za-z0-9_\-]+)`?\s*\.\s*`?)?region-(?P<region>[A-Za-z0-9\-]+)`?"
    r"\s*\.\s*`?INFORMATION_SCHEMA\s*\.\s*TABLE_STORAGE`?",
    flags=re.IGNORECASE,
)
_STORAGE_COLUMN_TYPES = (
    ("project_id", "STRING"), ("table_catalog", "STRING"), ("table_schema", "STRING"),
    ("table_name", "STRING"), ("creation_time", "TIMESTAMP"), ("total_rows", "INT64"),
    ("total_partitions", "INT64"), ("total_logical_bytes", "INT64"),
    ("active_logical_bytes", "INT64"), ("long_term_logical_bytes", "INT64"),
    ("total_physical_bytes", "INT64"), ("deleted", "BOOL"),
    ("storage_last_modified_time", "TIMESTAMP"), ("table_type", "STRING"),
)
_ARROW_TYPES = {
    "STRING": pa.string(), "INT64": pa.int64(), "INTEGER": pa.int64(), "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
}
_context: Any = None  # the app's context, kept by _create_app: the views need its engine


def _materialize(name: str, column_types: Any, rows: list) -> str:
    """Store `rows` as a DuckDB table in the emulator's own schema and return
    a subquery reading it. Stock inlines a view as a VALUES list, which the
    SQL translator takes seconds per thousand rows to parse."""
    columns = {
        col: pa.array([r[i] for r in rows], type=_ARROW_TYPES[ty])
        for i, (col, ty) in enumerate(column_types)
    }
    data = pa.table(columns)  # noqa: F841 (DuckDB reads it by its variable name)
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    ref = f"{CATALOG_SCHEMA}.{name}"
    cursor = _context.engine.connection.cursor()  # its own cursor: queries may run meanwhile
    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {CATALOG_SCHEMA}")
    cursor.execute(f"CREATE OR REPLACE TABLE {ref} AS SELECT * FROM data")
    return f"(SELECT * FROM {ref})"


def _tables_materialized(tables: Any, project_id: str, dataset_id: str) -> str:
    """Stock `_tables_as_values`' rows, materialized."""
    rows = []
    for t in sorted(tables, key=lambda x: x.table_id):
        bq_type = info_schema._BQ_TABLE_TYPE_MAP.get(t.table_type, t.table_type)
        base = (t.base_table or "").split(".", 2) if t.base_table else []
        base = (base + [None, None, None])[:3] if len(base) == 3 else [t.base_table, None, None]
        snapshot_ms = int(t.snapshot_time.timestamp() * 1000) if t.snapshot_time else None
        rows.append((
            project_id, dataset_id, t.table_id, bq_type, "YES" if bq_type == "BASE TABLE" else "NO",
            "NO", t.creation_time, *base, snapshot_ms,
        ))
    return _materialize(f"tables__{project_id}__{dataset_id}", info_schema._TABLES_COLUMN_TYPES, rows)


# expand_information_schema_tables() looks the name up in its module at call time.
info_schema._tables_as_values = _tables_materialized


def _columns_materialized(tables: Any, project_id: str, dataset_id: str) -> str:
    """Stock `_columns_as_values`' rows, materialized (stock took 31 s for
    1,000 tables of 3 columns; the change markers of --only-changed read it)."""
    rows = []
    for t in sorted(tables, key=lambda x: x.table_id):
        partition_field = info_schema._partition_field(t)
        clustering = {f: i + 1 for i, f in enumerate(t.clustering.fields)} if t.clustering is not None else {}
        for ordinal, f in enumerate(t.schema_.fields, start=1):
            rows.append((
                project_id, dataset_id, t.table_id, f.name, ordinal, "NO" if f.mode == "REQUIRED" else "YES",
                info_schema._render_data_type(f), "NEVER", None, "NEVER", "NO",
                "YES" if t.table_type == "TABLE" else "NO", "NO", "YES" if f.name == partition_field else "NO",
                clustering.get(f.name), f.collation or None,
            ))
    return _materialize(f"columns__{project_id}__{dataset_id}", info_schema._COLUMNS_COLUMN_TYPES, rows)


# expand_information_schema_columns() looks the name up in its module at call time.
info_schema._columns_as_values = _columns_materialized


def _table_storage(project_id: str, region: str) -> str:
    """One row per stored table of the project's datasets in `region`."""
    stats = {
        (schema, name): (rows or 0, columns)
        for schema, name, rows, columns in _context.engine.connection.cursor().execute(
            "SELECT schema_name, table_name, estimated_size, column_count FROM duckdb_tables()"
        ).fetchall()
    }
    rows = []
    for ds in _context.catalog.list_datasets(project_id):
        if ds.location.lower() != region.lower():
            continue
        for t in _context.catalog.list_tables(project_id, ds.dataset_id):
            if t.table_type not in ("TABLE", "MATERIALIZED_VIEW", "SNAPSHOT"):
                continue  # BigQuery: views and external tables store nothing
            count, columns = stats.get((schema_name(project_id, ds.dataset_id), t.table_id), (0, 0))
            size = count * columns * 8
            bq_type = info_schema._BQ_TABLE_TYPE_MAP.get(t.table_type, t.table_type)
            rows.append((
                project_id, project_id, ds.dataset_id, t.table_id, t.creation_time, count, None,
                size, size, 0, size, False, t.last_modified_time, bq_type,
            ))
    return _materialize(f"table_storage__{project_id}__{region.lower()}", _STORAGE_COLUMN_TYPES, rows)


_orig_expand = inner_query.expand_information_schema


def _expand_with_table_storage(bq_sql: str, project_id: str, catalog: Any) -> str:
    if "TABLE_STORAGE" in bq_sql.upper():
        bq_sql = _TABLE_STORAGE.sub(
            lambda m: _table_storage(m.group("project") or project_id, m.group("region")), bq_sql
        )
    return _orig_expand(bq_sql, project_id, catalog)


# rewrite_and_translate_statement() looks the name up in its module at call time.
inner_query.expand_information_schema = _expand_with_table_storage


# --- 8. partitioned tables: timePartitioning / rangePartitioning ---------------
# BigQuery keeps both on the table and returns them from tables.get and in
# tables.list items; a partitioning column must exist with a fitting type.
# Stock 1.4.0 dropped rangePartitioning, put neither in list items, and took
# any column name.
_TIME_PARTITION_TYPES = ("DATE", "TIMESTAMP", "DATETIME")
_RANGE_PARTITION_TYPES = ("INTEGER", "INT64")


def _rest_to_range_partitioning(raw: Any, existing: Optional[TableMeta]) -> Optional[RangePartitioning]:
    if not raw:
        return existing.range_partitioning if existing else None
    rng = raw.get("range") or {}
    try:
        rp = RangePartitioning(
            field=raw["field"], start=int(rng["start"]), end=int(rng["end"]), interval=int(rng["interval"])
        )
    except (KeyError, TypeError, ValueError):
        raise ValidationError(
            "rangePartitioning needs a field and integer range.start, range.end and range.interval"
        ) from None
    if rp.interval <= 0:
        raise ValidationError(f"Invalid range partitioning: interval {rp.interval} must be positive")
    if rp.end <= rp.start:
        raise ValidationError(f"Invalid range partitioning: end {rp.end} must be greater than start {rp.start}")
    return rp


def _check_partitioning_column(meta: TableMeta) -> None:
    fields = {f.name.lower(): f for f in meta.schema_.fields}
    if not fields:
        return  # no schema: nothing to check against
    for spec, kind, types in (
        (meta.time_partitioning, "time", _TIME_PARTITION_TYPES),
        (meta.range_partitioning, "range", _RANGE_PARTITION_TYPES),
    ):
        if spec is None or not spec.field:
            continue
        f = fields.get(spec.field.lower())
        if f is None:
            raise ValidationError(f"The field specified for partitioning cannot be found in the schema: {spec.field}")
        if f.type.upper() not in types or f.mode == "REPEATED":
            raise ValidationError(
                f"The field specified for {kind} partitioning can only be of type {' or '.join(types)}. "
                f"The type found is: {f.type}."
            )


_orig_rest_to_table_meta = tables_routes._rest_to_table_meta


def _rest_to_table_meta(
    project_id: str, dataset_id: str, body: dict, clock: Any, existing: Optional[TableMeta] = None
) -> TableMeta:
    """Stock parser (insert, patch, update) + rangePartitioning."""
    meta = _orig_rest_to_table_meta(project_id, dataset_id, body, clock, existing)
    rp = _rest_to_range_partitioning(body.get("rangePartitioning"), existing)
    if rp is not None and meta.time_partitioning is not None:
        raise ValidationError("Cannot specify both time partitioning and range partitioning")
    meta = meta.model_copy(update={"range_partitioning": rp})
    if body.get("timePartitioning") or body.get("rangePartitioning"):
        _check_partitioning_column(meta)
    _keep_extras(meta, body)
    return meta


# Fix 16: what the catalog has no place for, by table (and its creation, so
# a table made again under the same name starts afresh).
_extras: dict = {}


def _extras_key(t: TableMeta) -> tuple:
    return (t.project_id, t.dataset_id, t.table_id, _us(t.creation_time))


def _field_extras(fields: list, path: tuple = ()) -> dict:
    """{field path: {policyTags, defaultValueExpression}} of a REST schema."""
    out: dict = {}
    for f in fields or []:
        here = path + (f.get("name"),)
        kept = {k: f[k] for k in ("policyTags", "defaultValueExpression") if f.get(k)}
        if kept:
            out[here] = kept
        out.update(_field_extras(f.get("fields"), here))
    return out


def _keep_extras(meta: TableMeta, body: dict) -> None:
    """The table-level requirePartitionFilter and the fields' policy tags
    and default values of a tables.insert / patch / update body."""
    kept = _extras.setdefault(_extras_key(meta), {})
    if "requirePartitionFilter" in body:
        kept["requirePartitionFilter"] = bool(body["requirePartitionFilter"])
    if "schema" in body:
        kept["fields"] = _field_extras((body.get("schema") or {}).get("fields"))


def _with_extras(t: TableMeta, out: dict) -> dict:
    kept = _extras.get(_extras_key(t)) or {}
    if kept.get("requirePartitionFilter"):
        out["requirePartitionFilter"] = True

    def walk(fields: list, path: tuple) -> None:
        for f in fields or []:
            here = path + (f.get("name"),)
            f.update((kept.get("fields") or {}).get(here, {}))
            walk(f.get("fields"), here)

    walk((out.get("schema") or {}).get("fields"), ())
    return out


def _partitioning_to_rest(t: TableMeta) -> dict:
    out: dict = {}
    if t.time_partitioning is not None:
        out["timePartitioning"] = tables_routes._time_partitioning_to_rest(t.time_partitioning)
    if t.range_partitioning is not None:
        rp = t.range_partitioning
        out["rangePartitioning"] = {
            "field": rp.field,
            "range": {"start": str(rp.start), "end": str(rp.end), "interval": str(rp.interval)},
        }
    return out


_orig_table_to_rest = tables_routes._table_to_rest
_orig_table_to_list_item = tables_routes._table_to_list_item


def _table_to_rest(t: TableMeta) -> dict:
    return _with_extras(t, {**_orig_table_to_rest(t), **_partitioning_to_rest(t), **_view_to_rest(t)})


def _view_to_rest(t: TableMeta) -> dict:
    """Fix 15: a view's query, which stock tables.get never answered."""
    if t.table_type != "VIEW" or not t.view_query:
        return {}
    return {"view": {"query": t.view_query, "useLegacySql": bool(t.use_legacy_sql)}}


def _table_to_list_item(t: TableMeta) -> dict:
    item = {**_orig_table_to_list_item(t), **_partitioning_to_rest(t)}
    if t.clustering is not None:
        item["clustering"] = {"fields": list(t.clustering.fields)}
    return item


# The routes (stock ones and ours) look these names up in the module at call time.
tables_routes._rest_to_table_meta = _rest_to_table_meta
tables_routes._table_to_rest = _table_to_rest
tables_routes._table_to_list_item = _table_to_list_item


# --- 9. INFORMATION_SCHEMA.PARTITIONS ------------------------------------------
# BigQuery: one row per partition that holds rows (ids YYYYMMDD / YYYYMMDDHH /
# YYYYMM / YYYY of the column, range bucket starts, __NULL__, and
# __UNPARTITIONED__ for values outside the range or 1960-01-01..2159-12-31);
# an unpartitioned table is one row with partition_id NULL; last_modified_time
# is the partition's own. Stock: one '__NULL__' row a table with the table's
# (stale) time. Here each partition's content is fingerprinted (row count +
# summed DuckDB row hashes) whenever it is looked at and around every change
# this launcher sees (fix 10); a partition's time is when its current
# fingerprint was first seen (a change seen happening: the change's time; a
# partition never seen before: the table's creation/last-modified time). A
# change of the table's columns alone (ALTER TABLE ADD/DROP/RENAME COLUMN, fix
# 12) changes every row's hash but writes no data: BigQuery calls dropping a
# column a metadata-only operation, so the partition keeps its time and its
# logical bytes (until its rows next change), and only the schema shows it.
_PARTITIONS_COLUMN_TYPES = (
    ("table_catalog", "STRING"), ("table_schema", "STRING"), ("table_name", "STRING"),
    ("partition_id", "STRING"), ("total_rows", "INT64"), ("total_logical_bytes", "INT64"),
    ("last_modified_time", "TIMESTAMP"), ("storage_tier", "STRING"),
)
_PARTITION_ID_FORMATS = {"HOUR": "%Y%m%d%H", "DAY": "%Y%m%d", "MONTH": "%Y%m", "YEAR": "%Y"}
_PARTITION_ID_SHAPES = {"HOUR": r"\d{10}", "DAY": r"\d{8}", "MONTH": r"\d{6}", "YEAR": r"\d{4}", "RANGE": r"-?\d+"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(dt: datetime) -> int:
    """Microseconds since the epoch (exact, unlike dt.timestamp())."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _column(meta: TableMeta, name: str) -> str:
    """The quoted DuckDB column for a (case-insensitive) BigQuery column name."""
    for f in meta.schema_.fields:
        if f.name.lower() == name.lower():
            name = f.name
            break
    return '"' + name.replace('"', '""') + '"'


def _partition_expr(meta: TableMeta) -> Optional[str]:
    """DuckDB expression for a row's BigQuery partition id; None: unpartitioned."""
    tp, rp = meta.time_partitioning, meta.range_partitioning
    if tp is not None:
        fmt = _PARTITION_ID_FORMATS.get(tp.type, "%Y%m%d")
        if not tp.field:
            # Ingestion time: no per-row ingestion time is kept; every row
            # counts as ingested at the table's last modification.
            return "'" + meta.last_modified_time.strftime(fmt) + "'"
        col = _column(meta, tp.field)
        return (
            f"CASE WHEN {col} IS NULL THEN '__NULL__' "
            f"WHEN CAST({col} AS DATE) NOT BETWEEN DATE '1960-01-01' AND DATE '2159-12-31' "
            f"THEN '__UNPARTITIONED__' ELSE strftime({col}, '{fmt}') END"
        )
    if rp is not None:
        col = _column(meta, rp.field)
        return (
            f"CASE WHEN {col} IS NULL THEN '__NULL__' "
            f"WHEN {col} < {rp.start} OR {col} >= {rp.end} THEN '__UNPARTITIONED__' "
            f"ELSE CAST({rp.start} + (({col} - {rp.start}) // {rp.interval}) * {rp.interval} AS VARCHAR) END"
        )
    return None


# (project, dataset, table, creation µs) ->
#     {partition_id: (fingerprint, first seen with it, logical bytes a row then)}
_partition_seen: dict = {}
# (project, dataset, table, creation µs) -> its columns when last fingerprinted
_partition_columns: dict = {}


def _row_width(meta: TableMeta) -> int:
    """Logical bytes a row: an estimate, 8 bytes a column, as in fix 7."""
    return max(1, len(meta.schema_.fields)) * 8


def _observe_partitions(ctx: Any, cur: Any, meta: TableMeta, changed_at: Optional[datetime] = None) -> dict:
    """{partition_id: (rows, last_modified_time, logical bytes)} of the
    table's live rows.

    A fingerprint not seen before gets `changed_at` (a change this launcher
    saw), else now (changed behind our back), or for a partition never seen
    at all the table's creation / last-modified time; one that changed with
    the table's columns alone keeps its time and bytes."""
    expr = _partition_expr(meta)
    ref = quoted_table_ref(meta.project_id, meta.dataset_id, meta.table_id)
    stats = {
        pid: (n, (n, fp))
        for pid, n, fp in cur.execute(
            f"SELECT {expr or 'NULL'} AS pid, COUNT(*), SUM(hash(__bqemu_row)::HUGEINT) "
            f"FROM {ref} AS __bqemu_row GROUP BY 1"
        ).fetchall()
    }
    if expr is None and not stats:
        stats = {None: (0, (0, None))}  # an unpartitioned table has its row even when empty
    key = (meta.project_id, meta.dataset_id, meta.table_id, _us(meta.creation_time))
    seen = _partition_seen.setdefault(key, {})
    columns = tuple((f.name, f.type, f.mode) for f in meta.schema_.fields)
    altered = _partition_columns.setdefault(key, columns) != columns
    _partition_columns[key] = columns
    width = _row_width(meta)
    for pid, (_, fp) in stats.items():
        old = seen.get(pid)
        if old is None:
            seen[pid] = (fp, changed_at or max(meta.creation_time, meta.last_modified_time), width)
        elif old[0] != fp:
            seen[pid] = (fp, old[1], old[2]) if altered else (fp, changed_at or ctx.clock.now(), width)
    for pid in [k for k in seen if k not in stats]:
        del seen[pid]  # emptied: if rows come back, that is a change
    return {pid: (n, seen[pid][1], n * seen[pid][2]) for pid, (n, _) in stats.items()}


_partitions_only: Optional[set] = None  # table names the query being expanded is limited to


def _partitions_materialized(catalog: Any, project_id: str, dataset_id: str) -> str:
    """Replaces stock `_partitions_as_values`: the dataset's partitions, materialized."""
    cur = _context.engine.connection.cursor()
    rows = []
    for t in sorted(catalog.list_tables(project_id, dataset_id), key=lambda m: m.table_id):
        if t.table_type not in ("TABLE", "SNAPSHOT", "CLONE"):
            continue  # views and materialized views: no partitions here (as stock)
        if _partitions_only is not None and t.table_id not in _partitions_only:
            continue
        try:
            parts = _observe_partitions(_context, cur, t)
        except duckdb.Error:
            continue  # dropped behind the catalog's back, partitioning column gone, ...
        for pid in sorted(parts, key=lambda k: (k is None, k or "")):
            n, modified, logical_bytes = parts[pid]
            rows.append((project_id, dataset_id, t.table_id, pid, n, logical_bytes, modified, "ACTIVE"))
    return _materialize(f"partitions__{project_id}__{dataset_id}", _PARTITIONS_COLUMN_TYPES, rows)


# expand_information_schema_partitions() looks the name up in its module at call time.
info_schema._partitions_as_values = _partitions_materialized

_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_TABLE_NAME_IN = re.compile(rf"\btable_name\s+IN\s*\(\s*((?:{_STRING})(?:\s*,\s*(?:{_STRING}))*)\s*\)", re.I)
_TABLE_NAME_EQ = re.compile(rf"\btable_name\s*=\s*({_STRING})", re.I)


def _table_name_filter(bq_sql: str) -> Optional[set]:
    """Table names a PARTITIONS query can only return rows of, when that is
    certain enough: one PARTITIONS reference, one `table_name IN ('a', ...)`
    or `table_name = 'a'` after WHERE, no OR / NOT (but IS NOT NULL) / CASE.
    Else None (all)."""
    if len(re.findall(r"INFORMATION_SCHEMA\s*\.\s*PARTITIONS", bq_sql, re.I)) != 1:
        return None
    where = [m.end() for m in re.finditer(r"\bWHERE\b", bq_sql, re.I)]
    if not where or re.search(r"\bOR\b|\bNOT\b(?!\s+NULL\b)|\bCASE\b|\bIF\s*\(", bq_sql, re.I):
        return None
    found = list(_TABLE_NAME_IN.finditer(bq_sql)) + list(_TABLE_NAME_EQ.finditer(bq_sql))
    if len(found) != 1 or found[0].start() < where[-1]:
        return None
    return {lit[1:-1] for lit in re.findall(_STRING, found[0].group(1))}


_expand_before_partitions = inner_query.expand_information_schema  # fix 7's


def _expand_with_partitions(bq_sql: str, project_id: str, catalog: Any) -> str:
    global _partitions_only
    if "PARTITIONS" not in bq_sql.upper():
        return _expand_before_partitions(bq_sql, project_id, catalog)
    _partitions_only = _table_name_filter(bq_sql)
    try:
        return _expand_before_partitions(bq_sql, project_id, catalog)
    finally:
        _partitions_only = None


inner_query.expand_information_schema = _expand_with_partitions


# --- 10. table decorators in extract jobs; table history ------------------------
# BigQuery: an extract's sourceTable.tableId may carry a partition decorator
# (`t$20261201`: that partition's rows; none: an empty export) or a snapshot
# decorator (`t@MS`: the table as of MS ms since the epoch, negative = relative
# to now, within the 7-day time travel window, not before the table was
# created); both at once is refused. Stock looked "t$20261201" up as a table
# name. Time travel here reads copies of a table's rows taken right before each
# change this launcher sees -- insertAll; query jobs / jobs.query running
# INSERT, UPDATE, DELETE, MERGE or TRUNCATE TABLE (target found by regex, only
# dataset-qualified names); load / copy / query jobs with a destinationTable --
# each tagged with the time that state ended. `t@MS` reads the earliest copy
# that ended after MS, else the live table. CREATE TABLE ... AS needs none.
_TIME_TRAVEL = timedelta(days=7)
_HISTORY = f"{CATALOG_SCHEMA}.bqdrain_history"  # index of the copies (in DuckDB: persists with --data-dir)
_PART = r"(?:`[^`]+`|[A-Za-z_][A-Za-z0-9_\-]*)"
_DML_TARGET = re.compile(
    r"\b(?:INSERT\s+(?:INTO\s+)?|UPDATE\s+|DELETE\s+(?:FROM\s+)?|MERGE\s+(?:INTO\s+)?|TRUNCATE\s+TABLE\s+)"
    rf"({_PART}(?:\s*\.\s*{_PART}){{0,2}})",
    re.I,
)
_DECORATED = re.compile(r"(?P<table>[^$@]+)(?:\$(?P<partition>[^$@]*))?(?:@(?P<snapshot>[^$@]*))?")


def _dml_targets(bq_sql: str, project_id: str) -> list:
    """(project, dataset, table) of every dataset-qualified DML target."""
    out: list = []
    for m in _DML_TARGET.finditer(bq_sql):
        parts = [x for piece in re.findall(_PART, m.group(1)) for x in piece.strip("`").split(".")]
        if len(parts) == 2:
            parts.insert(0, project_id)
        if len(parts) == 3 and tuple(parts) not in out:  # 1 part: MERGE's "UPDATE SET", "DELETE WHEN", ...
            out.append(tuple(parts))
    return out


def _job_destinations(config: dict, project_id: str) -> list:
    """The table a load / copy / query job writes into, if it names one."""
    if config.get("dryRun"):
        return []
    out = []
    for kind in ("load", "copy", "query"):
        dest = (config.get(kind) or {}).get("destinationTable") or {}
        if dest.get("datasetId") and dest.get("tableId"):
            out.append((dest.get("projectId") or project_id, dest["datasetId"], dest["tableId"].split("$")[0]))
    return out


def _record_history(cur: Any, meta: TableMeta, ended: datetime) -> None:
    """Copy the table's rows into the history as the state that ended at `ended`."""
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {CATALOG_SCHEMA}")
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {_HISTORY} (project VARCHAR, dataset VARCHAR, table_id VARCHAR, "
        "created_us BIGINT, ended_us BIGINT, copy_table VARCHAR)"
    )
    cutoff = _us(ended - _TIME_TRAVEL)  # copies that ended before this can no longer be read
    for (old,) in cur.execute(f"SELECT copy_table FROM {_HISTORY} WHERE ended_us < ?", [cutoff]).fetchall():
        cur.execute(f'DROP TABLE IF EXISTS {CATALOG_SCHEMA}."{old}"')
    cur.execute(f"DELETE FROM {_HISTORY} WHERE ended_us < ?", [cutoff])
    copy = f"history_{uuid.uuid4().hex}"
    cur.execute(
        f'CREATE TABLE {CATALOG_SCHEMA}."{copy}" AS SELECT * FROM '
        f"{quoted_table_ref(meta.project_id, meta.dataset_id, meta.table_id)}"
    )
    cur.execute(
        f"INSERT INTO {_HISTORY} VALUES (?, ?, ?, ?, ?, ?)",
        [meta.project_id, meta.dataset_id, meta.table_id, _us(meta.creation_time), _us(ended), copy],
    )


def _history_copy(cur: Any, meta: TableMeta, at_us: int) -> Optional[str]:
    """The copy holding the table's state at `at_us`; None: the live table."""
    try:
        row = cur.execute(
            f"SELECT copy_table FROM {_HISTORY} WHERE project = ? AND dataset = ? AND table_id = ? "
            "AND created_us = ? AND ended_us > ? ORDER BY ended_us LIMIT 1",
            [meta.project_id, meta.dataset_id, meta.table_id, _us(meta.creation_time), at_us],
        ).fetchone()
    except duckdb.CatalogException:  # no history kept yet
        return None
    return row[0] if row else None


async def _before_change(ctx: Any, targets: list) -> None:
    """Right before `targets` change: fingerprint their partitions as they
    are (fix 9) and keep a copy of their rows (time travel)."""
    if not targets:
        return
    async with ctx.engine.write_lock():
        cur = ctx.engine.connection.cursor()
        now = ctx.clock.now()
        for ref in targets:
            meta = ctx.catalog.get_table(*ref)
            if meta is None or meta.table_type != "TABLE":
                continue
            try:
                _observe_partitions(ctx, cur, meta)
                _record_history(cur, meta, now)
            except duckdb.Error:
                continue


async def _after_change(ctx: Any, targets: list) -> None:
    """Right after: partitions whose content changed get the change's time,
    and so does the table's lastModifiedTime (fix 5)."""
    if not targets:
        return
    cur = ctx.engine.connection.cursor()
    now = ctx.clock.now()
    for ref in targets:
        _data_changed[tuple(ref)] = now
        meta = ctx.catalog.get_table(*ref)
        if meta is None or meta.table_type != "TABLE":
            continue
        try:
            _observe_partitions(ctx, cur, meta, changed_at=now)
        except duckdb.Error:
            continue


_orig_execute_query_job = jobs_routes.execute_query_job


async def _execute_query_job(
    project_id: str, job_id: str, bq_sql: str, query_params: Any, ctx: Any, **kwargs: Any
) -> JobMeta:
    targets = _dml_targets(bq_sql, project_id)
    await _before_change(ctx, targets)
    try:
        return await _orig_execute_query_job(project_id, job_id, bq_sql, query_params, ctx, **kwargs)
    finally:
        await _after_change(ctx, targets)


# jobs.insert (query jobs) and jobs.query call the name imported into the routes module.
jobs_routes.execute_query_job = _execute_query_job


@router.post(_TABLES + "/{table_id}/insertAll")
async def insert_all(project_id: str, dataset_id: str, table_id: str, request: Request, ctx: _Ctx) -> dict:
    body = await request.json()  # Starlette caches it; the stock handler reads it again
    targets = [(project_id, dataset_id, table_id)] if body.get("rows") else []
    await _before_change(ctx, targets)
    try:
        return await tabledata_routes.insert_all(project_id, dataset_id, table_id, request, ctx)
    finally:
        await _after_change(ctx, targets)


def _partition_condition(meta: TableMeta, pid: str, decorated: str) -> str:
    expr = _partition_expr(meta)
    name = f"{meta.project_id}:{meta.dataset_id}.{meta.table_id}"
    if expr is None:
        raise ValidationError(
            f"Cannot read partition information from a table that is not partitioned: {name}${pid}"
        )
    kind = "RANGE" if meta.range_partitioning is not None else meta.time_partitioning.type
    if pid not in ("__NULL__", "__UNPARTITIONED__") and not re.fullmatch(_PARTITION_ID_SHAPES[kind], pid):
        raise ValidationError(f"Invalid partition decorator {decorated}: {pid!r} is not a {kind} partition id")
    return f"({expr}) = '{pid}'"


def _snapshot_source(ctx: Any, meta: TableMeta, snap: str, decorated: str) -> str:
    name = f"{meta.project_id}:{meta.dataset_id}.{meta.table_id}"
    try:
        ms = int(snap)
    except ValueError:
        raise ValidationError(
            f"Invalid snapshot decorator {decorated}: {snap!r} is not a time in milliseconds since the epoch"
        ) from None
    now_ms = _us(ctx.clock.now()) // 1000
    if ms < 0:
        ms += now_ms  # BigQuery: a negative snapshot time is relative to now
    oldest = now_ms - _TIME_TRAVEL // timedelta(milliseconds=1)
    created = _us(meta.creation_time) // 1000
    if ms > now_ms:
        raise ValidationError(f"Invalid snapshot time {ms} for table {name}: it is in the future (now: {now_ms})")
    if ms < oldest:
        raise ValidationError(
            f"Invalid snapshot time {ms} for table {name}: it exceeds the time travel window of 7 days. "
            f"Cannot read before {oldest}"
        )
    if ms < created:
        raise ValidationError(
            f"Invalid snapshot time {ms} for table {name}: {ms} is before the table was created ({created})"
        )
    copy = _history_copy(ctx.engine.connection.cursor(), meta, ms * 1000)
    return f'{CATALOG_SCHEMA}."{copy}"' if copy else quoted_table_ref(meta.project_id, meta.dataset_id, meta.table_id)


def _extract_source_sql(ctx: Any, p: str, d: str, t: str) -> str:
    """The SELECT an extract job exports for sourceTable p:d.t (decorators
    included); DomainError for a missing table or a bad decorator."""
    m = _DECORATED.fullmatch(t)
    if m is None:
        raise ValidationError(f"Invalid table decorator in {p}:{d}.{t}")
    base, pid, snap = m.group("table", "partition", "snapshot")
    if pid is not None and snap is not None:
        raise ValidationError(
            f"Invalid table decorator {p}:{d}.{t}: partition and snapshot decorators cannot be combined "
            "in an extract job"
        )
    meta = ctx.catalog.get_table(p, d, base)
    if meta is None:
        raise _not_found(f"Table {p}:{d}.{base} was not found in location US")
    if pid is not None:
        return (
            f"SELECT * FROM {quoted_table_ref(p, d, base)} "
            f"WHERE {_partition_condition(meta, pid, f'{p}:{d}.{t}')}"
        )
    if snap is not None:
        return f"SELECT * FROM {_snapshot_source(ctx, meta, snap, f'{p}:{d}.{t}')}"
    return f"SELECT * FROM {quoted_table_ref(p, d, base)}"


_orig_create_app = bq_server.create_app


def _create_app(context: Any) -> Any:
    app = _orig_create_app(context)
    global _context
    _context = context
    n_before = len(app.router.routes)
    app.include_router(router)
    ours = app.router.routes[n_before:]
    del app.router.routes[n_before:]
    app.router.routes[0:0] = ours  # first match wins in Starlette
    app.middleware("http")(_answers_shaped_like_bigquery)  # fix 13
    return app


bq_server.create_app = _create_app  # server.py imported create_app by name


# --- 11. dry runs size their queries -------------------------------------------
def _bytes_read(ctx: Any, project_id: str, bq_sql: str, depth: int = 0) -> int:
    """What a query reads: the logical bytes (fix 5) of every stored table it
    names, views expanded into what they read. BigQuery counts only the
    columns read; this counts whole tables, so it errs high, like a guard
    should. Call under ctx.engine.write_lock()."""
    try:
        tree = sqlglot.parse_one(bq_sql, read="bigquery")
    except sqlglot.errors.ParseError:
        return 0
    total = 0
    for ref in tree.find_all(sqlglot.exp.Table):
        p, d, t = ref.catalog or project_id, ref.db, ref.name
        meta = ctx.catalog.get_table(p, d, t) if d else None  # CTEs and unknowns: nothing
        if meta is None:
            continue
        if meta.table_type == "VIEW":
            if meta.view_query and depth < 16:
                total += _bytes_read(ctx, p, meta.view_query, depth + 1)
            continue
        try:
            total += _logical_size(ctx, p, d, t)[1]
        except duckdb.Error:
            pass
    return total


_stock_dry_run_response = jobs_routes._dry_run_response


async def _sized_dry_run_response(**kwargs: Any) -> dict:
    """Stock answers totalBytesProcessed "0" for every dry run."""
    body = await _stock_dry_run_response(**kwargs)
    if body.get("statementType") == "SELECT":
        ctx = kwargs["ctx"]
        async with ctx.engine.write_lock():
            size = _bytes_read(ctx, kwargs["project_id"], kwargs["bq_sql"])
        body["totalBytesProcessed"] = str(size)
    return body


# jobs.query and jobs.insert dry runs call it by its module name.
jobs_routes._dry_run_response = _sized_dry_run_response

_stock_handle_query_job = jobs_routes._handle_query_job


async def _capped_query_job(project_id: str, job_id: str, config: dict, **kwargs: Any) -> Any:
    """A query job whose estimate (as its dry run's) is above its
    maximumBytesBilled fails, unrun, as BigQuery's does (stock ignores it)."""
    query = config.get("query") or {}
    cap = query.get("maximumBytesBilled")
    if cap is not None and not kwargs.get("dry_run"):
        ctx = kwargs["ctx"]
        async with ctx.engine.write_lock():
            size = _bytes_read(ctx, project_id, query.get("query") or "")
        if size > int(cap):
            error = {
                "reason": "bytesBilledLimitExceeded",
                "message": f"Query exceeded limit for bytes billed: {cap}. {size} or higher required.",
            }
            return _done_job(project_id, job_id, "QUERY", config, {}, error, ctx.clock.now(), ctx)
    return await _stock_handle_query_job(project_id, job_id, config, **kwargs)


# insert_job() calls it by its module name.
jobs_routes._handle_query_job = _capped_query_job


# --- 12. ALTER TABLE keeps the catalog's schema ----------------------------------
# BigQuery: `ALTER TABLE t ADD COLUMN / DROP COLUMN / RENAME COLUMN / ALTER
# COLUMN` changes the table's schema, which tables.get and
# INFORMATION_SCHEMA.COLUMNS then show. Stock runs the statement in DuckDB only:
# the catalog keeps the old columns, so both kept listing a dropped column
# (extract jobs, reading DuckDB, already left it out). Here, after such a
# statement (jobs.query or a query job; dataset-qualified names only), the
# catalog's columns are read back from DuckDB in their new order, a column
# still there keeping its catalog field (mode, description, nested fields).
_ALTER_TARGET = re.compile(rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_PART}(?:\s*\.\s*{_PART}){{0,2}})", re.I)


def _altered_tables(bq_sql: str, project_id: str) -> list:
    """(project, dataset, table) of every dataset-qualified ALTER TABLE target."""
    out: list = []
    for m in _ALTER_TARGET.finditer(bq_sql):
        parts = [x for piece in re.findall(_PART, m.group(1)) for x in piece.strip("`").split(".")]
        if len(parts) == 2:
            parts.insert(0, project_id)
        if len(parts) == 3 and tuple(parts) not in out:
            out.append(tuple(parts))
    return out


def _sync_columns(ctx: Any, ref: tuple) -> None:
    """The catalog's schema of `ref`, as DuckDB now has it."""
    meta = ctx.catalog.get_table(*ref)
    if meta is None or meta.table_type != "TABLE":
        return
    try:
        live = ddl_sync._introspect_schema(*ref, ctx).fields
    except duckdb.Error:
        return  # the statement failed or dropped the table: nothing to follow
    kept = {f.name.lower(): f for f in meta.schema_.fields}
    fields = tuple(kept.get(f.name.lower(), f) for f in live)
    if fields == tuple(meta.schema_.fields):
        return  # SET OPTIONS and the like
    now = ctx.clock.now()
    ctx.catalog.update_table(meta.model_copy(update={
        "schema_": TableSchema(fields=fields),
        "last_modified_time": now,
        "etag": generate_etag(*ref, "TABLE", str(now)),
    }))


_execute_before_alter = jobs_routes.execute_query_job  # fix 10's


async def _execute_and_sync_columns(
    project_id: str, job_id: str, bq_sql: str, query_params: Any, ctx: Any, **kwargs: Any
) -> JobMeta:
    altered = _altered_tables(bq_sql, project_id)
    try:
        return await _execute_before_alter(project_id, job_id, bq_sql, query_params, ctx, **kwargs)
    finally:
        for ref in altered:
            _sync_columns(ctx, ref)


# jobs.insert (query jobs) and jobs.query call the name imported into the routes module.
jobs_routes.execute_query_job = _execute_and_sync_columns


# --- 13. answers shaped like BigQuery's ----------------------------------------
_JOB_PATHS = re.compile(r"^/bigquery/v2/projects/[^/]+/jobs(/[^/]+)?$")
_DATASET_LIST = re.compile(r"^/bigquery/v2/projects/[^/]+/datasets$")
_QUERY = re.compile(r"^/bigquery/v2/projects/[^/]+/queries$")
# Fields of a datasets.list item (DatasetList.datasets[]) stock copies from
# the full Dataset resource; BigQuery's list items do not have them.
_NOT_IN_DATASET_LIST_ITEMS = ("creationTime", "lastModifiedTime", "etag", "maxTimeTravelHours")


def _drop_job_total_rows(job: Any) -> None:
    """JobStatistics2 has no totalRows: a query's row count is in its results."""
    if isinstance(job, dict):
        (job.get("statistics") or {}).get("query", {}).pop("totalRows", None)


def _bigquery_shaped(path: str, body: dict) -> dict:
    """`body` without the fields stock adds that BigQuery does not send."""
    if _DATASET_LIST.match(path):
        body.pop("totalItems", None)  # DatasetList has no totalItems
        for item in body.get("datasets", []):
            for field in _NOT_IN_DATASET_LIST_ITEMS:
                item.pop(field, None)
    elif _QUERY.match(path):
        body.pop("ddlOperationPerformed", None)  # QueryResponse has no such field
    elif _JOB_PATHS.match(path):
        body.pop("totalItems", None)  # JobList has no totalItems
        for job in body.get("jobs", [body]):
            _drop_job_total_rows(job)
    return body


async def _answers_shaped_like_bigquery(request: Request, call_next: Any) -> Any:
    response = await call_next(request)
    path = request.url.path
    if not any(rx.match(path) for rx in (_DATASET_LIST, _QUERY, _JOB_PATHS)) \
            or "json" not in response.headers.get("content-type", ""):
        return response
    raw = b"".join([chunk async for chunk in response.body_iterator])
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        raw = json.dumps(_bigquery_shaped(path, body)).encode()
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(raw, status_code=response.status_code, headers=headers)


# --- 14. load jobs --------------------------------------------------------------
# BigQuery reads a load job's files from Cloud Storage, writes `t$ID` (one
# partition) without touching the others, and reports the rows it wrote.
# Here the files are downloaded from fake-gcs into a temporary folder (their
# names kept: DuckDB reads a `.gz` file decompressed), read into a staging
# table shaped like the destination, checked against the partition, and only
# then written: a failed load leaves the table as it was, as BigQuery's does.
_LOAD_STAGE = "_bqdrain_load_stage"


def _download(uri: str, folder: str) -> str:
    """GET {base}/storage/v1/b/BUCKET/o/NAME?alt=media into `folder`."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not name or "*" in uri:
        raise ValidationError(f"Invalid source URI {uri}: this emulator loads named objects only, no '*'")
    url = (
        f"{_gcs_base()}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
        f"{urllib.parse.quote(name, safe='')}?alt=media"
    )
    path = os.path.join(folder, f"{len(os.listdir(folder))}_{os.path.basename(name)}")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as out:
            out.write(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise _not_found(f"URI {uri}") from exc
        raise InternalError(f"GCS download of {uri} failed: HTTP {exc.code}") from exc
    return path


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read_sql(fmt: str, path: str, load: dict, columns: list) -> str:
    """The SELECT reading one file as the staging table's rows; BYTES in
    CSV and JSON are base64 text."""
    typed = "{" + ", ".join(
        f"{_sql_text(n)}: {_sql_text('VARCHAR' if t == 'BLOB' else t)}" for n, t in columns
    ) + "}"
    select = ", ".join(f'from_base64("{n}") AS "{n}"' if t == "BLOB" else f'"{n}"' for n, t in columns)
    if fmt == "CSV":
        delim = ex._resolve_field_delimiter(load.get("fieldDelimiter") or ",")
        skip = int(load.get("skipLeadingRows") or 0)
        # BigQuery writes NULL as an empty field and an empty string as "".
        return (
            f"SELECT {select} FROM read_csv({_sql_text(path)}, columns = {typed}, header = false, "
            f"skip = {skip}, delim = {_sql_text(delim)}, quote = '\"', escape = '\"', "
            f"allow_quoted_nulls = false, strict_mode = {str(not load.get('allowQuotedNewlines')).lower()})"
        )
    if fmt in ("NEWLINE_DELIMITED_JSON", "JSON"):
        return (
            f"SELECT {select} FROM read_json({_sql_text(path)}, columns = {typed}, "
            "format = 'newline_delimited')"
        )
    if fmt == "PARQUET":
        return f"SELECT * FROM read_parquet({_sql_text(path)})"
    if fmt == "AVRO":
        return f"SELECT * FROM read_avro({_sql_text(path)})"
    raise ValidationError(f"Unknown source format: {fmt}")


def _stage_files(cur: Any, fmt: str, paths: list, load: dict, target: str) -> int:
    """Rows of every file in the staging table (a temp table of `cur`)."""
    cur.execute(f"CREATE OR REPLACE TEMP TABLE {_LOAD_STAGE} AS SELECT * FROM {target} LIMIT 0")
    columns = [(r[0], r[1]) for r in cur.execute(f"DESCRIBE {_LOAD_STAGE}").fetchall()]
    by_position = fmt == "CSV"  # CSV columns are the schema's, in order; the others name theirs
    for path in paths:
        if fmt == "AVRO":
            # useAvroLogicalTypes: fastavro decodes decimals, dates, times and
            # timestamps (DuckDB's read_avro gives a decimal's bytes; stock's
            # decimal path failed on TIME), DuckDB casts them to the columns.
            with open(path, "rb") as f:
                records = list(fastavro.reader(f))
            if not records:
                continue
            cur.register("_bqdrain_avro", pa.Table.from_pylist(records))
            try:
                cur.execute(f"INSERT INTO {_LOAD_STAGE} BY NAME SELECT * FROM _bqdrain_avro")
            finally:
                cur.unregister("_bqdrain_avro")
            continue
        cur.execute(
            f"INSERT INTO {_LOAD_STAGE} {'' if by_position else 'BY NAME '}{_read_sql(fmt, path, load, columns)}"
        )
    return cur.execute(f"SELECT COUNT(*) FROM {_LOAD_STAGE}").fetchone()[0]


async def _load_job(project_id: str, job_id: str, config: dict, ctx: Any) -> JobMeta:
    now = ctx.clock.now()
    load = config.get("load") or {}
    dest = load.get("destinationTable") or {}
    p, d, t = dest.get("projectId") or project_id, dest.get("datasetId", ""), dest.get("tableId", "")
    m = _DECORATED.fullmatch(t)
    base, pid = (m.group("table"), m.group("partition")) if m else (t, None)
    fmt = (load.get("sourceFormat") or "CSV").upper()
    meta = ctx.catalog.get_table(p, d, base)
    if meta is None and (load.get("createDisposition") or "CREATE_IF_NEEDED") != "CREATE_NEVER":
        return await _stock_load_job(project_id, job_id, config, ctx)  # creating tables: stock
    statistics: dict = {}
    error: Optional[dict] = None
    try:
        if meta is None:
            raise _not_found(f"Table {p}:{d}.{base}")
        target = quoted_table_ref(p, d, base)
        condition = _partition_condition(meta, pid, f"{p}:{d}.{t}") if pid is not None else None
        with tempfile.TemporaryDirectory(prefix="bqdrain-load-") as folder:
            paths = [_download(uri, folder) for uri in load.get("sourceUris") or []]
            async with ctx.engine.write_lock():
                cur = ctx.engine.connection.cursor()
                try:
                    rows = _stage_files(cur, fmt, paths, load, target)
                    if condition is not None:
                        outside = cur.execute(
                            f"SELECT COUNT(*) FROM {_LOAD_STAGE} WHERE NOT {condition}"
                        ).fetchone()[0]
                        if outside:
                            raise ValidationError(
                                f"Some rows belong to different partitions rather than destination "
                                f"partition {pid} ({outside} of {rows})"
                            )
                    disposition = load.get("writeDisposition") or "WRITE_APPEND"
                    if disposition == "WRITE_TRUNCATE":
                        cur.execute(f"DELETE FROM {target}" + (f" WHERE {condition}" if condition else ""))
                    elif disposition == "WRITE_EMPTY" and cur.execute(
                        f"SELECT COUNT(*) FROM {target}" + (f" WHERE {condition}" if condition else "")
                    ).fetchone()[0]:
                        raise ValidationError(f"Already Exists: Table {p}:{d}.{t} is not empty")
                    cur.execute(f"INSERT INTO {target} SELECT * FROM {_LOAD_STAGE}")
                finally:
                    cur.execute(f"DROP TABLE IF EXISTS {_LOAD_STAGE}")
        statistics = {"load": {"outputRows": str(rows), "inputFiles": str(len(paths))}}
    except DomainError as exc:
        error = {"reason": exc.bq_reason, "message": exc.message}
    except duckdb.Error as exc:
        error = {"reason": "invalid", "message": f"Error while reading data, error message: {exc}"}
    return _done_job(project_id, job_id, "LOAD", config, statistics, error, now, ctx)


_stock_load_job = jobs_routes.execute_load_job
# The load wrapper in the routes module calls the name imported there.
jobs_routes.execute_load_job = _load_job


# --- main ----------------------------------------------------------------------
class _Server(bq_server.EmulatorServer):
    async def start(self) -> None:
        await super().start()
        print(json.dumps({"ready": True, "rest_url": self.rest_url, "grpc": self.grpc_endpoint}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9050, help="REST port (0 = any free port)")
    ap.add_argument("--grpc-port", type=int, default=0, help="gRPC port (0 = any free port)")
    ap.add_argument("--project", default="test-project")
    ap.add_argument("--data-dir", default=None, help="persistent DuckDB dir (default: in-memory)")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()

    # write_export resolves gs://B/P to <gcs_local_root>/B/P; with a fake GCS
    # this is only a staging area (files are deleted after upload).
    staging = os.environ.get("BQEMU_GCS_LOCAL_ROOT") or tempfile.mkdtemp(prefix="bqemu-gcs-")
    settings = Settings(
        rest_host=args.host,
        rest_port=args.port,
        grpc_host=args.host,
        grpc_port=args.grpc_port,
        default_project_id=args.project,
        gcs_local_root=Path(staging),
        log_level=args.log_level,
        **(
            {"persistence_mode": PersistenceMode.PERSISTENT, "data_dir": Path(args.data_dir)}
            if args.data_dir
            else {}
        ),
    )
    _Server(settings).run_forever()


if __name__ == "__main__":
    main()

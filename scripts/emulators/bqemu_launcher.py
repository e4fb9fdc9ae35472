#!/usr/bin/env python3
"""Start bqemulator 1.4.0 (PyPI) with a few BigQuery-parity fixes.

Fixes, all applied by monkeypatching before the server starts:
  1. DuckDB extensions (spatial, avro) load offline from the
     duckdb-extension-* wheels (no HOME trick, no network).
  2. Extract jobs (jobs.insert with configuration.extract) go through
     bqemulator's own EXPORT DATA writer ``write_export``: every
     destinationUri, one '*' -> 12-digit shard names, compression,
     printHeader, fieldDelimiter, statistics.extract.destinationUriFileCounts.
     Missing table -> DONE job with status.errorResult.reason = notFound.
  3. Every file ``write_export`` writes (extract jobs AND the EXPORT DATA
     statement) is uploaded to a fake-gcs-server at $STORAGE_EMULATOR_HOST
     (JSON media upload) before the job reports DONE, then deleted locally.
  4. tables.list pages (maxResults/pageToken/nextPageToken) and answers 404
     for a missing dataset; tables.insert answers 404 for a missing dataset
     (stock: 500). datasets.get already answers 404 in stock 1.4.0.
  5. tables.get reports live numRows (stock misses DML) and a numBytes
     estimate (stock: always "0").
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
     (stock takes ~5 s a thousand tables to parse those; 10,000 took minutes).
  Empty query parameters (pageToken=, maxResults=) are accepted as "unset".

Usage:
  STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 \
    python bqemu_launcher.py --port 9050 [--grpc-port 0] [--project test-project]
Prints one JSON line {"ready": true, "rest_url": ..., "grpc": ...} on stdout
when it accepts requests; stops on SIGTERM/SIGINT.
"""

import argparse
import json
import os
from pathlib import Path
import re
import sys
import tempfile
from typing import Any, Optional
import urllib.error
import urllib.parse
import urllib.request

import duckdb
import pyarrow as pa
from fastapi import APIRouter, Query, Request

import bqemulator.api.routes.jobs as jobs_routes
import bqemulator.api.routes.tables as tables_routes
from bqemulator.catalog.etag import generate_etag
from bqemulator.catalog.models import JobMeta
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
        if ctx.catalog.get_table(p, d, t) is None:
            raise _not_found(f"Table {p}:{d}.{t} was not found in location US")
        table = ctx.engine.fetch_arrow(f"SELECT * FROM {quoted_table_ref(p, d, t)}")
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
    return JobMeta(
        project_id=project_id,
        job_id=job_id,
        job_type="EXTRACT",
        state="DONE",
        configuration=config,
        statistics=statistics,
        error_result=error,
        creation_time=now,
        start_time=now,
        end_time=ctx.clock.now(),
        etag=generate_etag(project_id, job_id, str(now)),
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
            ref = quoted_table_ref(project_id, dataset_id, table_id)
            async with ctx.engine.write_lock():
                rows = ctx.engine.fetch_arrow(f"SELECT COUNT(*) AS n FROM {ref}").column(0)[0].as_py()
                sample = ctx.engine.fetch_arrow(f"SELECT * FROM {ref} LIMIT 1000")
            per_row = sample.nbytes / sample.num_rows if sample.num_rows else 0
            body["numRows"] = str(rows)
            body["numBytes"] = body["numActiveLogicalBytes"] = body["numTotalLogicalBytes"] = str(int(rows * per_row))
        except duckdb.Error:
            pass
    return body


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
    return await jobs_routes.insert_job(project_id, request, ctx, caller)


# --- 7. INFORMATION_SCHEMA: TABLE_STORAGE, and TABLES at scale -----------------
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
    return app


bq_server.create_app = _create_app  # server.py imported create_app by name


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

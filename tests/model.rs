//! A model-based property test of what a run leaves in the destination, on
//! the embedded backends (SQLite warehouse, SQLite queue, file store).
//!
//! The rule it checks after every run:
//!
//! > After a run, for every table that still exists and that the run
//! > covered in full (no partition window): the data files under
//! > `DATASET/TABLE/` are exactly one committed export per current unit (the
//! > whole table, or one per partition when the run splits it with
//! > `--partitions`), all written with the run's options (format,
//! > compression, header, delimiter), and together they hold exactly the
//! > table's rows as of the run's snapshot (on the embedded warehouse: its
//! > state when the run's exports ran; the model changes the source only
//! > between runs). A run with a window keeps this for the partitions in its
//! > window. A dropped table keeps its last export. A partition that no
//! > longer exists in a live table is retired by the next run that covers
//! > the whole table. A committed export = an export folder `…/run=RUN/`
//! > with its `_MANIFEST.json` naming exactly the files in it.
//!
//! and that every run's state (`RunState::load`, what `bqdrain status`
//! prints) agrees with the files: a unit reported `exported` has its
//! committed export in place, exactly the files its record names, unless a
//! newer run covering the unit replaced it; a unit reported `superseded` has
//! no files left; no unit is left pending or dead-lettered.
//!
//! A case is a small dataset (a table `events` partitioned by day, and one
//! to three plain tables of tens of rows) and a random sequence of source
//! operations (insert, update, delete, move rows between partitions, empty
//! a partition, drop and create a table, add and drop a column, create and
//! drop a view) interleaved with runs: plain, `--partitions` with or without
//! `min_rows` and a window, `--only-changed`, `--views`, any format,
//! compression, header and delimiter; run by the in-process producer and
//! drain as the binaries wire them, and sometimes resumed after a partial
//! drain, with a worker killed mid-export (the drain aborted while a slow
//! export has written some shards) or while it settles a committed unit
//! (the drain aborted while the store holds one of its deletes), with
//! crash leftovers in the run's export folder, with one unit delivered
//! twice at once, or as two runs overlapping (both produced, then drained
//! together).
//!
//! Running it:
//! - CI: `cargo test --test model` runs `BQDRAIN_MODEL_CASES` cases (64 by
//!   default) with a random seed, and shrinks a failure for at most
//!   `BQDRAIN_MODEL_SHRINK_SECS` (20 by default).
//! - Long: `BQDRAIN_MODEL_CASES=5000 cargo test --release --test model --
//!   --nocapture`: above 100 cases, `BQDRAIN_MODEL_THREADS` (4 by default)
//!   searches run at once, thread i with seed SEED + i, since a case mostly
//!   waits on the queue; shrinking gets 300 s unless told otherwise.
//! - Both write the seed and `model: N cases in T s (R cases/s)` to stderr,
//!   captured or not; on a failure, at which case it was found, how long
//!   that took, and the shrinking that followed.
//! - Replay: a failure prints its seed and its minimal case as JSON.
//!   `BQDRAIN_MODEL_SEED=SEED BQDRAIN_MODEL_THREADS=1` draws the same cases
//!   again (with the same `BQDRAIN_MODEL_OPS`), and
//!   `BQDRAIN_MODEL_REPLAY='JSON' cargo test --test model -- --nocapture`
//!   runs just that case. Cases with a kill, a duplicate or an overlap race
//!   by design: they may need a few replays, and while shrinking such a
//!   case counts as passing only when it passes five times in a row.
//! - Focus: `BQDRAIN_MODEL_OPS=insert,update,split,...` draws only the named
//!   kinds of operation and run (see [`Allow::NAMES`]; `always_split` makes
//!   every run split, `run` draws more runs, `long` longer sequences);
//!   every check still runs on every case.
//! - `BQDRAIN_MODEL_TRACE=1` prints each step with its time.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bqdrain::adapters::backends;
use bqdrain::adapters::local::dataset::{self, Fault};
use bqdrain::adapters::local::partitions;
use bqdrain::adapters::local::queue::peek;
use bqdrain::adapters::local::store_fault;
use bqdrain::contract::message::WorkMessage;
use bqdrain::contract::options::{Compression, ExportOptions, Format};
use bqdrain::engine::drain::{drain, Disposition, DrainConfig, ExitReason, Handler};
use bqdrain::engine::export::ExportHandler;
use bqdrain::engine::layout::{self, ExportPath, RunManifest, TableManifest};
use bqdrain::engine::producer::{produce, RunId, RunPlan};
use bqdrain::engine::retry::RetryPolicy;
use bqdrain::engine::runs::{RunState, UnitState};
use bqdrain::engine::selection::{PartitionPlan, PartitionWindow};
use bqdrain::engine::shutdown;
use bqdrain::engine::task::TaskIdentity;
use bqdrain::ports::queue::ReceiveSettings;
use bqdrain::ports::store::ObjectStore;
use bqdrain::ports::warehouse::Partitioning;
use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// The dataset: the warehouse file's stem.
const DATASET: &str = "warehouse";
const EVENTS: &str = "events";
/// Small shards, so that exports have several files.
const SHARD_BYTES: u64 = 300;
/// Texts that CSV has to quote with one delimiter or another.
const NAMES: [&str; 9] = [
    "plain",
    "a,b",
    "x|y",
    "say \"hi\"",
    "tab\there",
    "semi;colon",
    "two\nlines",
    "ünïcödé",
    " spaced ",
];

// ---------------------------------------------------------------------------
// Cases

/// A day of the `events` table, relative to the day the case starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Day {
    /// This many days ago (0 = today).
    Ago(u8),
    /// No day: partition `__NULL__`.
    Null,
    /// Not a date: partition `__UNPARTITIONED__`.
    Soon,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Table {
    Events,
    /// The plain table `t_{k % n + 1}` of the case's `n`.
    Plain(u8),
}

/// The rows whose `id % modulo == rest % modulo`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Rows {
    modulo: u8,
    rest: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Delimiter {
    Comma,
    Pipe,
    Tab,
    Semicolon,
}

/// Export options; every field's default is BigQuery's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Opts {
    json: bool,
    gzip: bool,
    no_header: bool,
    delimiter: Delimiter,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Window {
    LastDays(u8),
    /// Since this many days ago.
    Since(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum How {
    /// Produce, then drain.
    Plain,
    /// Produce, handle `first` messages (maybe none), produce again with
    /// `--resume`, then drain.
    Resume { first: u8 },
    /// Produce, make the largest unit's table slow, abort the drain once
    /// its export has written a shard, then drain again.
    Killed,
    /// Produce, stall the store's deletes after `after` of them pass,
    /// abort the drain once a delete is held (a unit committed and
    /// settling), then drain again.
    KilledSettling { after: u8 },
    /// Produce, leave a crashed attempt's files in one unit's export
    /// folder of the run (no record), then drain.
    Crashed { unit: u8 },
    /// Produce, publish one unit's message again, and drain with enough
    /// concurrency to handle both copies at once.
    Duplicate { unit: u8 },
    /// Produce run A, produce run B with `options`, drain both together.
    Overlap { options: Opts },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Run {
    how: How,
    split: bool,
    min_rows: u8,
    window: Option<Window>,
    only_changed: bool,
    views: bool,
    options: Opts,
    concurrency: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Op {
    Run(Run),
    Insert {
        table: Table,
        count: u8,
        day: Day,
    },
    Update {
        table: Table,
        rows: Rows,
    },
    Delete {
        table: Table,
        rows: Rows,
    },
    /// `UPDATE events SET day = to`: rows move between partitions.
    Move {
        rows: Rows,
        to: Day,
    },
    /// Deletes every row of one partition of `events`.
    EmptyPartition {
        day: Day,
    },
    DropTable {
        table: Table,
    },
    /// Drops the table if it exists and creates it with `rows` rows.
    CreateTable {
        table: Table,
        rows: u8,
    },
    AddColumn {
        table: Table,
    },
    DropColumn {
        table: Table,
    },
    /// Creates (or replaces) view `v_{view % 2 + 1}` over `table`.
    CreateView {
        view: u8,
        table: Table,
    },
    DropView {
        view: u8,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Case {
    /// 1 to 3 plain tables `t_1..`.
    plain_tables: u8,
    /// Rows of each plain table (the first `plain_tables` are used).
    plain_rows: Vec<u8>,
    /// The day of each row of `events`.
    events: Vec<Day>,
    ops: Vec<Op>,
}

/// Which kinds of operation and run a case may draw (`BQDRAIN_MODEL_OPS`).
struct Allow(HashSet<String>);

impl Allow {
    const NAMES: [&'static str; 24] = [
        // source operations
        "insert",
        "update",
        "delete",
        "move",
        "empty",
        "drop",
        "create",
        "add_column",
        "drop_column",
        "view",
        // run flags
        "split",
        // every run splits (with `split` or not)
        "always_split",
        "min_rows",
        "window",
        "only_changed",
        "options",
        "views",
        // how a run goes
        "resume",
        "kill",
        "crash",
        "duplicate",
        "overlap",
        // weights: more runs, longer sequences
        "run",
        "long",
    ];

    fn from_env() -> Allow {
        let names: HashSet<String> = match std::env::var("BQDRAIN_MODEL_OPS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => Allow::NAMES
                .iter()
                .filter(|n| !matches!(**n, "long" | "always_split"))
                .map(|n| n.to_string())
                .collect(),
        };
        for name in &names {
            assert!(
                Allow::NAMES.contains(&name.as_str()),
                "BQDRAIN_MODEL_OPS: unknown kind {name:?}; known: {}",
                Allow::NAMES.join(",")
            );
        }
        Allow(names)
    }

    fn on(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    fn flag(&self, name: &str) -> BoxedStrategy<bool> {
        if self.on(name) {
            any::<bool>().boxed()
        } else {
            Just(false).boxed()
        }
    }
}

fn day() -> impl Strategy<Value = Day> {
    prop_oneof![8 => (0u8..5).prop_map(Day::Ago), 1 => Just(Day::Null), 1 => Just(Day::Soon)]
}

fn table() -> impl Strategy<Value = Table> {
    prop_oneof![Just(Table::Events), (0u8..3).prop_map(Table::Plain)]
}

fn rows() -> impl Strategy<Value = Rows> {
    (1u8..=4, 0u8..4).prop_map(|(modulo, rest)| Rows { modulo, rest })
}

fn opts(allow: &Allow) -> BoxedStrategy<Opts> {
    if !allow.on("options") {
        return Just(Opts::default()).boxed();
    }
    let delimiter = prop_oneof![
        Just(Delimiter::Comma),
        Just(Delimiter::Pipe),
        Just(Delimiter::Tab),
        Just(Delimiter::Semicolon)
    ];
    (any::<bool>(), any::<bool>(), any::<bool>(), delimiter)
        .prop_map(|(json, gzip, no_header, delimiter)| Opts {
            json,
            gzip,
            no_header,
            delimiter,
        })
        .boxed()
}

fn run(allow: &Allow) -> BoxedStrategy<Run> {
    let mut hows: Vec<(u32, BoxedStrategy<How>)> = vec![(8, Just(How::Plain).boxed())];
    if allow.on("resume") {
        hows.push((2, (0u8..4).prop_map(|first| How::Resume { first }).boxed()));
    }
    if allow.on("kill") {
        hows.push((1, Just(How::Killed).boxed()));
        hows.push((
            1,
            (0u8..3)
                .prop_map(|after| How::KilledSettling { after })
                .boxed(),
        ));
    }
    if allow.on("crash") {
        hows.push((
            1,
            any::<u8>().prop_map(|unit| How::Crashed { unit }).boxed(),
        ));
    }
    if allow.on("duplicate") {
        hows.push((
            2,
            any::<u8>().prop_map(|unit| How::Duplicate { unit }).boxed(),
        ));
    }
    if allow.on("overlap") {
        hows.push((
            2,
            opts(allow)
                .prop_map(|options| How::Overlap { options })
                .boxed(),
        ));
    }
    let min_rows = if allow.on("min_rows") {
        prop_oneof![3 => Just(0u8), 1 => Just(10u8), 1 => Just(20u8), 1 => Just(40u8)].boxed()
    } else {
        Just(0u8).boxed()
    };
    let window = if allow.on("window") {
        prop_oneof![
            3 => Just(None),
            1 => (1u8..=4).prop_map(|n| Some(Window::LastDays(n))),
            1 => (0u8..5).prop_map(|k| Some(Window::Since(k))),
        ]
        .boxed()
    } else {
        Just(None).boxed()
    };
    let split = if allow.on("always_split") {
        Just(true).boxed()
    } else {
        allow.flag("split")
    };
    (
        Union::new_weighted(hows),
        split,
        min_rows,
        window,
        allow.flag("only_changed"),
        allow.flag("views"),
        opts(allow),
        1u8..=4,
    )
        .prop_map(
            |(how, split, min_rows, window, only_changed, views, options, concurrency)| Run {
                how,
                split,
                // Both only mean something for partition units.
                min_rows: if split { min_rows } else { 0 },
                window: window.filter(|_| split),
                // Two overlapping --only-changed runs would each decide
                // what is unchanged before the other's exports: no rule
                // says which of them is to stand.
                only_changed: only_changed && !matches!(how, How::Overlap { .. }),
                views,
                options,
                concurrency,
            },
        )
        .boxed()
}

fn op(allow: &Allow) -> BoxedStrategy<Op> {
    let run_weight = if allow.on("run") { 6 } else { 4 };
    let mut ops: Vec<(u32, BoxedStrategy<Op>)> =
        vec![(run_weight, run(allow).prop_map(Op::Run).boxed())];
    let mut add = |name: &str, weight: u32, s: BoxedStrategy<Op>| {
        if allow.on(name) {
            ops.push((weight, s));
        }
    };
    add(
        "insert",
        2,
        (table(), 1u8..6, day())
            .prop_map(|(table, count, day)| Op::Insert { table, count, day })
            .boxed(),
    );
    add(
        "update",
        2,
        (table(), rows())
            .prop_map(|(table, rows)| Op::Update { table, rows })
            .boxed(),
    );
    add(
        "delete",
        1,
        (table(), rows())
            .prop_map(|(table, rows)| Op::Delete { table, rows })
            .boxed(),
    );
    add(
        "move",
        2,
        (rows(), day())
            .prop_map(|(rows, to)| Op::Move { rows, to })
            .boxed(),
    );
    add(
        "empty",
        1,
        day().prop_map(|day| Op::EmptyPartition { day }).boxed(),
    );
    add(
        "drop",
        1,
        table().prop_map(|table| Op::DropTable { table }).boxed(),
    );
    add(
        "create",
        1,
        (table(), 0u8..30)
            .prop_map(|(table, rows)| Op::CreateTable { table, rows })
            .boxed(),
    );
    add(
        "add_column",
        1,
        table().prop_map(|table| Op::AddColumn { table }).boxed(),
    );
    add(
        "drop_column",
        1,
        table().prop_map(|table| Op::DropColumn { table }).boxed(),
    );
    add(
        "view",
        1,
        (0u8..2, table())
            .prop_map(|(view, table)| Op::CreateView { view, table })
            .boxed(),
    );
    add(
        "view",
        1,
        (0u8..2).prop_map(|view| Op::DropView { view }).boxed(),
    );
    Union::new_weighted(ops).boxed()
}

fn case(allow: &Allow) -> impl Strategy<Value = Case> {
    let steps = if allow.on("long") { 24 } else { 10 };
    (
        1u8..=3,
        prop::collection::vec(0u8..=25, 3),
        prop::collection::vec(day(), 0..=30),
        prop::collection::vec(op(allow), 1..=steps),
    )
        .prop_map(|(plain_tables, plain_rows, events, ops)| Case {
            plain_tables,
            plain_rows,
            events,
            ops,
        })
}

impl Case {
    /// Whether an outcome may depend on timing: a kill, a duplicate or an
    /// overlap, whose exports race.
    fn racy(&self) -> bool {
        self.ops.iter().any(|op| {
            matches!(
                op,
                Op::Run(Run {
                    how: How::Killed
                        | How::KilledSettling { .. }
                        | How::Duplicate { .. }
                        | How::Overlap { .. },
                    ..
                })
            )
        })
    }
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            json: false,
            gzip: false,
            no_header: false,
            delimiter: Delimiter::Comma,
        }
    }
}

impl Opts {
    fn export(self) -> ExportOptions {
        ExportOptions {
            format: if self.json { Format::Json } else { Format::Csv },
            compression: if self.gzip {
                Compression::Gzip
            } else {
                Compression::None
            },
            header: !self.no_header,
            field_delimiter: match self.delimiter {
                Delimiter::Comma => ",",
                Delimiter::Pipe => "|",
                Delimiter::Tab => "\t",
                Delimiter::Semicolon => ";",
            }
            .to_string(),
            max_bytes_billed: None,
        }
    }
}

/// How the files of an export look: header and delimiter count for CSV only.
fn shape(o: &ExportOptions) -> String {
    match o.format {
        Format::Csv => format!(
            "csv/{}/{}/delimiter {:?}",
            o.compression.name(),
            if o.header { "header" } else { "no header" },
            o.field_delimiter
        ),
        other => format!("{}/{}", other.name(), o.compression.name()),
    }
}

// ---------------------------------------------------------------------------
// Rows

/// A row as `(column, value)` sorted by column; `None` is NULL (CSV's
/// empty field: the model writes no empty texts).
type Row = Vec<(String, Option<String>)>;

fn show_row(row: &Row) -> String {
    let fields: Vec<String> = row
        .iter()
        .map(|(c, v)| match v {
            Some(v) => format!("{c}={v:?}"),
            None => format!("{c}=NULL"),
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The partition id of a `day` value, as BigQuery derives it.
const PARTITION_ID: &str = "(CASE WHEN \"day\" IS NULL THEN '__NULL__' \
     WHEN julianday(\"day\") IS NULL THEN '__UNPARTITIONED__' \
     ELSE strftime('%Y%m%d', \"day\") END)";

/// The columns and rows of a table or view, or of one partition of it.
fn source_rows(
    conn: &Connection,
    table: &str,
    partition: Option<&str>,
) -> rusqlite::Result<(Vec<String>, Vec<Row>)> {
    let mut sql = format!("SELECT * FROM {}", quote(table));
    if partition.is_some() {
        sql.push_str(&format!(" WHERE {PARTITION_ID} = ?1"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut out = Vec::new();
    let mut rows = stmt.query(rusqlite::params_from_iter(partition))?;
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let v = match r.get_ref(i)? {
                ValueRef::Null => None,
                ValueRef::Integer(v) => Some(v.to_string()),
                ValueRef::Real(v) => Some(v.to_string()),
                ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Some(format!("{b:?}")),
            };
            row.push((c.clone(), v));
        }
        row.sort();
        out.push(row);
    }
    Ok((columns, out))
}

/// Records of a CSV text: fields and whether each was quoted.
fn parse_csv(text: &str, delimiter: char) -> Result<Vec<Vec<(String, bool)>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut chars = text.chars().peekable();
    if chars.peek().is_none() {
        return Ok(records);
    }
    loop {
        // One field.
        let (field, quoted) = if chars.peek() == Some(&'"') {
            chars.next();
            let mut field = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("unterminated quoted field {field:?}")),
                }
            }
            (field, true)
        } else {
            let mut field = String::new();
            while let Some(&c) = chars.peek() {
                if c == delimiter || c == '\n' {
                    break;
                }
                field.push(c);
                chars.next();
            }
            (field, false)
        };
        record.push((field, quoted));
        match chars.next() {
            Some(c) if c == delimiter => {}
            Some('\n') => {
                records.push(std::mem::take(&mut record));
                if chars.peek().is_none() {
                    return Ok(records);
                }
            }
            None => {
                records.push(record);
                return Ok(records);
            }
            Some(c) => return Err(format!("{c:?} after a quoted field")),
        }
    }
}

fn json_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Multiset difference, for messages: what `a` has more of than `b`.
fn minus(a: &[Row], b: &[Row]) -> Vec<Row> {
    let mut counts: BTreeMap<&Row, i64> = BTreeMap::new();
    for r in b {
        *counts.entry(r).or_default() += 1;
    }
    let mut out = Vec::new();
    for r in a {
        let n = counts.entry(r).or_default();
        if *n > 0 {
            *n -= 1;
        } else {
            out.push(r.clone());
        }
    }
    out
}

fn some_rows(rows: &[Row]) -> String {
    let shown: Vec<String> = rows.iter().take(4).map(show_row).collect();
    let more = if rows.len() > 4 {
        format!(" and {} more", rows.len() - 4)
    } else {
        String::new()
    };
    format!("[{}]{more}", shown.join(", "))
}

// ---------------------------------------------------------------------------
// The world: a case's dataset, queue and destination

/// What a run covered, to tell which of its exports a newer run replaces.
struct RunRecord {
    id: String,
    created_at: DateTime<Utc>,
    /// Tables (and views) the run covered in full.
    full: HashSet<String>,
    /// Partitions the run covered within its window, by table.
    parts: HashMap<String, HashSet<String>>,
}

/// One table (or view) as a run covers it.
struct Coverage {
    name: String,
    /// Its current units: `None` for the whole table, else partition ids.
    units: Vec<Option<String>>,
    split: bool,
    /// Covered in full: not split within a window.
    full: bool,
}

struct World {
    _dir: tempfile::TempDir,
    warehouse: PathBuf,
    exports: PathBuf,
    queue_db: PathBuf,
    store: Arc<dyn ObjectStore>,
    plain_tables: u8,
    today: NaiveDate,
    next_id: i64,
    next_column: u32,
    next_run: u32,
    runs: Vec<RunRecord>,
    /// The folders of dropped tables and views as they were when dropped.
    dropped: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// What happened so far, for failure messages.
    log: Vec<String>,
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, root, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("not gzip: {e}"))?;
    Ok(out)
}

fn sql_err(e: impl std::fmt::Display) -> String {
    format!("[harness] sqlite: {e}")
}

impl World {
    async fn new(case: &Case) -> Result<World, String> {
        // In memory where there is a tmpfs: a case writes and syncs small
        // files all the time.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("bqdrain-model-")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .map_err(|e| e.to_string())?;
        let warehouse = dir.path().join(format!("{DATASET}.db"));
        let exports = dir.path().join("exports");
        let queue_db = dir.path().join("queue.db");
        let store = backends::open_store(&format!("file://{}", exports.display()), "dest")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let mut world = World {
            _dir: dir,
            warehouse,
            exports,
            queue_db,
            store,
            plain_tables: case.plain_tables.clamp(1, 3),
            today: Utc::now().date_naive(),
            next_id: 1,
            next_column: 1,
            next_run: 1,
            runs: Vec::new(),
            dropped: BTreeMap::new(),
            log: Vec::new(),
        };
        for k in 0..world.plain_tables {
            let rows = case.plain_rows.get(usize::from(k)).copied().unwrap_or(0);
            world.create_plain(&format!("t_{}", k + 1), rows)?;
        }
        world.create_events(&case.events)?;
        world.log.push(format!(
            "setup: {} plain table(s) with {:?} rows, events with {} rows",
            world.plain_tables,
            &case.plain_rows[..usize::from(world.plain_tables).min(case.plain_rows.len())],
            case.events.len()
        ));
        Ok(world)
    }

    fn conn(&self) -> Result<Connection, String> {
        let conn = Connection::open(&self.warehouse).map_err(sql_err)?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(sql_err)?;
        // The model's own writes need no durability.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
            .map_err(sql_err)?;
        Ok(conn)
    }

    fn source_uri(&self) -> String {
        format!(
            "sqlite://{}?shard_bytes={SHARD_BYTES}",
            self.warehouse.display()
        )
    }

    fn queue_uri(&self, name: &str) -> String {
        format!("queue://{}#{name}", self.queue_db.display())
    }

    fn subscription_uri(&self) -> String {
        format!(
            "queue://{}?dead_letter=dead&ack_deadline=1#work",
            self.queue_db.display()
        )
    }

    fn day_value(&self, day: Day) -> Option<String> {
        match day {
            Day::Ago(k) => Some(
                (self.today - chrono::Days::new(u64::from(k % 5)))
                    .format("%Y-%m-%d")
                    .to_string(),
            ),
            Day::Null => None,
            Day::Soon => Some("soon".to_string()),
        }
    }

    fn table_name(&self, table: Table) -> String {
        match table {
            Table::Events => EVENTS.to_string(),
            Table::Plain(k) => format!("t_{}", k % self.plain_tables + 1),
        }
    }

    /// Tables and views of the source, with whether each is a view.
    fn objects(&self, conn: &Connection) -> Result<Vec<(String, bool)>, String> {
        let mut stmt = conn
            .prepare(
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')
                   AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                   AND name NOT LIKE '\\_bqdrain\\_%' ESCAPE '\\' ORDER BY name",
            )
            .map_err(sql_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)? == "view"))
            })
            .map_err(sql_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_err)
    }

    fn exists(&self, conn: &Connection, name: &str) -> Result<bool, String> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )
        .map_err(sql_err)
    }

    /// Columns of a table: name and declared type.
    fn columns(&self, conn: &Connection, table: &str) -> Result<Vec<(String, String)>, String> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({})", quote(table)))
            .map_err(sql_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(sql_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_err)
    }

    /// Inserts one row per day with fresh ids, filling every column.
    fn insert_rows(&mut self, conn: &Connection, table: &str, days: &[Day]) -> Result<(), String> {
        let columns = self.columns(conn, table)?;
        let names: Vec<String> = columns.iter().map(|(c, _)| quote(c)).collect();
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote(table),
            names.join(", "),
            marks.join(", ")
        );
        conn.execute_batch("BEGIN").map_err(sql_err)?;
        for day in days {
            let id = self.next_id;
            self.next_id += 1;
            let values: Vec<rusqlite::types::Value> = columns
                .iter()
                .map(|(name, kind)| {
                    use rusqlite::types::Value;
                    match name.as_str() {
                        "id" => Value::Integer(id),
                        "day" => self.day_value(*day).map_or(Value::Null, Value::Text),
                        "name" => Value::Text(NAMES[id as usize % NAMES.len()].to_string()),
                        _ if kind.contains("INT") => {
                            if id % 6 == 0 {
                                Value::Null
                            } else {
                                Value::Integer(id * 7 % 50)
                            }
                        }
                        _ => Value::Text(format!("x{id}")),
                    }
                })
                .collect();
            conn.execute(&sql, rusqlite::params_from_iter(values))
                .map_err(sql_err)?;
        }
        conn.execute_batch("COMMIT").map_err(sql_err)?;
        Ok(())
    }

    fn create_plain(&mut self, name: &str, rows: u8) -> Result<(), String> {
        let conn = self.conn()?;
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id INTEGER, name TEXT, age INTEGER);",
            t = quote(name)
        ))
        .map_err(sql_err)?;
        let days = vec![Day::Ago(0); usize::from(rows)];
        self.insert_rows(&conn, name, &days)
    }

    fn create_events(&mut self, days: &[Day]) -> Result<(), String> {
        let conn = self.conn()?;
        conn.execute_batch(
            "DROP TABLE IF EXISTS events;
             CREATE TABLE events (id INTEGER, day DATE, amount INTEGER);",
        )
        .map_err(sql_err)?;
        self.insert_rows(&conn, EVENTS, days)?;
        drop(conn);
        partitions::partition_by(&self.warehouse, EVENTS, "day", Partitioning::Day)
            .map_err(|e| format!("[harness] partition_by: {e:#}"))
    }

    /// Every file under a table's folder, with its bytes.
    fn folder_contents(&self, table: &str) -> BTreeMap<String, Vec<u8>> {
        let mut keys = Vec::new();
        walk(
            &self.exports.join(DATASET).join(table),
            &self.exports,
            &mut keys,
        );
        keys.into_iter()
            .map(|k| {
                let bytes = std::fs::read(self.exports.join(&k)).unwrap_or_default();
                (k, bytes)
            })
            .collect()
    }

    fn mark_dropped(&mut self, name: &str) {
        let contents = self.folder_contents(name);
        self.dropped.insert(name.to_string(), contents);
    }

    // -----------------------------------------------------------------------
    // Source operations

    async fn apply(&mut self, op: &Op) -> Result<(), String> {
        let conn = self.conn()?;
        let note = match *op {
            Op::Run(run) => {
                drop(conn);
                return self.run(&run).await;
            }
            Op::Insert { table, count, day } => {
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("insert: {name} does not exist, nothing done")
                } else {
                    let first = self.next_id;
                    self.insert_rows(&conn, &name, &vec![day; usize::from(count)])?;
                    format!(
                        "insert {count} row(s) into {name} (ids {first}..{}, day {:?})",
                        self.next_id - 1,
                        self.day_value(day)
                    )
                }
            }
            Op::Update { table, rows } => {
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("update: {name} does not exist, nothing done")
                } else {
                    let sets: Vec<String> = self
                        .columns(&conn, &name)?
                        .into_iter()
                        .filter(|(c, _)| c != "id" && c != "day")
                        .map(|(c, kind)| {
                            if kind.contains("INT") {
                                format!("{q} = coalesce({q}, 0) + 1", q = quote(&c))
                            } else {
                                format!("{q} = coalesce({q}, 'n') || '+'", q = quote(&c))
                            }
                        })
                        .collect();
                    if sets.is_empty() {
                        format!("update: {name} has no column to change")
                    } else {
                        let n = conn
                            .execute(
                                &format!(
                                    "UPDATE {} SET {} WHERE id % ?1 = ?2",
                                    quote(&name),
                                    sets.join(", ")
                                ),
                                rusqlite::params![
                                    rows.modulo.max(1),
                                    rows.rest % rows.modulo.max(1)
                                ],
                            )
                            .map_err(sql_err)?;
                        format!(
                            "update {n} row(s) of {name} (id % {} = {})",
                            rows.modulo,
                            rows.rest % rows.modulo.max(1)
                        )
                    }
                }
            }
            Op::Delete { table, rows } => {
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("delete: {name} does not exist, nothing done")
                } else {
                    let n = conn
                        .execute(
                            &format!("DELETE FROM {} WHERE id % ?1 = ?2", quote(&name)),
                            rusqlite::params![rows.modulo.max(1), rows.rest % rows.modulo.max(1)],
                        )
                        .map_err(sql_err)?;
                    format!(
                        "delete {n} row(s) of {name} (id % {} = {})",
                        rows.modulo,
                        rows.rest % rows.modulo.max(1)
                    )
                }
            }
            Op::Move { rows, to } => {
                if !self.exists(&conn, EVENTS)? {
                    "move: events does not exist, nothing done".to_string()
                } else {
                    let n = conn
                        .execute(
                            "UPDATE events SET day = ?3 WHERE id % ?1 = ?2",
                            rusqlite::params![
                                rows.modulo.max(1),
                                rows.rest % rows.modulo.max(1),
                                self.day_value(to)
                            ],
                        )
                        .map_err(sql_err)?;
                    format!(
                        "move {n} row(s) of events (id % {} = {}) to day {:?}",
                        rows.modulo,
                        rows.rest % rows.modulo.max(1),
                        self.day_value(to)
                    )
                }
            }
            Op::EmptyPartition { day } => {
                if !self.exists(&conn, EVENTS)? {
                    "empty: events does not exist, nothing done".to_string()
                } else {
                    let id: String = conn
                        .query_row(
                            &format!("SELECT {} FROM (SELECT ?1 AS day)", PARTITION_ID),
                            [self.day_value(day)],
                            |r| r.get(0),
                        )
                        .map_err(sql_err)?;
                    let n = conn
                        .execute(
                            &format!("DELETE FROM events WHERE {PARTITION_ID} = ?1"),
                            [&id],
                        )
                        .map_err(sql_err)?;
                    format!("empty partition events${id} ({n} row(s) deleted)")
                }
            }
            Op::DropTable { table } => {
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("drop: {name} does not exist, nothing done")
                } else {
                    // Views over it go first: a broken view fails every run.
                    let mut dropped_views = Vec::new();
                    for v in ["v_1", "v_2"] {
                        let over: Option<String> = conn
                            .query_row(
                                "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?1",
                                [v],
                                |r| r.get(0),
                            )
                            .ok();
                        if over.is_some_and(|sql| sql.contains(&format!("FROM {}", quote(&name)))) {
                            conn.execute_batch(&format!("DROP VIEW {}", quote(v)))
                                .map_err(sql_err)?;
                            self.mark_dropped(v);
                            dropped_views.push(v);
                        }
                    }
                    conn.execute_batch(&format!("DROP TABLE {}", quote(&name)))
                        .map_err(sql_err)?;
                    self.mark_dropped(&name);
                    format!("drop table {name} (and views {dropped_views:?})")
                }
            }
            Op::CreateTable { table, rows } => {
                let name = self.table_name(table);
                drop(conn);
                match table {
                    Table::Events => {
                        let days: Vec<Day> = (0..rows)
                            .map(|i| match i % 9 {
                                7 => Day::Null,
                                8 => Day::Soon,
                                k => Day::Ago(k % 5),
                            })
                            .collect();
                        self.create_events(&days)?;
                    }
                    Table::Plain(_) => self.create_plain(&name, rows)?,
                }
                self.dropped.remove(&name);
                format!("create table {name} anew with {rows} row(s)")
            }
            Op::AddColumn { table } => {
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("add column: {name} does not exist, nothing done")
                } else {
                    let n = self.next_column;
                    self.next_column += 1;
                    conn.execute_batch(&format!(
                        "ALTER TABLE {} ADD COLUMN c{n} TEXT DEFAULT 'v{n}'",
                        quote(&name)
                    ))
                    .map_err(sql_err)?;
                    format!("add column c{n} (default 'v{n}') to {name}")
                }
            }
            Op::DropColumn { table } => {
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("drop column: {name} does not exist, nothing done")
                } else {
                    let last = self
                        .columns(&conn, &name)?
                        .into_iter()
                        .map(|(c, _)| c)
                        .rfind(|c| c != "id" && c != "day");
                    match last {
                        None => format!("drop column: {name} has none to drop"),
                        Some(column) => {
                            conn.execute_batch(&format!(
                                "ALTER TABLE {} DROP COLUMN {}",
                                quote(&name),
                                quote(&column)
                            ))
                            .map_err(sql_err)?;
                            format!("drop column {column} of {name}")
                        }
                    }
                }
            }
            Op::CreateView { view, table } => {
                let v = format!("v_{}", view % 2 + 1);
                let name = self.table_name(table);
                if !self.exists(&conn, &name)? {
                    format!("create view {v}: {name} does not exist, nothing done")
                } else {
                    conn.execute_batch(&format!(
                        "DROP VIEW IF EXISTS {q}; CREATE VIEW {q} AS SELECT * FROM {} WHERE id % 2 = 0;",
                        quote(&name),
                        q = quote(&v)
                    ))
                    .map_err(sql_err)?;
                    self.dropped.remove(&v);
                    format!("create view {v} over {name} (even ids)")
                }
            }
            Op::DropView { view } => {
                let v = format!("v_{}", view % 2 + 1);
                if !self.exists(&conn, &v)? {
                    format!("drop view: {v} does not exist, nothing done")
                } else {
                    conn.execute_batch(&format!("DROP VIEW {}", quote(&v)))
                        .map_err(sql_err)?;
                    self.mark_dropped(&v);
                    format!("drop view {v}")
                }
            }
        };
        self.log.push(note);
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Runs

    fn new_run_id(&mut self) -> String {
        let id = format!("r{:03}", self.next_run);
        self.next_run += 1;
        id
    }

    fn plan(&self, run: &Run, id: &str, options: Opts, resume: bool) -> RunPlan {
        let window = run.window.map(|w| match w {
            Window::LastDays(n) => PartitionWindow::LastDays(u32::from(n.max(1))),
            Window::Since(k) => {
                PartitionWindow::Since(self.today - chrono::Days::new(u64::from(k)))
            }
        });
        RunPlan {
            run: RunId::Given {
                id: id.to_string(),
                resume,
            },
            include: Vec::new(),
            exclude: Vec::new(),
            options: options.export(),
            partitions: PartitionPlan {
                split: run.split,
                window,
                min_rows: u64::from(run.min_rows),
            },
            only_changed: run.only_changed,
            views: run.views,
            prune_gone: false,
            duplicate_window: None,
        }
    }

    async fn produce(&self, plan: &RunPlan) -> Result<RunManifest, String> {
        let fail = |e: anyhow::Error| format!("[produce] {e:#}");
        let warehouses = backends::open_sources(&[self.source_uri()], "--source")
            .await
            .map_err(fail)?;
        let topic = backends::open_topic(&self.queue_uri("work"), "--topic")
            .await
            .map_err(fail)?;
        let report = produce(plan, &warehouses, topic.as_ref(), self.store.as_ref())
            .await
            .map_err(fail)?;
        self.manifest(&report.run_id).await
    }

    async fn manifest(&self, id: &str) -> Result<RunManifest, String> {
        let bytes = self
            .store
            .read(&layout::run_manifest(id))
            .await
            .map_err(|e| format!("[harness] {e:#}"))?
            .ok_or_else(|| format!("[produce] run {id} has no manifest"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("[produce] run {id}'s manifest: {e}"))
    }

    fn handler(&self, watch: &[&str]) -> ExportHandler {
        let retry = RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        };
        let handler = ExportHandler::new(retry, TaskIdentity::default());
        for id in watch {
            handler.watch(id, Arc::clone(&self.store));
        }
        handler
    }

    async fn subscription(
        &self,
        concurrency: usize,
    ) -> Result<Arc<dyn bqdrain::ports::queue::Subscription>, String> {
        backends::open_subscription(
            &self.subscription_uri(),
            "--subscription",
            &ReceiveSettings::new(concurrency),
        )
        .await
        .map_err(|e| format!("[harness] {e:#}"))
    }

    /// The drain as `bqdrain work` runs it, until the watched runs are done.
    async fn drain_all(&self, concurrency: usize, watch: &[&str]) -> Result<(), String> {
        let began = Instant::now();
        let subscription = self.subscription(concurrency).await?;
        let dead = backends::open_topic(&self.queue_uri("dead"), "--dead-letter-topic")
            .await
            .map_err(|e| format!("[harness] {e:#}"))?;
        let (_trigger, shutdown) = shutdown::channel();
        let config = DrainConfig {
            concurrency,
            idle_timeout: Duration::from_millis(300),
            started: Instant::now(),
        };
        let report = drain(
            subscription,
            Some(dead),
            Arc::new(self.handler(watch)),
            config,
            shutdown,
        )
        .await;
        if std::env::var_os("BQDRAIN_MODEL_TRACE").is_some() {
            eprintln!(
                "          drain {:.3} s: {report:?}",
                began.elapsed().as_secs_f64()
            );
        }
        if report.exit != ExitReason::Drained {
            return Err(format!(
                "[drain] the drain of {watch:?} ended {:?} instead of with its runs complete: {report:?}",
                report.exit
            ));
        }
        Ok(())
    }

    /// Handles up to `count` messages one by one, as a worker that stops.
    async fn handle_some(&self, count: u8, watch: &[&str]) -> Result<usize, String> {
        let subscription = self.subscription(1).await?;
        let handler = self.handler(watch);
        let mut handled = 0;
        for _ in 0..count {
            let batch = subscription
                .pull(1, Duration::from_millis(50))
                .await
                .map_err(|e| format!("[harness] {e:#}"))?;
            let Some(delivery) = batch.into_iter().next() else {
                break;
            };
            let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
            match handler.handle(&delivery, cancel).await {
                Disposition::Ack => subscription
                    .ack(std::slice::from_ref(&delivery.ack_id))
                    .await
                    .map_err(|e| format!("[harness] {e:#}"))?,
                _ => subscription
                    .nack(&delivery.ack_id)
                    .await
                    .map_err(|e| format!("[harness] {e:#}"))?,
            }
            handled += 1;
        }
        subscription
            .close()
            .await
            .map_err(|e| format!("[harness] {e:#}"))?;
        Ok(handled)
    }

    fn set_slow(&self, table: &str, ms: u64) -> Result<(), String> {
        dataset::set_fault(
            &self.warehouse,
            table,
            Fault::Slow {
                per_shard: Duration::from_millis(ms),
            },
        )
        .map_err(|e| format!("[harness] {e:#}"))
    }

    fn clear_faults(&self, tables: &[String]) -> Result<(), String> {
        for t in tables {
            dataset::clear_fault(&self.warehouse, t).map_err(|e| format!("[harness] {e:#}"))?;
        }
        Ok(())
    }

    async fn run(&mut self, run: &Run) -> Result<(), String> {
        let concurrency = usize::from(run.concurrency.max(1));
        let id = self.new_run_id();
        let mut produced = vec![id.clone()];
        let manifest = self
            .produce(&self.plan(run, &id, run.options, false))
            .await?;
        let units = manifest.units.len();
        let what = match run.how {
            How::Plain => {
                self.drain_all(concurrency, &[&id]).await?;
                "drained".to_string()
            }
            How::Resume { first } => {
                let handled = self.handle_some(first, &[&id]).await?;
                let again = self
                    .produce(&self.plan(run, &id, run.options, true))
                    .await?;
                if again.run_id != id {
                    return Err(format!(
                        "[produce] resuming run {id} gave run {}",
                        again.run_id
                    ));
                }
                self.drain_all(concurrency, &[&id]).await?;
                format!("{handled} message(s) handled, resumed, drained")
            }
            How::Killed => match manifest.units.first() {
                None => {
                    self.drain_all(concurrency, &[&id]).await?;
                    "nothing to kill; drained".to_string()
                }
                Some(largest) => {
                    let table = largest.source.table.clone();
                    // One unit in flight, killed while its first shard is
                    // still being written: mid-export.
                    self.set_slow(&table, 300)?;
                    let shards = self.kill_mid_export(1, &id, &table).await?;
                    self.clear_faults(std::slice::from_ref(&table))?;
                    self.drain_all(concurrency, &[&id]).await?;
                    format!("worker killed while exporting {table} ({shards} shard(s) written), drained again")
                }
            },
            How::KilledSettling { after } => {
                store_fault::stall_deletes(&self.exports, u32::from(after))
                    .map_err(|e| format!("[harness] {e:#}"))?;
                let exports = self.exports.clone();
                let held = self
                    .kill_when(concurrency, &id, Duration::from_secs(5), move || {
                        store_fault::delete_held(&exports)
                    })
                    .await;
                store_fault::clear_stall(&self.exports).map_err(|e| format!("[harness] {e:#}"))?;
                self.drain_all(concurrency, &[&id]).await?;
                if held? {
                    format!(
                        "worker killed settling, {after} delete(s) after its commit, drained again"
                    )
                } else {
                    format!("no delete held after {after} passed; drained again")
                }
            }
            How::Crashed { unit } => {
                if units == 0 {
                    self.drain_all(concurrency, &[&id]).await?;
                    "no unit to leave leftovers in; drained".to_string()
                } else {
                    let planned = &manifest.units[usize::from(unit) % units];
                    let folder = layout::export_folder(&planned.source, &id);
                    let ext = manifest
                        .options
                        .format
                        .extension(manifest.options.compression);
                    for (n, body) in [(0, "garbage\n"), (41, "leftover\n")] {
                        let key = format!("{folder}{}_{n:012}.{ext}", planned.source.table);
                        let path = self.exports.join(&key);
                        std::fs::create_dir_all(path.parent().unwrap())
                            .map_err(|e| e.to_string())?;
                        std::fs::write(&path, body).map_err(|e| e.to_string())?;
                    }
                    self.drain_all(concurrency, &[&id]).await?;
                    format!("a crashed attempt's shards left in {folder}, drained")
                }
            }
            How::Duplicate { unit } => {
                let queued = peek(&self.queue_uri("work"))
                    .await
                    .map_err(|e| format!("[harness] {e:#}"))?;
                if queued.is_empty() {
                    self.drain_all(concurrency, &[&id]).await?;
                    "no message to duplicate; drained".to_string()
                } else {
                    let twice = queued[usize::from(unit) % queued.len()].clone();
                    let msg = WorkMessage::decode(&twice.data).map_err(|e| e.to_string())?;
                    let table = msg.source.table.clone();
                    // A little slow, so that the two exports overlap.
                    self.set_slow(&table, 3)?;
                    let topic = backends::open_topic(&self.queue_uri("work"), "--topic")
                        .await
                        .map_err(|e| format!("[harness] {e:#}"))?;
                    topic
                        .publish(vec![twice])
                        .await
                        .map_err(|e| format!("[harness] {e:#}"))?;
                    self.drain_all(queued.len() + 1, &[&id]).await?;
                    self.clear_faults(&[table])?;
                    format!("unit {} delivered twice at once, drained", msg.unit())
                }
            }
            How::Overlap { options } => {
                let second = self.new_run_id();
                let b = self
                    .produce(&self.plan(run, &second, options, false))
                    .await?;
                produced.push(second.clone());
                // Every table a little slow, so that the two runs' exports
                // of a unit overlap.
                let tables: Vec<String> = manifest
                    .units
                    .iter()
                    .chain(&b.units)
                    .map(|u| u.source.table.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for t in &tables {
                    self.set_slow(t, 3)?;
                }
                self.drain_all(units + b.units.len() + 1, &[&id, &second])
                    .await?;
                self.clear_faults(&tables)?;
                format!(
                    "run {second} ({}, {} unit(s)) produced before {id} was drained; both drained together",
                    shape(&options.export()),
                    b.units.len()
                )
            }
        };
        self.log.push(format!(
            "run {id}: {} split={} min_rows={} window={:?} only_changed={} views={} {}: {units} unit(s) published, {what}",
            match run.how {
                How::Plain => "plain".to_string(),
                other => format!("{other:?}"),
            },
            run.split,
            run.min_rows,
            run.window,
            run.only_changed,
            run.views,
            shape(&run.options.export()),
        ));

        // Each run produced is recorded with what it covered; the newest is
        // the one whose rule must hold now.
        let mut newest = None;
        for run_id in &produced {
            let manifest = self.manifest(run_id).await?;
            let coverage = self.coverage(&manifest, run)?;
            self.runs.push(RunRecord {
                id: run_id.clone(),
                created_at: manifest.created_at,
                full: coverage
                    .iter()
                    .filter(|c| c.full)
                    .map(|c| c.name.clone())
                    .collect(),
                parts: coverage
                    .iter()
                    .filter(|c| !c.full)
                    .map(|c| {
                        let ids = c.units.iter().flatten().cloned().collect();
                        (c.name.clone(), ids)
                    })
                    .collect(),
            });
            newest = Some((manifest, coverage));
        }
        let (manifest, coverage) = newest.expect("a run was produced");
        let mut violations = self.check_rule(&manifest, &coverage)?;
        violations.extend(self.check_status().await);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations.join("\n"))
        }
    }

    /// Drains for 100 ms, while the slow `table`'s export of run `id` is
    /// writing its first shard, then aborts as a killed worker would (grace
    /// period 0). Returns the shards written.
    async fn kill_mid_export(
        &self,
        concurrency: usize,
        id: &str,
        table: &str,
    ) -> Result<usize, String> {
        let folder = self.exports.join(DATASET).join(table);
        let marker = format!("/run={id}/");
        let shards = move |root: &Path| {
            let mut keys = Vec::new();
            walk(&folder, root, &mut keys);
            keys.iter()
                .filter(|k| {
                    k.contains(&marker)
                        && !k.ends_with("_MANIFEST.json")
                        && !k.ends_with("_TABLE.json")
                })
                .count()
        };
        let exports = self.exports.clone();
        let written = shards.clone();
        self.kill_when(concurrency, id, Duration::from_millis(100), move || {
            written(&exports) > 0
        })
        .await?;
        Ok(shards(&self.exports))
    }

    /// Drains run `id` until `now` holds (or the drain ends, or `limit`
    /// passes), then aborts as a killed worker would (grace period 0).
    /// Returns whether `now` held.
    async fn kill_when(
        &self,
        concurrency: usize,
        id: &str,
        limit: Duration,
        now: impl Fn() -> bool,
    ) -> Result<bool, String> {
        let subscription = self.subscription(concurrency).await?;
        let dead = backends::open_topic(&self.queue_uri("dead"), "--dead-letter-topic")
            .await
            .map_err(|e| format!("[harness] {e:#}"))?;
        let (trigger, shutdown) = shutdown::channel();
        let config = DrainConfig {
            concurrency,
            idle_timeout: Duration::from_millis(300),
            started: Instant::now(),
        };
        let worker = tokio::spawn(drain(
            subscription,
            Some(dead),
            Arc::new(self.handler(&[id])),
            config,
            shutdown,
        ));
        let started = Instant::now();
        while !now() && !worker.is_finished() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let held = now();
        trigger.begin(Duration::ZERO);
        worker.await.map_err(|e| format!("[harness] {e}"))?;
        // A killed export's thread stops at its next shard; wait for it,
        // as a dead process writes nothing more.
        tokio::time::sleep(Duration::from_millis(60)).await;
        Ok(held)
    }

    // -----------------------------------------------------------------------
    // Checks

    /// What a run covers now: each table and view it takes, with its units.
    fn coverage(&self, manifest: &RunManifest, run: &Run) -> Result<Vec<Coverage>, String> {
        let conn = self.conn()?;
        let declared = partitions::declared(&conn).map_err(sql_err)?;
        let plan = self.plan(run, &manifest.run_id, run.options, false);
        let first_day = plan
            .partitions
            .window
            .map(|w| w.first_day(manifest.created_at.date_naive()));
        let mut out = Vec::new();
        for (name, view) in self.objects(&conn)? {
            if view && !plan.views {
                continue;
            }
            let rows: u64 = conn
                .query_row(&format!("SELECT count(*) FROM {}", quote(&name)), [], |r| {
                    r.get(0)
                })
                .map_err(sql_err)?;
            // A partitioned table with no rows has no partitions: the run
            // exports it whole, as it does a table under `min_rows`.
            let split = plan.partitions.split
                && !view
                && declared.contains_key(&name)
                && rows > 0
                && rows >= plan.partitions.min_rows;
            // The window leaves partitions out only where the run says so:
            // a table whose current export was whole is split in full once.
            let first_day = first_day.filter(|_| {
                manifest
                    .partly_covered
                    .contains(&format!("{DATASET}/{name}/"))
            });
            let units = if split {
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT DISTINCT {PARTITION_ID} FROM {} ORDER BY 1",
                        quote(&name)
                    ))
                    .map_err(sql_err)?;
                let ids = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(sql_err)?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(sql_err)?;
                ids.into_iter()
                    .filter(|id| match first_day {
                        None => true,
                        Some(first) => holds(first, id),
                    })
                    .map(Some)
                    .collect()
            } else {
                vec![None]
            };
            out.push(Coverage {
                name,
                units,
                split,
                full: !(split && first_day.is_some()),
            });
        }
        Ok(out)
    }

    fn check_rule(
        &self,
        manifest: &RunManifest,
        coverage: &[Coverage],
    ) -> Result<Vec<String>, String> {
        let run = &manifest.run_id;
        let want = shape(&manifest.options);
        let conn = self.conn()?;
        let mut violations = Vec::new();
        for table in coverage {
            let name = &table.name;
            let (groups, strays) = self.scan(name);
            if table.full {
                for key in &strays {
                    violations.push(format!(
                        "[stray] table {name}: {key} is in no export folder (run {run} covered the table in full)"
                    ));
                }
                for ((partition, by), files) in &groups {
                    if table.units.contains(partition) {
                        continue;
                    }
                    let folder = export_folder_name(name, partition.as_deref(), by);
                    let kind = match (partition, table.split) {
                        (None, true) => "whole-beside-partitions",
                        (Some(_), false) => "partitions-beside-whole",
                        (Some(_), true) => "stale-partition",
                        (None, false) => unreachable!("the whole table is its unit"),
                    };
                    violations.push(format!(
                        "[{kind}] table {name}: {folder} ({} file(s)) is not an export of a current unit; \
                         run {run} covered the table in full with unit(s) {}",
                        files.len(),
                        show_units(name, &table.units)
                    ));
                }
            }
            for unit in &table.units {
                let label = unit_name(name, unit.as_deref());
                let mut exports: Vec<(&String, &BTreeSet<String>)> = groups
                    .iter()
                    .filter(|((p, _), _)| p == unit)
                    .map(|((_, by), files)| (by, files))
                    .collect();
                exports.sort();
                match exports.len() {
                    0 => {
                        violations.push(format!(
                            "[missing] unit {label}: no export under {} after run {run}",
                            export_folder_name(name, unit.as_deref(), "*")
                        ));
                        continue;
                    }
                    1 => {}
                    _ => {
                        let runs: Vec<&str> = exports.iter().map(|(by, _)| by.as_str()).collect();
                        violations.push(format!(
                            "[two-exports] unit {label}: exports of runs {runs:?} stand side by side after run {run}"
                        ));
                    }
                }
                let (source_columns, source) =
                    source_rows(&conn, name, unit.as_deref()).map_err(sql_err)?;
                for (by, files) in exports {
                    let folder = export_folder_name(name, unit.as_deref(), by);
                    let record = match self.committed(&folder, files) {
                        Ok(record) => record,
                        Err(e) => {
                            violations.push(format!("[uncommitted] unit {label}: {e}"));
                            continue;
                        }
                    };
                    let Some(options) = &record.options else {
                        violations.push(format!(
                            "[options] unit {label}: {folder}_MANIFEST.json keeps no options"
                        ));
                        continue;
                    };
                    if shape(options) != want {
                        violations.push(format!(
                            "[options] unit {label}: {folder} is written as {}; run {run} wants {want}",
                            shape(options)
                        ));
                    }
                    match self.exported_rows(&record, options, &source_columns) {
                        Err(e) => violations.push(format!("[rows] unit {label}: {folder}: {e}")),
                        Ok(mut found) => {
                            found.sort();
                            let mut expected = source.clone();
                            expected.sort();
                            if found != expected {
                                violations.push(format!(
                                    "[rows] unit {label}: {folder} holds {} row(s), the source {} \
                                     (as of run {run}); missing {}; extra {}",
                                    found.len(),
                                    expected.len(),
                                    some_rows(&minus(&expected, &found)),
                                    some_rows(&minus(&found, &expected))
                                ));
                            }
                        }
                    }
                }
            }
        }
        for (name, before) in &self.dropped {
            let now = self.folder_contents(name);
            if &now != before {
                let was: Vec<&String> = before.keys().collect();
                let is: Vec<&String> = now.keys().collect();
                violations.push(format!(
                    "[dropped] {name} was dropped, and its folder changed since: was {was:?}, is {is:?}"
                ));
            }
        }
        Ok(violations)
    }

    /// The export folders under a table's folder, by (partition, run), and
    /// the keys that lie in none.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        table: &str,
    ) -> (
        BTreeMap<(Option<String>, String), BTreeSet<String>>,
        Vec<String>,
    ) {
        let mut keys = Vec::new();
        walk(
            &self.exports.join(DATASET).join(table),
            &self.exports,
            &mut keys,
        );
        let mut groups: BTreeMap<(Option<String>, String), BTreeSet<String>> = BTreeMap::new();
        let mut strays = Vec::new();
        for key in keys {
            match ExportPath::parse(DATASET, &key) {
                Some(p) if p.table == table => {
                    groups
                        .entry((p.partition.map(str::to_string), p.run.to_string()))
                        .or_default()
                        .insert(key.clone());
                }
                _ => strays.push(key),
            }
        }
        (groups, strays)
    }

    /// The manifest of a committed export folder, which names exactly the
    /// files in it, with their sizes.
    fn committed(&self, folder: &str, files: &BTreeSet<String>) -> Result<TableManifest, String> {
        let manifest_key = format!("{folder}_MANIFEST.json");
        let definition_key = format!("{folder}_TABLE.json");
        let data: BTreeSet<&str> = files
            .iter()
            .map(String::as_str)
            .filter(|k| *k != manifest_key && *k != definition_key)
            .collect();
        if !files.contains(&manifest_key) {
            return Err(format!(
                "{folder} is not a committed export: no _MANIFEST.json beside {data:?}"
            ));
        }
        if !files.contains(&definition_key) {
            return Err(format!("{folder} is committed without its _TABLE.json"));
        }
        let bytes = std::fs::read(self.exports.join(&manifest_key)).map_err(|e| e.to_string())?;
        let record: TableManifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{manifest_key} does not parse: {e}"))?;
        let named: BTreeSet<&str> = record.files.iter().map(|f| f.key.as_str()).collect();
        if named != data {
            return Err(format!(
                "{manifest_key} names {named:?}, but the folder holds {data:?}"
            ));
        }
        for f in &record.files {
            let size = std::fs::metadata(self.exports.join(&f.key))
                .map(|m| m.len())
                .unwrap_or(u64::MAX);
            if size != f.bytes {
                return Err(format!(
                    "{} has {size} bytes, its manifest says {}",
                    f.key, f.bytes
                ));
            }
        }
        Ok(record)
    }

    /// Every row in an export's files, read as its options say.
    fn exported_rows(
        &self,
        record: &TableManifest,
        options: &ExportOptions,
        columns: &[String],
    ) -> Result<Vec<Row>, String> {
        let ext = format!(".{}", options.format.extension(options.compression));
        let mut sorted_columns = columns.to_vec();
        sorted_columns.sort();
        let mut rows = Vec::new();
        for f in &record.files {
            if !f.key.ends_with(&ext) {
                return Err(format!("{} is not a {ext} file", f.key));
            }
            let mut bytes = std::fs::read(self.exports.join(&f.key)).map_err(|e| e.to_string())?;
            if options.compression == Compression::Gzip {
                bytes = gunzip(&bytes).map_err(|e| format!("{}: {e}", f.key))?;
            }
            let text = String::from_utf8(bytes).map_err(|e| format!("{}: {e}", f.key))?;
            match options.format {
                Format::Json => {
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        let value: serde_json::Value = serde_json::from_str(line)
                            .map_err(|e| format!("{}: {line:?} is not JSON: {e}", f.key))?;
                        let object = value
                            .as_object()
                            .ok_or_else(|| format!("{}: {line:?} is not an object", f.key))?;
                        let row: Row = object
                            .iter()
                            .map(|(k, v)| (k.clone(), json_value(v)))
                            .collect();
                        let names: Vec<String> = row.iter().map(|(k, _)| k.clone()).collect();
                        if names != sorted_columns {
                            return Err(format!(
                                "{}: a row has columns {names:?}, the source has {sorted_columns:?}",
                                f.key
                            ));
                        }
                        rows.push(row);
                    }
                }
                _ => {
                    let delimiter = options.field_delimiter.chars().next().unwrap_or(',');
                    let mut records = parse_csv(&text, delimiter)
                        .map_err(|e| format!("{}: {e}", f.key))?
                        .into_iter();
                    let names: Vec<String> = if options.header {
                        let header = records
                            .next()
                            .ok_or_else(|| format!("{}: no header line", f.key))?;
                        let names: Vec<String> = header.into_iter().map(|(n, _)| n).collect();
                        if names != columns {
                            return Err(format!(
                                "{}: header {names:?}, the source has columns {columns:?}",
                                f.key
                            ));
                        }
                        names
                    } else {
                        columns.to_vec()
                    };
                    for record in records {
                        if record.len() != names.len() {
                            return Err(format!(
                                "{}: a row has {} field(s), the source has {} column(s) {columns:?}",
                                f.key,
                                record.len(),
                                names.len()
                            ));
                        }
                        let mut row: Row = names
                            .iter()
                            .zip(record)
                            .map(|(n, (v, quoted))| {
                                (n.clone(), (quoted || !v.is_empty()).then_some(v))
                            })
                            .collect();
                        row.sort();
                        rows.push(row);
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Whether a newer run than `run` covered this unit (its table in full,
    /// or the partition in its window), and so may have replaced its export.
    fn replaced(&self, run: &RunRecord, table: &str, partition: Option<&str>) -> bool {
        self.runs.iter().any(|r| {
            (r.created_at, &r.id) > (run.created_at, &run.id)
                && (r.full.contains(table)
                    || partition
                        .is_some_and(|p| r.parts.get(table).is_some_and(|ids| ids.contains(p))))
        })
    }

    /// Every run's state, as `status` reports it, against the files.
    async fn check_status(&self) -> Vec<String> {
        let mut violations = Vec::new();
        for run in &self.runs {
            let state = match RunState::load(self.store.as_ref(), &run.id, true).await {
                Ok(Some(state)) => state,
                Ok(None) => {
                    violations.push(format!("[status] run {} has no manifest", run.id));
                    continue;
                }
                Err(e) => {
                    violations.push(format!("[status] run {}: {e:#}", run.id));
                    continue;
                }
            };
            let sources: HashMap<&str, &bqdrain::contract::message::SourceTable> = state
                .manifest
                .units
                .iter()
                .map(|u| (u.unit.as_str(), &u.source))
                .collect();
            for unit in &state.units {
                let source = sources[unit.unit.as_str()];
                let folder = layout::export_folder(source, &run.id);
                let mut files = Vec::new();
                walk(&self.exports.join(&folder), &self.exports, &mut files);
                let files: BTreeSet<String> = files.into_iter().collect();
                let at = format!("run {} unit {}", run.id, unit.unit);
                match &unit.state {
                    UnitState::Pending => {
                        violations.push(format!("[pending] {at}: still pending after the drain"))
                    }
                    UnitState::DeadLettered { record } => violations.push(format!(
                        "[dead-lettered] {at}: {}",
                        record
                            .as_ref()
                            .map(|r| format!("{}: {}", r.reason, r.message))
                            .unwrap_or_default()
                    )),
                    UnitState::Superseded { record } => {
                        if !files.is_empty() {
                            violations.push(format!(
                                "[status] {at} is superseded by {}, but {folder} still holds {files:?}",
                                record.as_ref().map(|r| r.by_run.as_str()).unwrap_or("?")
                            ));
                        }
                    }
                    UnitState::Exported { manifest } => {
                        if files.is_empty() {
                            if !self.replaced(run, &source.table, source.partition.as_deref()) {
                                violations.push(format!(
                                    "[status] {at} is exported, but {folder} is empty and no newer run covered the unit"
                                ));
                            }
                            continue;
                        }
                        let Some(record) = manifest else {
                            violations.push(format!("[status] {at}: exported without a record"));
                            continue;
                        };
                        let manifest_key = format!("{folder}_MANIFEST.json");
                        let definition_key = format!("{folder}_TABLE.json");
                        let named: BTreeSet<&str> =
                            record.files.iter().map(|f| f.key.as_str()).collect();
                        let data: BTreeSet<&str> = files
                            .iter()
                            .map(String::as_str)
                            .filter(|k| *k != manifest_key && *k != definition_key)
                            .collect();
                        if named != data
                            || !files.contains(&manifest_key)
                            || !files.contains(&definition_key)
                        {
                            violations.push(format!(
                                "[status] {at} is exported; its record names {} file(s) {named:?}, \
                                 {folder} holds {} {data:?}, {}",
                                named.len(),
                                data.len(),
                                match (
                                    files.contains(&manifest_key),
                                    files.contains(&definition_key),
                                ) {
                                    (true, true) => "with its _MANIFEST.json and _TABLE.json",
                                    (true, false) => "with its _MANIFEST.json, without _TABLE.json",
                                    (false, _) => "and no _MANIFEST.json",
                                }
                            ));
                        }
                    }
                }
            }
        }
        violations
    }
}

/// Whether partition `id` has a day on or after `first` (`__UNPARTITIONED__`
/// always, `__NULL__` never): the window's rule.
fn holds(first: NaiveDate, id: &str) -> bool {
    match id {
        "__UNPARTITIONED__" => true,
        "__NULL__" => false,
        _ => NaiveDate::parse_from_str(id, "%Y%m%d").is_ok_and(|day| day >= first),
    }
}

fn unit_name(table: &str, partition: Option<&str>) -> String {
    match partition {
        Some(p) => format!("{table}${p}"),
        None => table.to_string(),
    }
}

fn show_units(table: &str, units: &[Option<String>]) -> String {
    if units.is_empty() {
        return "none (no partitions)".to_string();
    }
    let names: Vec<String> = units
        .iter()
        .map(|u| unit_name(table, u.as_deref()))
        .collect();
    names.join(", ")
}

fn export_folder_name(table: &str, partition: Option<&str>, run: &str) -> String {
    match partition {
        Some(p) => format!("{DATASET}/{table}/partition={p}/run={run}/"),
        None => format!("{DATASET}/{table}/run={run}/"),
    }
}

// ---------------------------------------------------------------------------
// The test

/// Runs one case; the error names the step, what failed and what happened.
fn run_case(rt: &tokio::runtime::Runtime, case: &Case) -> Result<(), String> {
    rt.block_on(async {
        let began = Instant::now();
        let mut world = World::new(case).await?;
        if std::env::var_os("BQDRAIN_MODEL_TRACE").is_some() {
            eprintln!("{:>7.3} s  setup", began.elapsed().as_secs_f64());
        }
        for (i, op) in case.ops.iter().enumerate() {
            let began = Instant::now();
            let logged = world.log.len();
            let applied = world.apply(op).await;
            if std::env::var_os("BQDRAIN_MODEL_TRACE").is_some() {
                eprintln!("{:>7.3} s  {op:?}", began.elapsed().as_secs_f64());
                for line in &world.log[logged.min(world.log.len())..] {
                    eprintln!("           {line}");
                }
            }
            if let Err(e) = applied {
                return Err(format!(
                    "step {} of {}: {op:?}\n{e}\nwhat happened:\n  {}",
                    i + 1,
                    case.ops.len(),
                    world.log.join("\n  ")
                ));
            }
        }
        Ok(())
    })
}

/// Writes a line to stderr past the test harness's capture, so that CI's
/// log has it whether the test passes or fails.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[test]
fn the_destination_follows_the_rule_after_every_run() {
    if let Ok(json) = std::env::var("BQDRAIN_MODEL_REPLAY") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let case: Case =
            serde_json::from_str(&json).expect("BQDRAIN_MODEL_REPLAY is a case's JSON");
        let started = Instant::now();
        let result = run_case(&rt, &case);
        say(&format!(
            "model: 1 case replayed in {:.2} s",
            started.elapsed().as_secs_f64()
        ));
        if let Err(e) = result {
            panic!("the replayed case fails:\n{e}");
        }
        return;
    }
    let allow = Allow::from_env();
    let cases = env_u64("BQDRAIN_MODEL_CASES").unwrap_or(64) as u32;
    let long = cases > 100;
    let shrink_secs = env_u64("BQDRAIN_MODEL_SHRINK_SECS").unwrap_or(if long { 300 } else { 20 });
    // A case mostly waits (on the queue, on slow exports): a long search
    // runs several at once.
    let threads = env_u64("BQDRAIN_MODEL_THREADS")
        .unwrap_or(if long { 4 } else { 1 })
        .clamp(1, 64);
    let seed = env_u64("BQDRAIN_MODEL_SEED").unwrap_or_else(|| fastrand::u64(..));
    let per_thread = cases.div_ceil(threads as u32);
    say(&format!(
        "model: seed {seed} (replay with BQDRAIN_MODEL_SEED={seed}), {cases} cases{}",
        if threads > 1 {
            format!(" in {threads} threads, thread i drawing {per_thread} with seed {seed} + i")
        } else {
            String::new()
        }
    ));
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let searches: Vec<Search> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (allow, stop) = (&allow, &stop);
                scope.spawn(move || {
                    search(allow, seed.wrapping_add(i), per_thread, shrink_secs, stop)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ran: u64 = searches.iter().map(|s| s.ran).sum();
    let first = searches
        .iter()
        .filter(|s| s.failure.is_some())
        .min_by_key(|s| s.found_at);
    let search_end = first.and_then(|s| s.found_at).unwrap_or_else(Instant::now);
    let seconds = search_end.duration_since(started).as_secs_f64();
    say(&format!(
        "model: {ran} cases in {seconds:.1} s ({:.2} cases/s){}",
        ran as f64 / seconds.max(1e-9),
        match first {
            Some(s) => format!(
                "; the first failure (seed {}, its case {}) took {seconds:.1} s to find, then {} shrink step(s) in {:.1} s",
                s.seed, s.ran, s.shrink_steps, s.shrink_seconds
            ),
            None => String::new(),
        }
    ));
    let Some(found) = first else {
        return;
    };
    let (reason, minimal) = found.failure.as_ref().expect("a failure");
    panic!(
        "the rule is broken (seed {}{}).\nminimal case: {}\nreplay: BQDRAIN_MODEL_REPLAY='{}' cargo test --test model -- --nocapture\n{reason}",
        found.seed,
        if threads > 1 { ", with BQDRAIN_MODEL_THREADS=1" } else { "" },
        describe(minimal),
        serde_json::to_string(minimal).unwrap().replace('\'', "'\\''"),
    )
}

/// What one search (one seed) found.
struct Search {
    seed: u64,
    /// Cases run until the first failure, or all.
    ran: u64,
    /// When the first failure was found.
    found_at: Option<Instant>,
    shrink_steps: u64,
    shrink_seconds: f64,
    /// The failure's message and its minimal case.
    failure: Option<(String, Case)>,
}

/// Draws up to `cases` cases from `seed` and shrinks the first that fails;
/// gives up early (passing) once `stop` is set by another search's failure.
fn search(allow: &Allow, seed: u64, cases: u32, shrink_secs: u64, stop: &AtomicBool) -> Search {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        cases,
        max_shrink_time: (shrink_secs * 1000) as u32,
        max_shrink_iters: 100_000,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let ran = Cell::new(0u64);
    let shrink_steps = Cell::new(0u64);
    let found_at: Cell<Option<Instant>> = Cell::new(None);
    let result = runner.run(&case(allow), |case| {
        let shrinking = found_at.get().is_some();
        if shrinking {
            shrink_steps.set(shrink_steps.get() + 1);
        } else if stop.load(Ordering::Relaxed) {
            return Ok(());
        } else {
            ran.set(ran.get() + 1);
        }
        let mut outcome = run_case(&rt, &case);
        // While shrinking, a case with a race in it passes by chance now
        // and then: it counts as passing only if it passes five times.
        if outcome.is_ok() && shrinking && case.racy() {
            for _ in 0..4 {
                outcome = run_case(&rt, &case);
                if outcome.is_err() {
                    break;
                }
            }
        }
        if outcome.is_err() && !shrinking {
            if stop.swap(true, Ordering::Relaxed) {
                // Another search failed first: its failure is the one
                // shrunk and reported.
                return Ok(());
            }
            found_at.set(Some(Instant::now()));
        }
        outcome.map_err(TestCaseError::fail)
    });
    let shrink_seconds = found_at.get().map_or(0.0, |at| at.elapsed().as_secs_f64());
    let failure = match result {
        Ok(()) => None,
        Err(TestError::Fail(reason, mut minimal)) => {
            // The steps after the failing one never ran.
            let failed_step = reason
                .message()
                .strip_prefix("step ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(step) = failed_step {
                minimal.ops.truncate(step);
            }
            Some((reason.message().to_string(), minimal))
        }
        Err(TestError::Abort(reason)) => Some((format!("aborted: {reason}"), Case::default())),
    };
    Search {
        seed,
        ran: ran.get(),
        found_at: found_at.get(),
        shrink_steps: shrink_steps.get(),
        shrink_seconds,
        failure,
    }
}

fn describe(case: &Case) -> String {
    let steps: Vec<String> = case
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| format!("  {}. {op:?}", i + 1))
        .collect();
    format!(
        "{} plain table(s) with {:?} rows, events on days {:?}\n{}",
        case.plain_tables,
        &case.plain_rows[..usize::from(case.plain_tables.clamp(1, 3)).min(case.plain_rows.len())],
        case.events,
        steps.join("\n")
    )
}

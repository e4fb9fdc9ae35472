//! `bqdrain verify`: checks a real destination against the rule its exports
//! keep, from listings, and says what to do about each thing that breaks it.
//!
//! The rule: after a run, for every table that still exists and that the
//! run covered in full, the data files under `DATASET/TABLE/` are exactly
//! one committed export per current unit (the whole table,
//! `DATASET/TABLE/run=RUN/`, or when split one per partition,
//! `DATASET/TABLE/partition=P/run=RUN/`), all written with the same options,
//! and together they hold exactly the table's rows as of the run's snapshot.
//! A dropped table keeps its last export. A committed export is a folder
//! whose `_MANIFEST.json`, a copy of the run's completion record, names its
//! files with their sizes (and on Cloud Storage their CRC32C).
//!
//! What is checked, and what it costs:
//! - From the destination alone: one listing of its folders (the datasets;
//!   with `--source`, its datasets instead), then one listing of each
//!   dataset's folder, which on Cloud Storage is a request per 1,000
//!   objects. The manifests come with the listing (their summaries) on
//!   Cloud Storage; the local store keeps no summaries, so there each is
//!   read (a local file). An export folder without a manifest costs its
//!   run's state (a read of the run manifest and three listings of its
//!   records, once per run), and a record of an earlier version, which
//!   keeps no options, a read of its run manifest. See `verify/exports.rs`:
//!   - one committed export per unit: `leftover_export` (an older run's
//!     export of a unit beside the newest), `mixed_layout` (whole and
//!     partition exports of one table side by side), `unfinished_export`
//!     (a folder with no manifest nor completion record, whose run has
//!     ended or is unknown: nothing will commit it; while its run is in
//!     progress it is noted `in_progress` instead), `bad_manifest`;
//!   - the standing export's files: `missing_file`, `size_mismatch`,
//!     `checksum_mismatch` (where the record and the listing both have a
//!     checksum), `unlisted_file` (in its folder, not in its manifest),
//!     `missing_manifest` (committed, files intact, manifest gone),
//!     `missing_definition` (committed, without the `_TABLE.json` a
//!     restore reads),
//!     `stray_object` (under a table's folder, in no export folder);
//!   - one format per table: `mixed_format`.
//! - With `--source`, against what the source has now: `missing_export`,
//!   `retired_partition`, `row_count_mismatch` (only for units known
//!   unchanged since their export), and tables `gone` (a note). See
//!   `verify/source.rs`, which says what each warehouse is asked and what
//!   that costs (and why no `COUNT(*)` query is run on BigQuery).
//! - With `--deep`, every file of every standing export is downloaded and
//!   its rows counted: `file_row_count_mismatch`. See `verify/deep.rs`.
//!
//! Nothing is written: the destination is read through a wrapper that
//! refuses writes (`verify/read_only.rs`), and sources through read-only
//! calls.
//! Notes (`gone`, `in_progress`, `not_counted`) say what was not judged;
//! only discrepancies fail the check.

mod deep;
mod exports;
mod read_only;
mod source;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

pub use read_only::Calls;

use crate::engine::layout;
use crate::error::ConfigError;
use crate::ports::store::ObjectStore;
use crate::ports::warehouse::Warehouse;
use exports::{ListedDataset, Runs};
use read_only::ReadOnly;

/// What breaks the rule. Each is fixed as its discrepancy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    LeftoverExport,
    MixedLayout,
    UnfinishedExport,
    BadManifest,
    MissingManifest,
    MissingDefinition,
    MissingFile,
    SizeMismatch,
    ChecksumMismatch,
    UnlistedFile,
    StrayObject,
    MixedFormat,
    MissingExport,
    RetiredPartition,
    RowCountMismatch,
    FileRowCountMismatch,
}

/// One thing that breaks the rule, where it is, and what fixes it.
#[derive(Debug, Clone, Serialize)]
pub struct Discrepancy {
    pub kind: Kind,
    /// The object or folder (ending in `/`), relative to the destination.
    pub path: String,
    pub detail: String,
    pub fix: String,
}

/// What `verify` did not judge, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// A table the source no longer has: its last export stays.
    Gone,
    /// An export a run in progress is still writing or replacing.
    InProgress,
    /// `--deep` could not count or compare an export's rows.
    NotCounted,
}

#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub kind: NoteKind,
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub destination: String,
    pub sources: Vec<String>,
    pub deep: bool,
    /// No discrepancy: the rule holds (notes do not count).
    pub ok: bool,
    pub datasets: usize,
    /// Tables of the destination checked.
    pub tables: usize,
    /// Current units checked: the standing export of each.
    pub units: usize,
    /// Files the standing exports' records name, and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// Units whose record's rows were compared with the source's.
    pub rows_compared: usize,
    /// Units whose rows `--deep` counted in their files.
    pub rows_counted: usize,
    /// Discrepancies per kind.
    pub counts: BTreeMap<Kind, usize>,
    pub discrepancies: Vec<Discrepancy>,
    pub notes: Vec<Note>,
    /// What was asked of the destination.
    pub calls: Calls,
    pub seconds: f64,
}

/// What to check beyond the destination itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only tables matching one of these globs, as `TABLE` or `DATASET.TABLE`.
    pub include: Vec<String>,
    /// Download every file and count its rows.
    pub deep: bool,
}

/// `--include`, compiled: a glob names a table as `TABLE` or
/// `DATASET.TABLE`, as the producer's does.
pub struct Filters {
    include: Vec<glob::Pattern>,
}

impl Filters {
    pub fn new(globs: &[String]) -> Result<Filters, ConfigError> {
        let include = globs
            .iter()
            .map(|g| {
                glob::Pattern::new(g).map_err(|e| {
                    ConfigError::new(
                        "--include",
                        format!("{g:?} is not a glob: {e}"),
                        "use *, ? and [abc], e.g. 'sales_*' or 'dataset.sales_*'",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filters { include })
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
    }

    pub fn select(&self, dataset: &str, table: &str) -> bool {
        let qualified = format!("{dataset}.{table}");
        self.include.is_empty()
            || self
                .include
                .iter()
                .any(|p| p.matches(table) || p.matches(&qualified))
    }
}

/// Names objects and folders of the destination as people use them: its
/// URI joined with the key.
pub struct Where {
    root: String,
}

impl Where {
    fn new(root: &str) -> Where {
        Where {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    pub fn uri(&self, key: &str) -> String {
        format!("{}/{key}", self.root)
    }
}

/// A unit as people name it: `DATASET.TABLE` or `DATASET.TABLE$P`.
pub fn unit_name(dataset: &str, table: &str, partition: Option<&str>) -> String {
    match partition {
        Some(p) => format!("{dataset}.{table}${p}"),
        None => format!("{dataset}.{table}"),
    }
}

/// The fix of an export whose files are not what they should be: export it
/// again (`--only-changed` would leave an unchanged unit out).
pub fn reexport(dataset: &str, table: &str, split: bool) -> String {
    format!(
        "re-export {dataset}.{table}: run the producer with --include {dataset}.{table}{} and \
         without --only-changed (which would leave it out as unchanged)",
        if split { " --partitions" } else { "" }
    )
}

/// Discrepancies and notes, gathered as the checks go.
#[derive(Default)]
pub struct Findings {
    discrepancies: Vec<Discrepancy>,
    notes: Vec<Note>,
}

impl Findings {
    pub fn add(&mut self, kind: Kind, path: &str, detail: String, fix: String) {
        self.discrepancies.push(Discrepancy {
            kind,
            path: path.to_string(),
            detail,
            fix,
        });
    }

    pub fn note(&mut self, kind: NoteKind, path: &str, detail: String) {
        self.notes.push(Note {
            kind,
            path: path.to_string(),
            detail,
        });
    }
}

/// Checks `destination` (against `sources`, when given) as the module doc
/// says. Errors are for what stopped the check (a bad flag: a
/// [`ConfigError`]; a store or warehouse that failed); what it found is in
/// the report.
pub async fn verify(
    destination: Arc<dyn ObjectStore>,
    sources: &[Arc<dyn Warehouse>],
    options: &VerifyOptions,
) -> anyhow::Result<VerifyReport> {
    let started = Instant::now();
    let filters = Filters::new(&options.include)?;
    let mut names = HashSet::new();
    for warehouse in sources {
        if !names.insert(warehouse.dataset()) {
            return Err(ConfigError::new(
                "--source",
                format!(
                    "two sources have a dataset named {}, and a destination keeps one folder per \
                     dataset name",
                    warehouse.dataset()
                ),
                "verify each against the destination it was exported to",
            )
            .into());
        }
    }
    let store = ReadOnly::new(destination);
    let at = Where::new(store.uri());
    let datasets: Vec<(String, Option<&Arc<dyn Warehouse>>)> = if sources.is_empty() {
        store
            .folders("")
            .await?
            .into_iter()
            .filter(|f| f != layout::META)
            .map(|f| (f, None))
            .collect()
    } else {
        sources
            .iter()
            .map(|w| (w.dataset().to_string(), Some(w)))
            .collect()
    };
    let mut findings = Findings::default();
    let mut runs = Runs::new(&store);
    let mut report = VerifyReport {
        destination: store.uri().to_string(),
        sources: sources.iter().map(|w| w.uri().to_string()).collect(),
        deep: options.deep,
        ok: false,
        datasets: 0,
        tables: 0,
        units: 0,
        files: 0,
        bytes: 0,
        rows_compared: 0,
        rows_counted: 0,
        counts: BTreeMap::new(),
        discrepancies: Vec::new(),
        notes: Vec::new(),
        calls: Calls::default(),
        seconds: 0.0,
    };
    for (name, source) in datasets {
        let listed = ListedDataset::group(&name, store.list(&format!("{name}/")).await?, &filters);
        if source.is_none() && !listed.has_exports() {
            continue; // a folder beside the datasets, not one
        }
        report.datasets += 1;
        let tables = exports::check(&store, &listed, &mut runs, &at, &mut findings).await?;
        let source_rows = match source {
            Some(warehouse) => {
                source::check(
                    warehouse.as_ref(),
                    &tables,
                    &filters,
                    options.deep,
                    &at,
                    &mut findings,
                )
                .await?
            }
            None => source::SourceRows::default(),
        };
        report.rows_compared += source_rows.compared;
        if options.deep {
            report.rows_counted += deep::count(
                &store,
                &name,
                &tables,
                &source_rows.by_folder,
                &mut findings,
            )
            .await?;
        }
        report.tables += tables.len();
        for export in tables.iter().flat_map(|t| &t.current) {
            report.units += 1;
            report.files += export.record.files.len();
            report.bytes += export.record.files.iter().map(|f| f.bytes).sum::<u64>();
        }
    }
    for d in &findings.discrepancies {
        *report.counts.entry(d.kind).or_default() += 1;
    }
    report.ok = findings.discrepancies.is_empty();
    report.discrepancies = findings.discrepancies;
    report.notes = findings.notes;
    report.calls = store.calls();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

impl VerifyReport {
    /// One line per discrepancy (kind, where, what, the fix), then the
    /// notes, then the totals.
    pub fn render(&self) -> String {
        let at = Where::new(&self.destination);
        let mut out = String::new();
        for d in &self.discrepancies {
            let kind = serde_json::to_value(d.kind).expect("kinds serialize");
            let _ = writeln!(
                out,
                "{}: {}: {}; fix: {}",
                kind.as_str().unwrap_or_default(),
                at.uri(&d.path),
                d.detail,
                d.fix
            );
        }
        for n in &self.notes {
            let kind = serde_json::to_value(n.kind).expect("kinds serialize");
            let _ = writeln!(
                out,
                "note ({}): {}: {}",
                kind.as_str().unwrap_or_default(),
                at.uri(&n.path),
                n.detail
            );
        }
        let mut checked = format!(
            "checked {} table(s) in {} dataset(s) of {}: {} unit(s), {} file(s), {} bytes",
            self.tables, self.datasets, self.destination, self.units, self.files, self.bytes
        );
        if !self.sources.is_empty() {
            checked += &format!(
                "; against {} ({} row count(s) compared)",
                self.sources.join(" "),
                self.rows_compared
            );
        }
        if self.deep {
            checked += &format!(
                "; rows counted in the files of {} unit(s)",
                self.rows_counted
            );
        }
        let _ = writeln!(
            out,
            "{checked}; {} listing call(s), {} read(s) of {} bytes, {:.2} s",
            self.calls.listing_calls, self.calls.reads, self.calls.bytes_read, self.seconds
        );
        if self.ok {
            let _ = writeln!(out, "every check holds");
        } else {
            let kinds: Vec<String> = self
                .counts
                .iter()
                .map(|(kind, n)| {
                    let kind = serde_json::to_value(kind).expect("kinds serialize");
                    format!("{n} {}", kind.as_str().unwrap_or_default())
                })
                .collect();
            let n = self.discrepancies.len();
            let _ = writeln!(
                out,
                "{n} {}: {}",
                if n == 1 {
                    "discrepancy"
                } else {
                    "discrepancies"
                },
                kinds.join(", ")
            );
        }
        out
    }
}

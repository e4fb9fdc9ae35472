//! `verify --deep`: the rows of each standing export, counted in its files,
//! against its record's row count (or, where the record keeps none, the
//! source's rows of a unit known unchanged since its export, with
//! `--source`).
//!
//! What it costs: every file of every standing export is downloaded (read
//! whole, a few at a time), so as many bytes as the destination holds, and
//! a read per file; on Cloud Storage that is egress unless run in the
//! bucket's region. Listings catch missing, truncated and (with checksums)
//! altered files for nothing; `--deep` catches what they cannot: files
//! whose record was forged along with them, or an export that was wrong
//! when it was written.
//!
//! Counted: CSV (a record ends at a newline outside quotes; the header, when
//! the export was written with one, is each file's first record) and
//! newline-delimited JSON (one row a line), either of them plain or gzip.
//! Avro and Parquet files are not counted (their row counts are in their
//! own metadata, which this does not parse), nor files of an export whose
//! options are unknown (a record of an earlier version whose run manifest
//! is gone): noted, not compared.

use std::collections::HashMap;
use std::io::Read;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::exports::{CheckedTable, Export};
use super::{reexport, unit_name, Findings, Kind, NoteKind};
use crate::contract::options::{Compression, ExportOptions, Format};
use crate::ports::store::ObjectStore;

/// Files downloaded at once: each is held whole while it is counted.
const DOWNLOAD_CONCURRENCY: usize = 4;

/// Counts the rows of every intact standing export of `tables` and
/// compares them with what they should be; returns how many exports were
/// counted.
pub async fn count(
    store: &dyn ObjectStore,
    dataset: &str,
    tables: &[CheckedTable],
    source_rows: &HashMap<String, u64>,
    findings: &mut Findings,
) -> anyhow::Result<usize> {
    let mut counted = 0;
    for export in tables.iter().flat_map(|t| &t.current) {
        let unit = unit_name(dataset, &export.table, export.partition.as_deref());
        if !export.intact {
            continue; // reported already: its files are not what its record says
        }
        let options = match &export.options {
            Some(options) if matches!(options.format, Format::Csv | Format::Json) => options,
            other => {
                let why = match other {
                    Some(o) => format!("{} files are not counted", o.format.name()),
                    None => "how its files were written is unknown (a record of an earlier \
                             version whose run manifest is gone)"
                        .to_string(),
                };
                findings.note(
                    NoteKind::NotCounted,
                    &export.folder.key,
                    format!("run {}'s export of {unit}: {why}", export.run()),
                );
                continue;
            }
        };
        let rows = count_export(store, export, options).await?;
        counted += 1;
        let expected = export
            .record
            .rows
            .map(|r| (r, "its record says"))
            .or_else(|| {
                source_rows
                    .get(&export.folder.key)
                    .map(|&r| (r, "the source, unchanged since, has"))
            });
        match expected {
            Some((expected, says)) if expected != rows => findings.add(
                Kind::FileRowCountMismatch,
                &export.folder.key,
                format!(
                    "run {}'s export of {unit} holds {rows} rows in its files; {says} {expected}",
                    export.run()
                ),
                reexport(dataset, &export.table, export.partition.is_some()),
            ),
            Some(_) => {}
            None => findings.note(
                NoteKind::NotCounted,
                &export.folder.key,
                format!(
                    "run {}'s export of {unit} holds {rows} rows in its files; neither its record \
                     nor the source says how many it should",
                    export.run()
                ),
            ),
        }
    }
    Ok(counted)
}

/// The rows in every file of an export.
async fn count_export(
    store: &dyn ObjectStore,
    export: &Export,
    options: &ExportOptions,
) -> anyhow::Result<u64> {
    let counts: Vec<u64> = stream::iter(&export.record.files)
        .map(|file| async move {
            let bytes = store
                .read(&file.key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{} was deleted while verify ran", file.key))?;
            rows_in(&bytes, options)
                .map_err(|e| anyhow::anyhow!("counting the rows of {}: {e}", file.key))
        })
        .buffer_unordered(DOWNLOAD_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(counts.iter().sum())
}

/// The rows of one file written with `options` (CSV or JSON).
pub fn rows_in(bytes: &[u8], options: &ExportOptions) -> std::io::Result<u64> {
    let mut counter = Records::new(options.format == Format::Csv);
    if options.compression == Compression::Gzip {
        let mut decoder = flate2::read::MultiGzDecoder::new(bytes);
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let n = decoder.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            counter.feed(&buffer[..n]);
        }
    } else {
        counter.feed(bytes);
    }
    let records = counter.finish();
    let header = options.format == Format::Csv && options.header && records > 0;
    Ok(records - u64::from(header))
}

/// Counts records: lines, where for CSV a newline inside a quoted field
/// (`"two\nlines"`) does not end one. A last line without its newline
/// counts.
struct Records {
    csv: bool,
    quoted: bool,
    /// Bytes seen since the last record ended.
    open: bool,
    records: u64,
}

impl Records {
    fn new(csv: bool) -> Records {
        Records {
            csv,
            quoted: false,
            open: false,
            records: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                // A doubled quote inside a field toggles twice: no change.
                b'"' if self.csv => self.quoted = !self.quoted,
                b'\n' if !self.quoted => {
                    self.records += 1;
                    self.open = false;
                    continue;
                }
                _ => {}
            }
            self.open = true;
        }
    }

    fn finish(self) -> u64 {
        self.records + u64::from(self.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn csv(header: bool) -> ExportOptions {
        ExportOptions {
            header,
            ..ExportOptions::default()
        }
    }

    #[test]
    fn csv_records_end_at_newlines_outside_quotes() {
        let text = b"a,b\n1,\"two\nlines\"\n2,\"say \"\"hi\"\"\"\n3,x";
        assert_eq!(rows_in(text, &csv(true)).unwrap(), 3);
        assert_eq!(rows_in(text, &csv(false)).unwrap(), 4);
        assert_eq!(rows_in(b"a,b\n", &csv(true)).unwrap(), 0);
        assert_eq!(rows_in(b"", &csv(true)).unwrap(), 0);
        // A one-column row of NULL is an empty line, and a row.
        assert_eq!(rows_in(b"a\n\n\n", &csv(true)).unwrap(), 2);
    }

    #[test]
    fn json_lines_and_gzip_are_counted() {
        let json = ExportOptions {
            format: Format::Json,
            ..ExportOptions::default()
        };
        let text = b"{\"a\":\"say \\\"hi\\\"\"}\n{\"a\":1}\n";
        assert_eq!(rows_in(text, &json).unwrap(), 2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text).unwrap();
        let gzipped = gz.finish().unwrap();
        let json_gz = ExportOptions {
            compression: Compression::Gzip,
            ..json
        };
        assert_eq!(rows_in(&gzipped, &json_gz).unwrap(), 2);
        assert!(rows_in(b"not gzip", &json_gz).is_err());
    }
}

//! How exported files are written: format, compression, CSV header and
//! delimiter. The defaults are BigQuery's, and the checks are BigQuery's
//! rules, applied before anything is published.

use serde::{Deserialize, Serialize};

/// How the files are written. The defaults are BigQuery's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportOptions {
    pub format: Format,
    pub compression: Compression,
    /// Print a header row (CSV only).
    pub header: bool,
    /// Field delimiter (CSV only).
    pub field_delimiter: String,
    /// The most a view's export query may bill; BigQuery fails the query
    /// rather than bill more (`--max-bytes-billed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_billed: Option<u64>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            format: Format::Csv,
            compression: Compression::None,
            header: true,
            field_delimiter: ",".to_string(),
            max_bytes_billed: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Avro,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Deflate,
    Snappy,
    Zstd,
}

impl Format {
    /// Compressions BigQuery accepts for this format.
    pub fn compressions(self) -> &'static [Compression] {
        use Compression::*;
        match self {
            Format::Csv | Format::Json => &[None, Gzip],
            Format::Avro => &[None, Deflate, Snappy],
            Format::Parquet => &[None, Snappy, Gzip, Zstd],
        }
    }

    /// File extension of the shards, as BigQuery users name them.
    pub fn extension(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Format::Csv, Compression::Gzip) => "csv.gz",
            (Format::Csv, _) => "csv",
            (Format::Json, Compression::Gzip) => "json.gz",
            (Format::Json, _) => "json",
            (Format::Avro, _) => "avro",
            (Format::Parquet, _) => "parquet",
        }
    }

    /// Whether some column types cannot be written in this format at all,
    /// so that the producer must read the tables' columns to refuse them.
    pub fn refuses_some_types(self) -> bool {
        self == Format::Csv
    }

    /// Whether this format can hold a column of `data_type`, as BigQuery's
    /// SQL spells it (`INT64`, `STRUCT<a INT64>`, `ARRAY<STRING>`): BigQuery
    /// writes no nested or repeated column to CSV. Avro, Parquet and JSON
    /// hold every type, some lossily (docs/destination.md, "Formats and types").
    pub fn holds(self, data_type: &str) -> bool {
        let nested = ["STRUCT<", "ARRAY<", "RECORD"].iter().any(|kind| {
            data_type
                .trim_start()
                .to_ascii_uppercase()
                .starts_with(kind)
        });
        !(self == Format::Csv && nested)
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Parquet => "parquet",
        }
    }
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zstd",
        }
    }
}

impl ExportOptions {
    /// Whether files written with `other` are written the same way: what
    /// `--only-changed` asks before it leaves an export alone. The byte
    /// guard of views' queries changes no file.
    pub fn writes_like(&self, other: &ExportOptions) -> bool {
        let files =
            |o: &ExportOptions| (o.format, o.compression, o.header, o.field_delimiter.clone());
        files(self) == files(other)
    }

    /// Checks the combination the way BigQuery would, but before anything is
    /// published. Returns the problem and its fix.
    pub fn validate(&self) -> Result<(), crate::error::ConfigError> {
        use crate::error::ConfigError;
        let allowed = self.format.compressions();
        if !allowed.contains(&self.compression) {
            let names: Vec<_> = allowed.iter().map(|c| c.name()).collect();
            return Err(ConfigError::new(
                "--compression",
                format!(
                    "{} cannot be written with {} compression",
                    self.format.name(),
                    self.compression.name()
                ),
                format!("use one of: {}", names.join(", ")),
            ));
        }
        if self.format == Format::Csv && self.field_delimiter.chars().count() != 1 {
            return Err(ConfigError::new(
                "--field-delimiter",
                format!("{:?} is not a single character", self.field_delimiter),
                "give one character, such as ',' or '|' or a tab",
            ));
        }
        // CSV quotes fields with '"' and ends rows with line breaks: files
        // split on either could not be read back.
        if self.format == Format::Csv && ["\"", "\n", "\r"].contains(&self.field_delimiter.as_str())
        {
            return Err(ConfigError::new(
                "--field-delimiter",
                format!(
                    "{:?} cannot separate CSV fields: CSV quotes fields with '\"' and ends rows \
                     with line breaks, so the files could not be read back",
                    self.field_delimiter
                ),
                "give another character, such as ',' or '|' or a tab",
            ));
        }
        Ok(())
    }

    /// Checks what exporting views needs: their exports are `EXPORT DATA`
    /// statements, whose reference lists GZIP, DEFLATE and SNAPPY only.
    pub fn validate_for_views(&self) -> Result<(), crate::error::ConfigError> {
        if self.compression == Compression::Zstd {
            return Err(crate::error::ConfigError::new(
                "--compression",
                "views are exported with EXPORT DATA, which cannot write zstd",
                "use --compression snappy or gzip with --views, or drop --views",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_holds_no_nested_or_repeated_column_and_the_others_hold_all() {
        let nested = [
            "STRUCT<a INT64>",
            "ARRAY<STRING>",
            "array<struct<k STRING>>",
        ];
        for data_type in nested {
            assert!(!Format::Csv.holds(data_type), "{data_type}");
            for other in [Format::Json, Format::Avro, Format::Parquet] {
                assert!(other.holds(data_type), "{other:?} {data_type}");
            }
        }
        for flat in ["INT64", "STRING", "NUMERIC(10, 2)", "RANGE<DATE>", "JSON"] {
            assert!(Format::Csv.holds(flat), "{flat}");
        }
        assert!(Format::Csv.refuses_some_types());
        assert!(!Format::Parquet.refuses_some_types());
    }

    #[test]
    fn compression_follows_bigquery_rules() {
        let mut o = ExportOptions {
            format: Format::Avro,
            compression: Compression::Gzip,
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("deflate, snappy"));
        o.compression = Compression::Snappy;
        o.validate().unwrap();
        o.format = Format::Parquet;
        o.compression = Compression::Zstd;
        o.validate().unwrap();
    }
}

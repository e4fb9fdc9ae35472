//! A SQLite table's definition (`_TABLE.json`): its columns from
//! `pragma_table_xinfo` (declared type, `NOT NULL` as `REQUIRED`, default
//! value), its partitioning from `_bqdrain_partitioning`, and a view's
//! query from `sqlite_master`. SQLite has no descriptions, labels,
//! clustering or policy tags: those stay empty.

use rusqlite::{Connection, OptionalExtension};

use super::partitions;
use crate::contract::message::SourceTable;
use crate::ports::definition::{Column, TableDefinition, TimePartitioning, DEFINITION_VERSION};
use crate::ports::warehouse::TableKind;

/// The definition of `source`'s table; `None` when there is no such table
/// or view.
pub fn read(conn: &Connection, source: &SourceTable) -> rusqlite::Result<Option<TableDefinition>> {
    let table = &source.table;
    let Some((kind, sql)) = conn
        .query_row(
            "SELECT type, sql FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?1",
            [table],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let sql = sql.unwrap_or_default();
    let table_type = match kind.as_str() {
        "view" => TableKind::View,
        _ if sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL") => TableKind::External,
        _ => TableKind::Table,
    };
    // Hidden columns (1) belong to virtual tables; generated ones (2, 3)
    // are read by `SELECT *` and so exported.
    let columns = conn
        .prepare_cached(
            "SELECT name, type, \"notnull\", dflt_value FROM pragma_table_xinfo(?1) \
             WHERE hidden != 1 ORDER BY cid",
        )?
        .query_map([table], |r| {
            Ok(Column {
                name: r.get(0)?,
                data_type: r.get(1)?,
                mode: if r.get::<_, bool>(2)? {
                    "REQUIRED"
                } else {
                    "NULLABLE"
                }
                .to_string(),
                fields: Vec::new(),
                description: None,
                default_value: r.get(3)?,
                policy_tags: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let time_partitioning =
        partitions::declared(conn)?
            .remove(table)
            .map(|declared| TimePartitioning {
                unit: serde_json::to_value(declared.unit)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                field: Some(declared.column),
                expiration_ms: None,
            });
    Ok(Some(TableDefinition {
        v: DEFINITION_VERSION,
        table: table.clone(),
        partition: source.partition.clone(),
        table_type,
        columns,
        time_partitioning,
        range_partitioning: None,
        require_partition_filter: false,
        clustering: Vec::new(),
        labels: Default::default(),
        description: None,
        view_query: (table_type == TableKind::View).then(|| view_query(&sql)),
    }))
}

/// The `SELECT` of a `CREATE VIEW name [(columns)] AS SELECT …` statement:
/// what follows its first `AS` keyword standing alone outside quotes (a
/// view's name or column list may hold one inside quotes).
fn view_query(create: &str) -> String {
    let mut quote: Option<char> = None;
    let chars: Vec<(usize, char)> = create.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if c == '[' => quote = Some(']'),
            None => {
                let boundary = |j: Option<&(usize, char)>| {
                    j.is_none_or(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
                };
                let word = create[at..]
                    .get(..2)
                    .is_some_and(|w| w.eq_ignore_ascii_case("as"));
                if word
                    && boundary(i.checked_sub(1).and_then(|p| chars.get(p)))
                    && boundary(chars.get(i + 2))
                {
                    return create[at + 2..].trim().to_string();
                }
            }
        }
    }
    create.to_string()
}

#[cfg(test)]
mod tests {
    use super::view_query;

    #[test]
    fn a_views_query_is_what_follows_its_as() {
        assert_eq!(
            view_query("CREATE VIEW v AS SELECT a FROM t"),
            "SELECT a FROM t"
        );
        assert_eq!(
            view_query("CREATE VIEW \"has as\" (x) as\n  SELECT a AS x FROM t"),
            "SELECT a AS x FROM t"
        );
        assert_eq!(view_query("create view [v as w] AS select 1"), "select 1");
    }
}

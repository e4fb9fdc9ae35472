//! Reads back the CSV the local warehouse writes: records end with `\n`
//! outside quotes, fields are split by a delimiter of any length, a quoted
//! field doubles its quotes and may hold delimiters and newlines. A field
//! keeps whether it was quoted: an unquoted empty field is NULL, a quoted
//! one (`""`) the empty string.

use std::io::BufRead;

pub struct CsvRecords<R> {
    reader: R,
    delimiter: Vec<u8>,
    line: Vec<u8>,
}

impl<R: BufRead> CsvRecords<R> {
    pub fn new(reader: R, delimiter: &[u8]) -> CsvRecords<R> {
        CsvRecords {
            reader,
            delimiter: delimiter.to_vec(),
            line: Vec::new(),
        }
    }

    /// The next record's fields (`None` for NULL), or `None` at the end.
    pub fn next_record(&mut self) -> std::io::Result<Option<Vec<Option<String>>>> {
        self.line.clear();
        loop {
            let read = self.reader.read_until(b'\n', &mut self.line)?;
            let quotes = self.line.iter().filter(|&&b| b == b'"').count();
            // An odd count of quotes: the newline read is inside a field.
            if read == 0 || quotes % 2 == 0 {
                break;
            }
        }
        if self.line.is_empty() {
            return Ok(None);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        Ok(Some(split_fields(&self.line, &self.delimiter)))
    }
}

fn split_fields(record: &[u8], delimiter: &[u8]) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let (field, next) = if record.get(at) == Some(&b'"') {
            let mut text = Vec::new();
            let mut i = at + 1;
            while i < record.len() {
                match (record[i], record.get(i + 1)) {
                    (b'"', Some(b'"')) => {
                        text.push(b'"');
                        i += 2;
                    }
                    (b'"', _) => {
                        i += 1;
                        break;
                    }
                    (b, _) => {
                        text.push(b);
                        i += 1;
                    }
                }
            }
            // Anything between the closing quote and the delimiter is kept.
            let end = find(record, delimiter, i).unwrap_or(record.len());
            text.extend_from_slice(&record[i..end]);
            (Some(String::from_utf8_lossy(&text).into_owned()), end)
        } else {
            let end = find(record, delimiter, at).unwrap_or(record.len());
            let raw = &record[at..end];
            let field = (!raw.is_empty()).then(|| String::from_utf8_lossy(raw).into_owned());
            (field, end)
        };
        fields.push(field);
        if next >= record.len() {
            return fields;
        }
        at = next + delimiter.len();
        if at == record.len() {
            fields.push(None);
            return fields;
        }
    }
}

/// Where `needle` first occurs in `haystack` from `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str, delimiter: &str) -> Vec<Vec<Option<String>>> {
        let mut reader = CsvRecords::new(text.as_bytes(), delimiter.as_bytes());
        let mut all = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            all.push(r);
        }
        all
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn reads_quotes_newlines_delimiters_and_nulls() {
        assert_eq!(
            records(
                "1|\"x|y\"|1.5\n|\"say \"\"hi\"\"\"|\n3|\"two\nlines\"|\"\"\n",
                "|"
            ),
            [
                vec![s("1"), s("x|y"), s("1.5")],
                vec![None, s("say \"hi\""), None],
                vec![s("3"), s("two\nlines"), s("")],
            ]
        );
        assert_eq!(
            records("a::b::\n::\n", "::"),
            [vec![s("a"), s("b"), None], vec![None, None]]
        );
        assert_eq!(records("", ","), Vec::<Vec<Option<String>>>::new());
        assert_eq!(records("\n", ","), [vec![None]]);
    }
}

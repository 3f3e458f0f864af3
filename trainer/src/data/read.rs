//! Finding data files and reading JSONL / JSON / CSV / TSV / TXT into rows.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::formats::{convert, detect, json_kind};
use super::{Content, DataError, DataFormat, DataSpec, FieldMap, ReadReport, Record, RowRef, TextMode};

/// Extensions read from a directory (case-insensitive).
const DATA_EXTENSIONS: &[&str] = &["jsonl", "ndjson", "json", "csv", "tsv", "txt"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Jsonl,
    Json,
    Csv,
    Tsv,
    Txt,
}

fn kind_of(path: &Path) -> Option<FileKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jsonl" | "ndjson" => FileKind::Jsonl,
        "json" => FileKind::Json,
        "csv" => FileKind::Csv,
        "tsv" => FileKind::Tsv,
        "txt" => FileKind::Txt,
        _ => return None,
    })
}

/// Read a data file, or every data file under a directory (a SageMaker channel).
///
/// Directories are walked recursively; files are taken in path order, hidden files
/// and directories (`.name`) and anything that is not `*.jsonl`, `*.ndjson`,
/// `*.json`, `*.csv`, `*.tsv` or `*.txt` (e.g. `README.md`) are ignored.
/// A single file with another extension is read as JSONL/JSON when it starts with
/// `{` / `[`.
///
/// With `format = auto` the format is detected per file from the keys of its first
/// record (see [`DataFormat`]); `.txt` files are always plain text.
pub fn read_path(path: &Path, spec: &DataSpec) -> Result<ReadReport, DataError> {
    let files = discover(path)?;
    let mut report = ReadReport::default();
    for file in &files {
        read_file(file, spec, &mut report)?;
    }
    report.files = files;
    report.format = match spec.format {
        DataFormat::Auto => report.file_formats.first().map(|(_, f)| *f).unwrap_or(DataFormat::Auto),
        forced => forced,
    };
    let mut seen: Vec<DataFormat> = report.file_formats.iter().map(|(_, f)| *f).collect();
    seen.dedup();
    if seen.len() > 1 {
        let list: Vec<String> =
            report.file_formats.iter().map(|(p, f)| format!("{} = {}", p.display(), f.name())).collect();
        tracing::warn!("the data files have different formats: {}", list.join(", "));
    }
    if report.records.is_empty() {
        return Err(DataError::EmptyDataset { path: path.to_path_buf(), skipped: report.skipped.len() });
    }
    Ok(report)
}

fn discover(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let meta =
        std::fs::metadata(path).map_err(|_| DataError::NoDataFiles { dir: path.to_path_buf(), ignored: vec![] })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut ignored = Vec::new();
    walk(path, path, &mut files, &mut ignored)?;
    files.sort();
    if files.is_empty() {
        ignored.sort();
        return Err(DataError::NoDataFiles { dir: path.to_path_buf(), ignored });
    }
    Ok(files)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>, ignored: &mut Vec<String>) -> Result<(), DataError> {
    let io = |source| DataError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follow symlinks (SageMaker may link channel files).
        let meta = std::fs::metadata(&p).map_err(|source| DataError::Io { path: p.clone(), source })?;
        if meta.is_dir() {
            walk(root, &p, files, ignored)?;
        } else if meta.is_file() {
            let wanted = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| DATA_EXTENSIONS.iter().any(|d| d.eq_ignore_ascii_case(e)));
            if wanted {
                files.push(p);
            } else {
                ignored.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
            }
        }
    }
    Ok(())
}

/// Read the file as UTF-8 text (BOM removed); invalid UTF-8 is reported with its line.
fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid].iter().filter(|b| **b == b'\n').count() + 1;
            return Err(DataError::BadRow {
                path: path.to_path_buf(),
                line,
                problem: format!("the file is not valid UTF-8 (byte offset {valid}); save it as UTF-8"),
            });
        }
    };
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// A row before format conversion: a JSON object, or why it is not one.
type RawRow = (usize, Result<Map<String, Value>, String>);

fn read_file(path: &Path, spec: &DataSpec, report: &mut ReadReport) -> Result<(), DataError> {
    let text = read_text(path)?;
    let kind = match kind_of(path) {
        Some(k) => k,
        None => match text.trim_start().chars().next() {
            Some('{') => FileKind::Jsonl,
            Some('[') => FileKind::Json,
            _ => {
                return Err(DataError::UnsupportedFile {
                    path: path.to_path_buf(),
                    problem: "unknown file type; name data files *.jsonl, *.json, *.csv, *.tsv or *.txt".into(),
                })
            }
        },
    };
    let rows: Vec<RawRow> = match kind {
        FileKind::Txt => return read_txt(path, &text, spec, report),
        FileKind::Jsonl => jsonl_rows(&text),
        FileKind::Json => json_rows(path, &text)?,
        FileKind::Csv => csv_rows(path, &text, b',')?,
        FileKind::Tsv => csv_rows(path, &text, b'\t')?,
    };
    let mut format = match spec.format {
        DataFormat::Auto => None,
        f => Some(f),
    };
    // A recognised column pair (e.g. dialogue/summary) maps the rest of the file the same way.
    let mut column_spec: Option<DataSpec> = None;
    for (line, row) in rows {
        let source = RowRef { file: path.to_path_buf(), line };
        let result =
            row.map_err(|problem| DataError::BadRow { path: path.to_path_buf(), line, problem }).and_then(|obj| {
                let f = match format {
                    Some(f) => f,
                    None => {
                        let found = detect(&obj, spec).ok_or_else(|| DataError::UnknownFormat {
                            path: path.to_path_buf(),
                            keys_seen: obj.keys().cloned().collect(),
                            mapping_help: spec.mapping_help.clone(),
                        })?;
                        if let Some((prompt, completion)) = found.columns {
                            tracing::info!(
                                "{}: using columns `{prompt}` as the prompt and `{completion}` as the completion",
                                path.display()
                            );
                            column_spec = Some(DataSpec {
                                fields: FieldMap {
                                    prompt: prompt.to_string(),
                                    completion: completion.to_string(),
                                    ..spec.fields.clone()
                                },
                                ..spec.clone()
                            });
                            report.column_pairs.push((path.to_path_buf(), prompt, completion));
                        }
                        format = Some(found.format);
                        found.format
                    }
                };
                convert(obj, f, column_spec.as_ref().unwrap_or(spec), source.clone())
            });
        match result {
            Ok(r) => report.records.push(r),
            Err(e @ (DataError::BadRow { .. } | DataError::MissingField { .. })) if spec.skip_bad_rows => {
                report.skipped.push((source, e.row_problem()));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(f) = format {
        report.file_formats.push((path.to_path_buf(), f));
    }
    Ok(())
}

fn read_txt(path: &Path, text: &str, spec: &DataSpec, report: &mut ReadReport) -> Result<(), DataError> {
    if !matches!(spec.format, DataFormat::Auto | DataFormat::Text) {
        return Err(DataError::UnsupportedFile {
            path: path.to_path_buf(),
            problem: format!(
                "a plain-text file can only be read as format `text`, but format is `{}`; remove the file from the channel or use format=auto/text",
                spec.format.name()
            ),
        });
    }
    let record = |text: &str, line: usize| Record {
        content: Content::Text(text.to_string()),
        extra: Map::new(),
        source: RowRef { file: path.to_path_buf(), line },
    };
    match spec.text_mode {
        TextMode::Lines => {
            for (i, line) in text.split('\n').enumerate() {
                let line_text = line.strip_suffix('\r').unwrap_or(line);
                if !line_text.trim().is_empty() {
                    report.records.push(record(line_text, i + 1));
                }
            }
        }
        TextMode::File => {
            if !text.trim().is_empty() {
                report.records.push(record(text, 1));
            }
        }
    }
    report.file_formats.push((path.to_path_buf(), DataFormat::Text));
    Ok(())
}

fn object_or_problem(v: Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(format!("expected a JSON object per record, found {}", json_kind(&other))),
    }
}

fn jsonl_rows(text: &str) -> Vec<RawRow> {
    text.split('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let row = serde_json::from_str::<Value>(l.trim_end_matches('\r'))
                .map_err(|e| format!("invalid JSON: {e}; every line of a JSONL file must be one JSON object"))
                .and_then(object_or_problem);
            (i + 1, row)
        })
        .collect()
}

fn json_rows(path: &Path, text: &str) -> Result<Vec<RawRow>, DataError> {
    let value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(e) => {
            // JSON Lines saved as *.json: the first line is a complete object.
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if text.trim_start().starts_with('{') && serde_json::from_str::<Map<String, Value>>(first.trim()).is_ok() {
                return Ok(jsonl_rows(text));
            }
            return Err(DataError::BadRow {
                path: path.to_path_buf(),
                line: e.line().max(1),
                problem: format!(
                    "invalid JSON (at line {}, column {}): {e}; a .json file must hold an array of objects",
                    e.line(),
                    e.column()
                ),
            });
        }
    };
    let elements = match value {
        Value::Array(a) => a,
        Value::Object(mut m) => {
            // {"data": [...]} / {"rows": [...]} wrappers.
            let wrapper = ["data", "rows", "examples", "train"]
                .into_iter()
                .find(|k| m.len() == 1 && m.get(*k).is_some_and(Value::is_array));
            match wrapper {
                Some(k) => match m.remove(k) {
                    Some(Value::Array(a)) => a,
                    _ => unreachable!("checked above"),
                },
                None => vec![Value::Object(m)],
            }
        }
        other => {
            return Err(DataError::BadRow {
                path: path.to_path_buf(),
                line: 1,
                problem: format!("expected an array of JSON objects, found {}", json_kind(&other)),
            })
        }
    };
    Ok(elements.into_iter().enumerate().map(|(i, v)| (i + 1, object_or_problem(v))).collect())
}

fn csv_rows(path: &Path, text: &str, delimiter: u8) -> Result<Vec<RawRow>, DataError> {
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).flexible(true).has_headers(true).from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| DataError::BadRow {
            path: path.to_path_buf(),
            line: 1,
            problem: format!("cannot read the header row: {e}"),
        })?
        .iter()
        .enumerate()
        .map(|(i, h)| if h.trim().is_empty() { format!("column{}", i + 1) } else { h.trim().to_string() })
        .collect();
    for (i, h) in headers.iter().enumerate() {
        if headers[..i].contains(h) {
            return Err(DataError::BadRow {
                path: path.to_path_buf(),
                line: 1,
                problem: format!("the header names column `{h}` twice; column names must be unique"),
            });
        }
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
                if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) && headers.len() > 1 {
                    continue; // a blank line
                }
                let row = if record.len() != headers.len() {
                    Err(format!(
                        "has {} field(s) but the header has {} ({}); check the delimiter and the quoting",
                        record.len(),
                        headers.len(),
                        headers.join(", ")
                    ))
                } else {
                    Ok(headers.iter().cloned().zip(record.iter().map(|f| Value::String(f.to_string()))).collect())
                };
                rows.push((line, row));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                return Err(DataError::BadRow {
                    path: path.to_path_buf(),
                    line,
                    problem: format!("cannot parse CSV: {e}"),
                });
            }
        }
    }
    Ok(rows)
}

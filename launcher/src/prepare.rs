//! `oxtune prepare-data`: CSV / JSON / JSONL / TXT → the trainer's JSONL (instruction or
//! messages) or Amazon Bedrock customisation JSONL (prompt/completion or
//! `bedrock-conversation-2024`), with validation and statistics.

use crate::error::Error;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Trainer JSONL `{"instruction", "output"[, "system"]}` (single turn).
    Instruction,
    /// Trainer JSONL `{"messages": [{"role", "content"}, …]}`.
    Messages,
    /// Trainer JSONL `{"text"}` for continued pre-training.
    Text,
    /// Bedrock `{"prompt", "completion"}` (single turn).
    Bedrock,
    /// Bedrock `bedrock-conversation-2024` (system + alternating user/assistant messages).
    BedrockConversation,
    /// Trainer JSONL `{"prompt", "completion"}` for sequence-to-sequence models (T5): the encoder's
    /// input and the decoder's target, single turn, a system prompt put in front of the input.
    Seq2seq,
}

#[derive(Debug, Clone, Default)]
pub struct FieldOverrides {
    pub prompt: Option<String>,
    pub completion: Option<String>,
    pub system: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// A file (CSV, TSV, JSON, JSONL, TXT) or a directory of them.
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    /// The trainer's data format name: auto, alpaca, prompt_completion, messages, sharegpt, text.
    pub format: String,
    pub to: Target,
    pub fields: FieldOverrides,
    /// TXT: the whole file is one document (else one example per line).
    pub text_file: bool,
    /// Only validate and report; write nothing.
    pub check_only: bool,
    /// A tokenizer / model directory for the token-length histogram.
    pub tokenizer: Option<PathBuf>,
    pub max_seq_length: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Chat { system: Option<String>, turns: Vec<(String, String)> },
    Text(String),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub input: String,
    pub output: Option<String>,
    pub detected_format: String,
    pub rows_read: usize,
    pub rows_written: usize,
    /// reason → input line/row numbers (1-based).
    pub dropped: BTreeMap<String, Vec<usize>>,
    pub notes: Vec<String>,
    pub chars_min: usize,
    pub chars_mean: f64,
    pub chars_max: usize,
    /// Filled when a tokenizer was given: token length → histogram bucket counts.
    pub token_lengths: Option<TokenStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenStats {
    pub tokenizer: String,
    pub total_tokens: u64,
    pub min: u64,
    pub mean: f64,
    pub max: u64,
    pub over_max_seq_length: u64,
    pub max_seq_length: u64,
    /// (upper bound inclusive, count) buckets.
    pub histogram: Vec<(u64, u64)>,
}

/// Read with the trainer's own reader (so the data is understood exactly as the job will
/// understand it); bad rows are skipped and reported instead of failing the whole file.
/// What `read_examples` found: the detected format name(s), the examples and the skipped rows,
/// each with its source row number.
struct ReadExamples {
    detected: String,
    examples: Vec<(usize, Example)>,
    skipped: Vec<(usize, String)>,
}

fn read_examples(opts: &PrepareOptions) -> Result<ReadExamples, Error> {
    let spec = data_spec(opts)?;
    let report = trainer::data::read_path(&opts.input, &spec).map_err(|e| Error::Invalid(e.to_string()))?;
    let detected = report
        .file_formats
        .iter()
        .map(|(_, f)| f.name().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join("+");
    // Which recognised column pair became prompt/completion (the trainer's one detection decides).
    let pairs: std::collections::BTreeSet<String> =
        report.column_pairs.iter().map(|(_, p, c)| format!(", columns `{p}` → prompt, `{c}` → completion")).collect();
    let detected = detected + &pairs.into_iter().collect::<String>();
    let examples = report
        .records
        .into_iter()
        .map(|r| {
            let ex = match r.content {
                trainer::data::Content::PromptCompletion { prompt, completion } => Example::Chat {
                    system: None,
                    turns: vec![("user".into(), prompt), ("assistant".into(), completion)],
                },
                trainer::data::Content::Messages(msgs) => {
                    let mut system = None;
                    let mut turns = Vec::new();
                    for m in msgs {
                        if m.role == "system" && turns.is_empty() {
                            system = Some(m.content);
                        } else {
                            turns.push((m.role, m.content));
                        }
                    }
                    Example::Chat { system, turns }
                }
                trainer::data::Content::Text(t) => Example::Text(t),
            };
            (r.source.line, ex)
        })
        .collect();
    let skipped = report.skipped.into_iter().map(|(row, why)| (row.line, why)).collect();
    Ok(ReadExamples { detected: if detected.is_empty() { "unknown".into() } else { detected }, examples, skipped })
}

/// The trainer's DataSpec for reading: format and field names from the flags, bad rows skipped.
pub fn data_spec(opts: &PrepareOptions) -> Result<trainer::data::DataSpec, Error> {
    let mut spec = trainer::data::DataSpec {
        skip_bad_rows: true,
        mapping_help: "or pass --prompt-field and --completion-field (and --format) to map your keys".into(),
        ..Default::default()
    };
    spec.format = opts.format.parse().map_err(Error::Invalid)?;
    if let Some(p) = &opts.fields.prompt {
        spec.fields.prompt = p.clone();
    }
    if let Some(c) = &opts.fields.completion {
        spec.fields.completion = c.clone();
    }
    if let Some(s) = &opts.fields.system {
        spec.fields.system = s.clone();
    }
    if opts.text_file {
        spec.text_mode = trainer::data::TextMode::File;
    }
    spec.max_seq_length = opts.max_seq_length;
    Ok(spec)
}

/// An example in the target format, or why not: the `Err` is the reason the row is dropped, which the
/// report counts per reason (not a failure of the command).
pub fn render(e: &Example, to: Target, notes: &mut BTreeMap<String, usize>) -> Result<Value, String> {
    match (e, to) {
        (Example::Text(t), Target::Text) => {
            if t.trim().is_empty() {
                return Err("empty text".into());
            }
            Ok(json!({ "text": t }))
        }
        (Example::Text(_), _) => Err("plain text has no prompt/response; use --to text".into()),
        (Example::Chat { system, turns }, _) => {
            if turns.is_empty() {
                return Err("no user/assistant messages".into());
            }
            if turns.iter().any(|(_, t)| t.trim().is_empty()) {
                return Err(if turns.first().is_some_and(|(_, t)| t.trim().is_empty()) {
                    "empty prompt".into()
                } else {
                    "empty response".into()
                });
            }
            if turns.last().map(|t| t.0.as_str()) != Some("assistant") {
                return Err("conversation does not end with an assistant message (nothing to learn)".into());
            }
            if to != Target::Messages {
                if let Some((role, _)) = turns.iter().find(|(r, _)| r != "user" && r != "assistant") {
                    return Err(format!("`{role}` messages cannot be written in this format; use --to messages"));
                }
                if turns[0].0 != "user" {
                    return Err("conversation does not start with a user message".into());
                }
                if turns.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err("roles do not alternate user/assistant".into());
                }
            }
            let single = turns.len() == 2;
            match to {
                Target::Text => Err("conversations are not plain text; use --to messages".into()),
                Target::Instruction | Target::Bedrock | Target::Seq2seq if !single => Err(format!(
                    "multi-turn conversation ({} messages) cannot be written as one prompt/response; use --to {}",
                    turns.len(),
                    match to {
                        Target::Bedrock => "bedrock-conversation",
                        Target::Seq2seq => "messages (a decoder-only model: T5 takes one input and one target)",
                        _ => "messages",
                    }
                )),
                Target::Instruction => {
                    let mut o = Map::new();
                    if let Some(s) = system {
                        o.insert("system".into(), json!(s));
                    }
                    o.insert("instruction".into(), json!(turns[0].1));
                    o.insert("output".into(), json!(turns[1].1));
                    Ok(Value::Object(o))
                }
                Target::Bedrock | Target::Seq2seq => {
                    let prompt = match system {
                        Some(s) => {
                            *notes
                                .entry(
                                    "system prompt merged into `prompt` (prompt/completion has no system field)".into(),
                                )
                                .or_default() += 1;
                            format!("{s}\n\n{}", turns[0].1)
                        }
                        None => turns[0].1.clone(),
                    };
                    Ok(json!({ "prompt": prompt, "completion": turns[1].1 }))
                }
                Target::Messages => {
                    let mut msgs = Vec::new();
                    if let Some(s) = system {
                        msgs.push(json!({ "role": "system", "content": s }));
                    }
                    msgs.extend(turns.iter().map(|(r, t)| json!({ "role": r, "content": t })));
                    Ok(json!({ "messages": msgs }))
                }
                Target::BedrockConversation => {
                    let mut o = Map::new();
                    o.insert("schemaVersion".into(), json!("bedrock-conversation-2024"));
                    if let Some(s) = system {
                        o.insert("system".into(), json!([{ "text": s }]));
                    }
                    o.insert(
                        "messages".into(),
                        Value::Array(
                            turns.iter().map(|(r, t)| json!({ "role": r, "content": [{ "text": t }] })).collect(),
                        ),
                    );
                    Ok(Value::Object(o))
                }
            }
        }
    }
}

pub fn default_output(input: &Path, to: Target) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "data".into());
    let suffix = match to {
        Target::Instruction => "instruction",
        Target::Messages => "messages",
        Target::Text => "text",
        Target::Bedrock => "bedrock",
        Target::BedrockConversation => "bedrock-conversation",
        Target::Seq2seq => "seq2seq",
    };
    input.with_file_name(format!("{stem}.{suffix}.jsonl"))
}

/// Convert and validate. Writes the output unless `check_only`.
pub fn prepare(opts: &PrepareOptions) -> Result<Report, Error> {
    let ReadExamples { detected, examples: records, skipped } = read_examples(opts)?;
    let output = if opts.check_only {
        None
    } else {
        Some(opts.output.clone().unwrap_or_else(|| default_output(&opts.input, opts.to)))
    };
    if let Some(o) = &output {
        if o == &opts.input {
            return Err(Error::Invalid(format!("the output {} would overwrite the input; pass -o", o.display())));
        }
    }
    let mut writer = match &output {
        Some(o) => Some(std::io::BufWriter::new(
            std::fs::File::create(o).map_err(|e| Error::Invalid(format!("cannot create {}: {e}", o.display())))?,
        )),
        None => None,
    };
    let mut report = Report {
        input: opts.input.display().to_string(),
        output: output.as_ref().map(|o| o.display().to_string()),
        detected_format: detected,
        chars_min: usize::MAX,
        ..Default::default()
    };
    let mut notes: BTreeMap<String, usize> = BTreeMap::new();
    let mut total_chars = 0usize;
    for (row, why) in skipped {
        report.rows_read += 1;
        report.dropped.entry(why).or_default().push(row);
    }
    for (row, example) in &records {
        report.rows_read += 1;
        let result = render(example, opts.to, &mut notes);
        match result {
            Ok(v) => {
                let line = serde_json::to_string(&v).map_err(|e| Error::Invalid(e.to_string()))?;
                let chars = example_chars(&v);
                total_chars += chars;
                report.chars_min = report.chars_min.min(chars);
                report.chars_max = report.chars_max.max(chars);
                if let Some(w) = writer.as_mut() {
                    writeln!(w, "{line}").map_err(|e| Error::Invalid(format!("write failed: {e}")))?;
                }
                report.rows_written += 1;
            }
            Err(reason) => report.dropped.entry(reason).or_default().push(*row),
        }
    }
    if let Some(mut w) = writer {
        w.flush().map_err(|e| Error::Invalid(format!("write failed: {e}")))?;
    }
    if report.rows_written == 0 {
        report.chars_min = 0;
    } else {
        report.chars_mean = total_chars as f64 / report.rows_written as f64;
    }
    report.notes = notes.into_iter().map(|(k, n)| format!("{k}: {n} rows")).collect();
    Ok(report)
}

fn example_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.iter().map(example_chars).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "schemaVersion")
            .map(|(_, v)| example_chars(v))
            .sum(),
        _ => 0,
    }
}

/// Power-of-two buckets up to `max_seq_length`, then one overflow bucket.
pub fn histogram(lengths: &[u64], max_seq_length: u64) -> TokenStats {
    let mut bounds = Vec::new();
    let mut b = 32u64;
    while b < max_seq_length {
        bounds.push(b);
        b *= 2;
    }
    bounds.push(max_seq_length);
    let mut counts = vec![0u64; bounds.len() + 1];
    for &l in lengths {
        let i = bounds.iter().position(|&ub| l <= ub).unwrap_or(bounds.len());
        counts[i] += 1;
    }
    let mut histogram: Vec<(u64, u64)> = bounds.iter().copied().zip(counts.iter().copied()).collect();
    histogram.push((u64::MAX, counts[bounds.len()]));
    let total: u64 = lengths.iter().sum();
    TokenStats {
        tokenizer: String::new(),
        total_tokens: total,
        min: lengths.iter().copied().min().unwrap_or(0),
        mean: if lengths.is_empty() { 0.0 } else { total as f64 / lengths.len() as f64 },
        max: lengths.iter().copied().max().unwrap_or(0),
        over_max_seq_length: counts[bounds.len()],
        max_seq_length,
        histogram,
    }
}

pub fn render_report(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!("input:   {} ({})\n", r.input, r.detected_format));
    if let Some(o) = &r.output {
        s.push_str(&format!("output:  {o}\n"));
    }
    let dropped: usize = r.dropped.values().map(Vec::len).sum();
    s.push_str(&format!("rows:    {} read, {} written, {} dropped\n", r.rows_read, r.rows_written, dropped));
    if r.rows_written > 0 {
        s.push_str(&format!(
            "chars:   min {} / mean {:.0} / max {} per example\n",
            r.chars_min, r.chars_mean, r.chars_max
        ));
    }
    for (reason, rows) in &r.dropped {
        let sample: Vec<String> = rows.iter().take(5).map(|n| n.to_string()).collect();
        s.push_str(&format!(
            "dropped: {} × {reason} (rows {}{})\n",
            rows.len(),
            sample.join(", "),
            if rows.len() > 5 { ", …" } else { "" }
        ));
    }
    for n in &r.notes {
        s.push_str(&format!("note:    {n}\n"));
    }
    if let Some(t) = &r.token_lengths {
        s.push_str(&format!(
            "tokens:  {} total; min {} / mean {:.0} / max {} per example ({})\n",
            t.total_tokens, t.min, t.mean, t.max, t.tokenizer
        ));
        let peak = t.histogram.iter().map(|(_, c)| *c).max().unwrap_or(1).max(1);
        let mut lo = 0;
        for (ub, c) in &t.histogram {
            let label = if *ub == u64::MAX { format!("> {}", t.max_seq_length) } else { format!("{lo:>5}–{ub:<5}") };
            s.push_str(&format!(
                "  {label:>13} {c:>7} {}\n",
                "█".repeat(((*c as f64 / peak as f64) * 40.0).round() as usize)
            ));
            lo = ub.saturating_add(1);
        }
        if t.over_max_seq_length > 0 {
            s.push_str(&format!(
                "  {} examples exceed max_seq_length {} and will be truncated\n",
                t.over_max_seq_length, t.max_seq_length
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(system: Option<&str>, turns: &[(&str, &str)]) -> Example {
        Example::Chat {
            system: system.map(str::to_string),
            turns: turns.iter().map(|(r, t)| (r.to_string(), t.to_string())).collect(),
        }
    }

    #[test]
    fn renders_targets_and_rejects_bad_rows() {
        let mut notes = BTreeMap::new();
        let e = chat(Some("S"), &[("user", "q"), ("assistant", "a")]);
        assert_eq!(
            render(&e, Target::Instruction, &mut notes).unwrap(),
            json!({"system": "S", "instruction": "q", "output": "a"})
        );
        assert_eq!(render(&e, Target::Bedrock, &mut notes).unwrap(), json!({"prompt": "S\n\nq", "completion": "a"}));
        assert_eq!(render(&e, Target::Seq2seq, &mut notes).unwrap(), json!({"prompt": "S\n\nq", "completion": "a"}));
        assert_eq!(
            render(&e, Target::BedrockConversation, &mut notes).unwrap(),
            json!({"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "S"}], "messages": [{"role": "user", "content": [{"text": "q"}]}, {"role": "assistant", "content": [{"text": "a"}]}]})
        );
        assert_eq!(
            render(&e, Target::Messages, &mut notes).unwrap(),
            json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
        );
        let multi = chat(None, &[("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")]);
        assert!(render(&multi, Target::Bedrock, &mut notes).unwrap_err().contains("bedrock-conversation"));
        assert!(render(&multi, Target::Seq2seq, &mut notes).unwrap_err().contains("T5 takes one input and one target"));
        assert!(render(&multi, Target::BedrockConversation, &mut notes).is_ok());
        let empty = chat(None, &[("user", "q"), ("assistant", " ")]);
        assert_eq!(render(&empty, Target::Messages, &mut notes).unwrap_err(), "empty response");
        let unanswered = chat(None, &[("user", "q")]);
        assert!(render(&unanswered, Target::Messages, &mut notes).unwrap_err().contains("assistant"));
        assert!(render(&Example::Text("t".into()), Target::Bedrock, &mut notes).unwrap_err().contains("--to text"));
    }

    fn opts(input: PathBuf, to: Target) -> PrepareOptions {
        PrepareOptions {
            input,
            output: None,
            format: "auto".into(),
            to,
            fields: FieldOverrides::default(),
            text_file: false,
            check_only: false,
            tokenizer: None,
            max_seq_length: 1024,
        }
    }

    #[test]
    fn csv_to_bedrock_with_dropped_rows() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("qa.csv");
        std::fs::write(
            &input,
            "question,answer\nWhat is 2+2?,4\n\"Capital of France?\",\"Paris, of course\"\nNo answer,\n",
        )
        .unwrap();
        let mut o = opts(input, Target::Bedrock);
        o.fields.prompt = Some("question".into());
        o.fields.completion = Some("answer".into());
        let r = prepare(&o).unwrap();
        assert_eq!((r.rows_read, r.rows_written), (3, 2), "{r:?}");
        assert_eq!(r.dropped["empty response"], vec![4]);
        let out = std::fs::read_to_string(d.path().join("qa.bedrock.jsonl")).unwrap();
        assert_eq!(out.lines().nth(1).unwrap(), r#"{"prompt":"Capital of France?","completion":"Paris, of course"}"#);
    }

    #[test]
    fn jsonl_messages_to_bedrock_conversation_and_bad_rows_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("chat.jsonl");
        std::fs::write(
            &input,
            concat!(
                r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#, "\n",
                "{not json\n",
                r#"{"prompt":"2+2?","completion":"4"}"#, "\n",
            ),
        )
        .unwrap();
        let r = prepare(&opts(input, Target::BedrockConversation)).unwrap();
        // The trainer decides the format per file from the first record (messages), so the
        // prompt/completion row is reported as missing `messages`, like in a training job.
        assert_eq!(r.rows_written, 1, "{r:?}");
        assert_eq!(r.dropped.len(), 2, "{r:?}");
        assert!(r.dropped.keys().any(|k| k.starts_with("invalid JSON")), "{r:?}");
        assert_eq!(
            r.dropped.iter().find(|(k, _)| k.contains("missing field `messages`")).map(|(_, v)| v.clone()),
            Some(vec![3])
        );
        let out = std::fs::read_to_string(d.path().join("chat.bedrock-conversation.jsonl")).unwrap();
        let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(first["system"], json!([{"text": "Be brief."}]));
        assert_eq!(first["messages"][1]["content"][0]["text"], "hello");
    }

    #[test]
    fn histogram_buckets() {
        let h = histogram(&[10, 40, 100, 600], 512);
        assert_eq!(h.histogram[0], (32, 1));
        assert_eq!(h.histogram[1], (64, 1));
        assert_eq!(h.histogram[2], (128, 1));
        assert_eq!(h.over_max_seq_length, 1);
        assert_eq!(h.max, 600);
    }
}

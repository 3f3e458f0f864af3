//! Training data: reading files in the supported formats, the tokenizer and chat
//! template, token masks (TRL rules), batching and the validation split.
//!
//! * [`read_path`] turns a file or a SageMaker channel directory into [`Record`]s.
//! * [`TokenizerBundle`] loads `tokenizer.json` (+ `tokenizer_config.json`,
//!   `chat_template.jinja`, `special_tokens_map.json`) and renders chat templates.
//! * [`tokenize`] turns records into [`Example`]s with a loss mask.
//! * [`make_batches`] shifts, packs or pads examples into [`Batch`]es.
//! * [`prompt_of`] turns a record into a generation prompt and its reference (GRPO, evaluation).
//! * [`seq2seq_examples`] turns records into encoder input / decoder target pairs (T5).
//! * [`TrainSet`] holds the examples of either kind and cuts them into [`MicroBatch`]es.
//!
//! The rules follow transformers/TRL (see `formats.md` §4 and §5 in the shared
//! reference): plain text and prompt/completion are tokenised with the special
//! tokens of the tokenizer's post-processor and get an EOS appended when missing;
//! chat data goes through the chat template and is tokenised without special tokens.

mod batch;
mod formats;
mod prompt;
mod read;
mod seq2seq;
mod template;
mod tokenize;
mod tokenizer;
mod train_set;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::choice::choice_enum;

pub use batch::{make_batches, split_validation, Batch, BatchSpec};
pub use prompt::{prompt_for, prompt_of, Prompt};
pub use read::read_path;
pub use seq2seq::{
    encoder_ids, encoder_prompt_of, make_seq2seq_batches, not_a_pair, pad_sources, seq2seq_examples, Seq2SeqBatch,
    Seq2SeqExample, Seq2SeqReport,
};
pub use tokenize::{
    tokenize, Example, TokenizeReport, MASK_ALL, MASK_GENERATION_TAGS, MASK_PREFIX_DIFF, MASK_PROMPT_PREFIX, MASK_TEXT,
};
pub use tokenizer::TokenizerBundle;
pub use train_set::{MicroBatch, TrainSet};

/// Errors of the data pipeline. Every variant names the file (and the row for row
/// errors) and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}; check that the file exists, is readable and is UTF-8 text", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", location(path, *line))]
    BadRow { path: PathBuf, line: usize, problem: String },
    #[error("{}: the dataset is empty (no usable rows{}); add training rows or check that the files are in the expected format", path.display(), skipped_text(*skipped))]
    EmptyDataset { path: PathBuf, skipped: usize },
    #[error("no data files in {}{}: put *.jsonl, *.json, *.csv, *.tsv or *.txt files there (or point the channel at the S3 prefix that holds them){}", dir.display(), if dir.exists() { "" } else { " (it does not exist)" }, ignored_text(ignored))]
    NoDataFiles { dir: PathBuf, ignored: Vec<String> },
    #[error("{}: cannot tell the data format from the keys of the first record ({}); accepted shapes: {}; {mapping_help}", path.display(), keys_text(keys_seen), accepted_shapes())]
    UnknownFormat { path: PathBuf, keys_seen: Vec<String>, mapping_help: String },
    #[error("{}: {problem}", path.display())]
    UnsupportedFile { path: PathBuf, problem: String },
    #[error("tokenizer {}: {problem}", path.display())]
    Tokenizer { path: PathBuf, problem: String },
    #[error("the tokenizer ({}) can produce token id {max_token_id} (vocabulary {tokenizer_vocab}), but the model ({}) has only {model_vocab} embeddings; use the tokenizer that belongs to this model", tokenizer_path.display(), config_path.display())]
    TokenizerModelMismatch {
        tokenizer_path: PathBuf,
        tokenizer_vocab: usize,
        max_token_id: u32,
        config_path: PathBuf,
        model_vocab: usize,
    },
    #[error("chat template: {problem}")]
    ChatTemplate { problem: String },
    #[error("{}: missing field `{field}` (available: {}); rename the key/column or set the matching `*_field` hyperparameter", location(path, *line), keys_text(available))]
    MissingField { path: PathBuf, line: usize, field: String, available: Vec<String> },
    /// A bug in oxtune, not in the input.
    #[error("internal error in the data pipeline: {problem}")]
    Internal { problem: String },
}

impl DataError {
    /// True when the error is caused by the input data, the tokenizer files or the
    /// configuration (the user can fix it); false for internal bugs.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, DataError::Internal { .. })
    }

    /// The row problem without the location prefix, for skip reports.
    fn row_problem(&self) -> String {
        match self {
            DataError::BadRow { problem, .. } => problem.clone(),
            DataError::MissingField { field, available, .. } => {
                format!("missing field `{field}` (available: {})", keys_text(available))
            }
            other => other.to_string(),
        }
    }
}

/// The shapes format detection accepts, for the "cannot tell the format" message; the column pairs
/// come from the detection's own list.
fn accepted_shapes() -> String {
    let pairs: Vec<String> = formats::COLUMN_PAIRS.iter().map(|(p, c)| format!("{p}/{c}")).collect();
    format!(
        "{{\"messages\": [{{\"role\", \"content\"}}]}} (OpenAI / Bedrock conversation), \
         {{\"conversations\": [{{\"from\", \"value\"}}]}} (ShareGPT), {{\"instruction\", \"input\"?, \"output\"}} (Alpaca), \
         {{\"prompt\", \"completion\"}}, a column pair ({}), {{\"text\"}}",
        pairs.join(", ")
    )
}

/// The trainer's way to map other keys, shown when the format cannot be detected.
pub const TRAINER_MAPPING_HELP: &str =
    "or set the `prompt_field` and `completion_field` hyperparameters (or `format` and the other `*_field` ones) to map your keys";

/// `file:line` for line-oriented files, `file (element N)` for JSON arrays.
pub(crate) fn location(path: &Path, line: usize) -> String {
    if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        format!("{} (record {line})", path.display())
    } else {
        format!("{}:{line}", path.display())
    }
}

fn keys_text(keys: &[String]) -> String {
    if keys.is_empty() {
        "no keys".into()
    } else {
        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    }
}

fn skipped_text(skipped: usize) -> String {
    if skipped > 0 {
        format!("; {skipped} bad row(s) were skipped, see the skip report above")
    } else {
        String::new()
    }
}

fn ignored_text(ignored: &[String]) -> String {
    if ignored.is_empty() {
        String::new()
    } else {
        let shown: Vec<_> = ignored.iter().take(5).cloned().collect();
        format!("; ignored: {}{}", shown.join(", "), if ignored.len() > 5 { ", …" } else { "" })
    }
}

choice_enum! {
    /// The shape of the training data (`format`).
    #[derive(Default)]
    pub enum DataFormat {
        /// Detect per file from the keys of its first record.
        #[default]
        Auto = "auto",
        /// `{"instruction", "input"?, "output"}` rendered with the Stanford Alpaca prompt.
        Alpaca = "alpaca",
        /// `{"prompt", "completion"}` (also Bedrock's non-conversational JSONL).
        PromptCompletion = "prompt_completion",
        /// OpenAI `{"messages": [...]}` and Bedrock `bedrock-conversation-2024`.
        Messages = "messages" | "chat" | "openai",
        /// `{"conversations": [{"from", "value"}]}`.
        ShareGpt = "sharegpt",
        /// `{"text"}` rows or plain `.txt` files.
        Text = "text",
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name as `prepare-data --format` takes it: also with `-` for `_`, empty for auto.
impl FromStr for DataFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim().replace('-', "_");
        if name.is_empty() {
            return Ok(DataFormat::Auto);
        }
        DataFormat::parse(&name).ok_or_else(|| {
            format!(
                "unknown data format `{s}`; use one of auto, alpaca, prompt_completion, messages (or chat, openai), sharegpt, text"
            )
        })
    }
}

choice_enum! {
    /// Which tokens carry the loss (`train_on`).
    #[derive(Default)]
    pub enum TrainOn {
        /// Only completion tokens (prompt/completion) or assistant turns (chat); all tokens for text.
        #[default]
        Completion = "completion",
        /// Every token.
        All = "all",
    }
}

choice_enum! {
    /// How `.txt` files are split into samples (`text_mode`).
    #[derive(Default)]
    pub enum TextMode {
        /// One sample per non-empty line.
        #[default]
        Lines = "lines",
        /// The whole file is one document (continued pretraining); documents longer than
        /// `max_seq_length` are cut into consecutive windows instead of truncated.
        File = "file",
    }
}

/// Key (JSON) or column (CSV/TSV) names of the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMap {
    pub prompt: String,
    pub completion: String,
    pub messages: String,
    pub text: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub system: String,
    pub conversations: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            prompt: "prompt".into(),
            completion: "completion".into(),
            messages: "messages".into(),
            text: "text".into(),
            instruction: "instruction".into(),
            input: "input".into(),
            output: "output".into(),
            system: "system".into(),
            conversations: "conversations".into(),
        }
    }
}

/// How to read and tokenise the data.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub format: DataFormat,
    pub fields: FieldMap,
    pub train_on: TrainOn,
    pub max_seq_length: usize,
    /// false: the first bad row is an error naming file:line; true: skip, count and report them.
    pub skip_bad_rows: bool,
    pub text_mode: TextMode,
    /// Accept rows with only a prompt (GRPO): they become prompt/completion with an empty completion.
    pub prompt_only: bool,
    /// What the running program offers to map other keys (its hyperparameters or its flags), shown
    /// when the format cannot be detected.
    pub mapping_help: String,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            format: DataFormat::Auto,
            fields: FieldMap::default(),
            train_on: TrainOn::Completion,
            max_seq_length: 1024,
            skip_bad_rows: false,
            text_mode: TextMode::Lines,
            prompt_only: false,
            mapping_help: TRAINER_MAPPING_HELP.to_string(),
        }
    }
}

/// Where a record came from. `line` is 1-based: the JSONL line, the CSV record's
/// first line, the JSON array element index + 1, or the TXT line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowRef {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for RowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&location(&self.file, self.line))
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// What a record holds after format conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    PromptCompletion { prompt: String, completion: String },
    Messages(Vec<Message>),
    Text(String),
}

/// One row of training data.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub content: Content,
    /// Every key/column not consumed by the format (GRPO passes them to reward functions).
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub source: RowRef,
}

/// The result of [`read_path`].
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    pub records: Vec<Record>,
    /// The forced format, or the detected format of the first file.
    pub format: DataFormat,
    pub files: Vec<PathBuf>,
    /// Rows skipped with `skip_bad_rows`, with the reason.
    pub skipped: Vec<(RowRef, String)>,
    /// The format of every file (files may differ when `format` is auto).
    pub file_formats: Vec<(PathBuf, DataFormat)>,
    /// Files whose prompt/completion came from a recognised column pair: (file, prompt, completion).
    pub column_pairs: Vec<(PathBuf, &'static str, &'static str)>,
}

/// SHA-256 (hex) of files' bytes in the given order, each preceded by its length: the data
/// fingerprint of the summary and of a tracked run (renaming a file keeps it, editing one does not).
pub fn fingerprint(files: &[PathBuf]) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let mut f = std::fs::File::open(path)?;
        h.update(f.metadata()?.len().to_le_bytes());
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Read and tokenise exactly as the job will; used by the launcher's estimate.
pub fn count_tokens(path: &Path, model_dir: &Path, spec: &DataSpec) -> Result<TokenizeReport, DataError> {
    let tok = TokenizerBundle::load(model_dir)?;
    let read = read_path(path, spec)?;
    tokenize(&read.records, &tok, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively() {
        for f in [
            DataFormat::Auto,
            DataFormat::Alpaca,
            DataFormat::PromptCompletion,
            DataFormat::Messages,
            DataFormat::ShareGpt,
            DataFormat::Text,
        ] {
            assert_eq!(f.name().to_uppercase().parse::<DataFormat>().unwrap(), f);
        }
        assert_eq!("Chat".parse::<DataFormat>().unwrap(), DataFormat::Messages);
        assert_eq!("OPENAI".parse::<DataFormat>().unwrap(), DataFormat::Messages);
        assert!("parquet".parse::<DataFormat>().unwrap_err().contains("sharegpt"));
        assert_eq!(TrainOn::parse("ALL"), Some(TrainOn::All));
        assert_eq!(TrainOn::parse("Completion"), Some(TrainOn::Completion));
        assert_eq!(TextMode::parse("File"), Some(TextMode::File));
        assert_eq!(TextMode::parse(" lines "), Some(TextMode::Lines));
    }

    #[test]
    fn locations() {
        assert_eq!(location(Path::new("/d/a.jsonl"), 3), "/d/a.jsonl:3");
        assert_eq!(location(Path::new("/d/a.json"), 3), "/d/a.json (record 3)");
    }
}

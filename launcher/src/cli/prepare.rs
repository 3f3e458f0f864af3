//! `oxtune prepare-data`: convert and validate training data with the trainer's own reader.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Failure, Res, EXIT_INVALID, EXIT_OK};

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Input file (CSV, TSV, JSON, JSONL, TXT) or directory.
    pub input: PathBuf,
    /// Output JSONL (default: <input>.<target>.jsonl).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "messages")]
    pub to: crate::prepare::Target,
    /// Input format: auto, alpaca, prompt_completion, messages, sharegpt, text.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Key/column of the prompt (or instruction).
    #[arg(long)]
    pub prompt_field: Option<String>,
    /// Key/column of the completion (or output).
    #[arg(long)]
    pub completion_field: Option<String>,
    #[arg(long)]
    pub system_field: Option<String>,
    /// TXT: the whole file is one document.
    #[arg(long)]
    pub text_file: bool,
    /// Validate and report only.
    #[arg(long)]
    pub check: bool,
    /// Tokenizer/model directory for a token-length histogram.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub max_seq_length: usize,
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(a: &PrepareArgs) -> Res {
    let opts = crate::prepare::PrepareOptions {
        input: a.input.clone(),
        output: a.output.clone(),
        format: a.format.clone(),
        to: a.to,
        fields: crate::prepare::FieldOverrides {
            prompt: a.prompt_field.clone(),
            completion: a.completion_field.clone(),
            system: a.system_field.clone(),
        },
        text_file: a.text_file,
        check_only: a.check,
        tokenizer: a.tokenizer.clone(),
        max_seq_length: a.max_seq_length,
    };
    let mut report = crate::prepare::prepare(&opts).map_err(Failure::invalid)?;
    if let (Some(tok), Some(out)) = (&a.tokenizer, report.output.clone()) {
        // Untruncated lengths, so examples over max_seq_length show up in the last bucket.
        let mut spec = crate::prepare::data_spec(&opts).map_err(Failure::invalid)?;
        spec.max_seq_length = 1 << 30;
        spec.skip_bad_rows = true;
        match crate::tokens::tokenize_file(Path::new(&out), tok, &spec) {
            Ok(t) => {
                let mut stats = crate::prepare::histogram(&t.lengths, a.max_seq_length as u64);
                stats.tokenizer = tok.display().to_string();
                report.token_lengths = Some(stats);
            }
            Err(e) => eprintln!("warning: no token histogram: {e}"),
        }
    } else if a.tokenizer.is_some() && a.check {
        eprintln!("note: the token histogram is computed on the converted output; run without --check");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", crate::prepare::render_report(&report));
    }
    Ok(if report.rows_written == 0 { EXIT_INVALID } else { EXIT_OK })
}

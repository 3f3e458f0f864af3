//! A record as a generation prompt: what the model is given (tokenised as training tokenised that
//! part) and, where the row has one, the reference answer. GRPO samples from these prompts and
//! evaluation scores completions of them against the reference.

use super::{Content, DataError, Record, TokenizerBundle};

/// One prompt, ready to generate from.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The prompt as the model sees it (chat rows: rendered with the template and the generation prompt).
    pub text: String,
    pub ids: Vec<u32>,
    /// The completion, or the last assistant turn of a chat row; `None` for plain text rows.
    pub reference: Option<String>,
    /// Tokens cut from the start to keep the prompt within the length asked for.
    pub truncated: usize,
}

/// The prompt a model of either kind is given: a decoder's ([`prompt_of`]) or, with `encoder`, a
/// T5 encoder's input ([`super::encoder_prompt_of`]).
pub fn prompt_for(
    record: &Record,
    tok: &TokenizerBundle,
    max_tokens: usize,
    encoder: bool,
) -> Result<Prompt, DataError> {
    match encoder {
        true => super::encoder_prompt_of(record, tok, max_tokens),
        false => prompt_of(record, tok, max_tokens),
    }
}

/// The prompt of `record`: prompt/completion rows as training encodes their prompt
/// (`encode(prompt, add_special_tokens=true)`), chat rows through the chat template without their
/// last assistant turn (which becomes the reference), text rows as they are. Prompts longer than
/// `max_tokens` keep their last `max_tokens` tokens (the question is at the end).
pub fn prompt_of(record: &Record, tok: &TokenizerBundle, max_tokens: usize) -> Result<Prompt, DataError> {
    let (text, ids, reference) = match &record.content {
        Content::PromptCompletion { prompt, completion } => {
            let reference = (!completion.is_empty()).then(|| completion.clone());
            (prompt.clone(), tok.encode(prompt, true)?, reference)
        }
        Content::Text(t) => (t.clone(), tok.encode(t, true)?, None),
        Content::Messages(msgs) => {
            let (prompt_msgs, reference) = match msgs.last() {
                Some(m) if m.role == "assistant" => (&msgs[..msgs.len() - 1], Some(m.content.clone())),
                _ => (&msgs[..], None),
            };
            let text = tok.render_chat(prompt_msgs, true)?;
            let ids = tok.encode(&text, false)?;
            (text, ids, reference)
        }
    };
    if ids.is_empty() {
        return Err(DataError::BadRow {
            path: record.source.file.clone(),
            line: record.source.line,
            problem: "empty prompt (no tokens to generate from)".into(),
        });
    }
    let keep = max_tokens.max(1);
    let truncated = ids.len().saturating_sub(keep);
    let ids = ids[truncated..].to_vec();
    Ok(Prompt { text, ids, reference, truncated })
}

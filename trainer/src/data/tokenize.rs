//! Records → token ids with a loss mask, following TRL's SFT rules (formats.md §4).

use super::{Content, DataError, DataSpec, Message, Record, RowRef, TextMode, TokenizerBundle, TrainOn};

/// Assistant spans from the template's `{% generation %}` blocks (as transformers'
/// `return_assistant_tokens_mask`).
pub const MASK_GENERATION_TAGS: &str = "chat: {% generation %} spans of the chat template";
/// Assistant spans from rendering each conversation prefix with and without the turn.
pub const MASK_PREFIX_DIFF: &str =
    "chat: prefix-diff (render messages[..k] with add_generation_prompt, then messages[..=k]; the difference is assistant turn k)";
/// Completion-only loss for prompt/completion rows (TRL `completion_only_loss`).
pub const MASK_PROMPT_PREFIX: &str =
    "prompt/completion: loss on the tokens after the common prefix of prompt and prompt+completion";
/// Plain text: every token is a target.
pub const MASK_TEXT: &str = "text: all tokens";
/// `train_on = all`.
pub const MASK_ALL: &str = "all tokens (train_on=all)";

/// One tokenised sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// 1 = this token is a training target (predicted from the tokens before it).
    /// The first token is never a target, whatever its mask says.
    pub loss_mask: Vec<u8>,
    pub source: RowRef,
}

impl Example {
    /// Tokens that are targets after the causal shift (mask over positions 1..).
    pub fn target_count(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|m| **m != 0).count()
    }
}

/// The result of [`tokenize`]. Token counts are over the final examples (after truncation).
#[derive(Debug, Clone, Default)]
pub struct TokenizeReport {
    pub examples: Vec<Example>,
    /// Samples cut to `max_seq_length` (the start is kept).
    pub truncated: usize,
    /// Samples dropped because no target token was left (e.g. the completion was truncated away).
    pub dropped_no_target: usize,
    pub total_tokens: usize,
    /// Target tokens after the causal shift (what the loss averages over).
    pub target_tokens: usize,
    /// How the loss mask was built (one of the `MASK_*` descriptions; chat rows take precedence).
    pub mask_method: &'static str,
    /// Rows that could not be tokenised (chat template errors, …), when `skip_bad_rows` is on.
    pub skipped: Vec<(RowRef, String)>,
    /// `.txt` documents (text_mode=file) longer than `max_seq_length`, cut into several windows.
    pub split_documents: usize,
    /// Assistant turns the prefix-diff method could not place because the chat template renders a
    /// turn differently once later turns follow (Qwen3, Phi-3, gpt-oss, …); they were located by
    /// searching their content in the rendered chat instead.
    pub searched_turns: usize,
}

/// Tokenise records into examples.
///
/// * Text: `encode(text, add_special_tokens=true)`, EOS appended when missing; all tokens are targets.
/// * Prompt/completion: `encode(prompt, true)` and `encode(prompt + completion, true)` (+ EOS when
///   missing); the common prefix is masked (0), the rest are targets.
/// * Messages: rendered with the chat template, encoded with `add_special_tokens=false`; targets
///   are the assistant turns, from `{% generation %}` spans when the template has them, else by the
///   prefix-diff method: for assistant turn k, `render(messages[..k], add_generation_prompt=true)`
///   and `render(messages[..=k])` differ by the turn (content + end-of-turn tokens), which is
///   located in the full render. When a template renders a turn differently once later turns follow
///   (not prefix-stable), the turn's content is searched in the full render instead (counted in
///   `searched_turns`). `train_on = all` makes every token a target.
///
/// Samples longer than `max_seq_length` keep their start; `.txt` documents read with
/// `text_mode = file` are instead cut into consecutive windows (one token of overlap, so every
/// token after the first is a target exactly once). Samples with no target left are dropped and
/// counted.
pub fn tokenize(records: &[Record], tok: &TokenizerBundle, spec: &DataSpec) -> Result<TokenizeReport, DataError> {
    let mut report = TokenizeReport::default();
    let has_chat = records.iter().any(|r| matches!(r.content, Content::Messages(_)));
    let has_pc = records.iter().any(|r| matches!(r.content, Content::PromptCompletion { .. }));
    if has_chat {
        tok.template()?; // no template / does not compile: one clear error, not one per row
    }
    report.mask_method = if records.is_empty() {
        ""
    } else if spec.train_on == TrainOn::All {
        MASK_ALL
    } else if has_chat {
        if tok.chat_template_has_generation() {
            MASK_GENERATION_TAGS
        } else {
            MASK_PREFIX_DIFF
        }
    } else if has_pc {
        MASK_PROMPT_PREFIX
    } else {
        MASK_TEXT
    };
    let max_len = spec.max_seq_length.max(2);
    for rec in records {
        let pieces = match tokenize_one(rec, tok, spec) {
            Ok(p) => p,
            Err(e) if spec.skip_bad_rows && matches!(e, DataError::BadRow { .. }) => {
                report.skipped.push((rec.source.clone(), e.row_problem()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let Tokenized { mut ids, mut mask, searched_turns } = pieces;
        report.searched_turns += searched_turns;
        let chunk_document = spec.text_mode == TextMode::File
            && matches!(rec.content, Content::Text(_))
            && rec.source.file.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("txt"));
        let mut windows = Vec::new();
        if ids.len() > max_len && chunk_document {
            report.split_documents += 1;
            let mut start = 0;
            loop {
                let end = (start + max_len).min(ids.len());
                windows.push((ids[start..end].to_vec(), mask[start..end].to_vec()));
                if end == ids.len() {
                    break;
                }
                start = end - 1;
            }
        } else {
            if ids.len() > max_len {
                ids.truncate(max_len);
                mask.truncate(max_len);
                report.truncated += 1;
            }
            windows.push((ids, mask));
        }
        for (input_ids, loss_mask) in windows {
            let ex = Example { input_ids, loss_mask, source: rec.source.clone() };
            let targets = ex.target_count();
            if targets == 0 {
                report.dropped_no_target += 1;
                continue;
            }
            report.total_tokens += ex.input_ids.len();
            report.target_tokens += targets;
            report.examples.push(ex);
        }
    }
    Ok(report)
}

fn row_error(rec: &Record, problem: String) -> DataError {
    DataError::BadRow { path: rec.source.file.clone(), line: rec.source.line, problem }
}

fn push_eos(tok: &TokenizerBundle, ids: &mut Vec<u32>) {
    if let Some(eos) = tok.eos_id() {
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
    }
}

struct Tokenized {
    ids: Vec<u32>,
    mask: Vec<u8>,
    /// Assistant turns located by content search (template not prefix-stable).
    searched_turns: usize,
}

fn tokenize_one(rec: &Record, tok: &TokenizerBundle, spec: &DataSpec) -> Result<Tokenized, DataError> {
    match &rec.content {
        Content::Text(text) => {
            let mut ids = tok.encode(text, true)?;
            push_eos(tok, &mut ids);
            let mask = vec![1; ids.len()];
            Ok(Tokenized { ids, mask, searched_turns: 0 })
        }
        Content::PromptCompletion { prompt, completion } => {
            let prompt_ids = tok.encode(prompt, true)?;
            let mut ids = tok.encode(&format!("{prompt}{completion}"), true)?;
            push_eos(tok, &mut ids);
            let prompt_len = match spec.train_on {
                TrainOn::All => 0,
                TrainOn::Completion => prompt_ids.iter().zip(&ids).take_while(|(a, b)| a == b).count(),
            };
            let mask = (0..ids.len()).map(|i| u8::from(i >= prompt_len)).collect();
            Ok(Tokenized { ids, mask, searched_turns: 0 })
        }
        Content::Messages(msgs) => chat(rec, msgs, tok, spec),
    }
}

/// Length in bytes of the common prefix of `a` and `b`, on a char boundary of both.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) || !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Where assistant turn `k` sits in `full` when the template is not prefix-stable
/// (`with` = render(messages[..=k]) is not a prefix of the full render, e.g. Qwen3 adds an
/// empty think block to the last turn only, Phi-3 writes EOS after the last turn).
/// The turn's content is searched after `from`; the span extends over the tokens that follow the
/// content in `with` (the end-of-turn tokens) as far as `full` agrees with them.
fn locate_by_content(
    tok: &TokenizerBundle,
    full: &str,
    before: &str,
    with: &str,
    content: &str,
    from: usize,
) -> Result<Option<(usize, usize)>, DataError> {
    let mut from = from.max(common_prefix(before, full)).min(full.len());
    while !full.is_char_boundary(from) {
        from -= 1;
    }
    for needle in [content, content.trim()] {
        let Some(pos) = full[from..].find(needle).map(|p| p + from) else { continue };
        let end = pos + needle.len();
        let tail = with.rfind(needle).map(|p| &with[p + needle.len()..]).unwrap_or("");
        // Whole tokens of the tail only: "<|end|>" must not half-match "<|user|>".
        let (_, pieces) = tok.encode_with_offsets(tail)?;
        let mut matched = 0;
        for (s, e) in pieces {
            if s != matched || !full[end + matched..].starts_with(&tail[s..e]) {
                break;
            }
            matched = e;
        }
        return Ok(Some((pos, end + matched)));
    }
    Ok(None)
}

fn chat(rec: &Record, msgs: &[Message], tok: &TokenizerBundle, spec: &DataSpec) -> Result<Tokenized, DataError> {
    let render = |m: &[Message], gen: bool| {
        tok.render_spans(m, gen).map_err(|e| match e {
            DataError::ChatTemplate { problem } => row_error(rec, format!("chat template: {problem}")),
            other => other,
        })
    };
    let full = render(msgs, false)?;
    let (ids, offsets) = tok.encode_with_offsets(&full.text)?;
    if spec.train_on == TrainOn::All {
        let mask = vec![1; ids.len()];
        return Ok(Tokenized { ids, mask, searched_turns: 0 });
    }
    let mut searched_turns = 0;
    let spans = if tok.chat_template_has_generation() {
        full.spans
    } else {
        let mut spans = Vec::new();
        let mut prev_end = 0;
        for (k, m) in msgs.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = render(&msgs[..k], true)?.text;
            let with = render(&msgs[..=k], false)?.text;
            let span = if full.text.starts_with(&with) {
                // Normally `before` (ending in the generation prompt) is a prefix of `with`; when
                // the template writes the assistant header differently, start where they diverge.
                (common_prefix(&before, &with).max(prev_end), with.len())
            } else {
                searched_turns += 1;
                locate_by_content(tok, &full.text, &before, &with, &m.content, prev_end)?.ok_or_else(|| {
                    row_error(
                        rec,
                        format!(
                            "cannot locate assistant turn {k}: the chat template renders it differently once later turns \
                             follow and its content is not found in the rendered chat; use a chat template with \
                             {{% generation %}} markers, or train_on=all"
                        ),
                    )
                })?
            };
            if span.1 > span.0 {
                spans.push(span);
                prev_end = span.1;
            }
        }
        spans
    };
    let mask = offsets
        .iter()
        .map(|&(s, e)| {
            let inside = spans.iter().any(|&(a, b)| if e > s { s < b && e > a } else { s >= a && s < b });
            u8::from(inside)
        })
        .collect();
    Ok(Tokenized { ids, mask, searched_turns })
}

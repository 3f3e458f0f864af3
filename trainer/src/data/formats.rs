//! Format detection and conversion of one JSON object / CSV row into a [`Record`].

use serde_json::{Map, Value};

use super::{Content, DataError, DataFormat, DataSpec, Message, Record, RowRef};

/// The Stanford Alpaca prompt with an input (stanford_alpaca train.py `prompt_input`).
pub const ALPACA_PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. \
Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
/// The Stanford Alpaca prompt without an input (stanford_alpaca train.py `prompt_no_input`).
pub const ALPACA_PROMPT_NO_INPUT: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// Column pairs public instruction and summarisation datasets use for prompt → completion, in the
/// order they are tried (SAMSum/DialogSum, QA sets, seq2seq sets, XSum, dialogue-response sets).
pub const COLUMN_PAIRS: &[(&str, &str)] = &[
    ("dialogue", "summary"),
    ("question", "answer"),
    ("input", "target"),
    ("source", "target"),
    ("document", "summary"),
    ("context", "response"),
    ("query", "response"),
];

/// A detected format; `columns` names the pair that maps onto prompt/completion when it was one of
/// [`COLUMN_PAIRS`] rather than the configured fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    pub format: DataFormat,
    pub columns: Option<(&'static str, &'static str)>,
}

/// The format of a row from its keys; `None` when no accepted shape matches.
///
/// Order: messages → conversations → instruction+output → prompt+completion → a known column pair
/// ([`COLUMN_PAIRS`]) → text → prompt alone (only with `prompt_only`) → instruction alone (only with
/// `prompt_only`). One detection for every reader of data: the trainer and `oxtune prepare-data`.
pub fn detect(obj: &Map<String, Value>, spec: &DataSpec) -> Option<Detection> {
    let f = &spec.fields;
    let has = |k: &str| obj.contains_key(k);
    let plain = |format| Some(Detection { format, columns: None });
    if has(&f.messages) {
        plain(DataFormat::Messages)
    } else if has(&f.conversations) {
        plain(DataFormat::ShareGpt)
    } else if has(&f.instruction) && has(&f.output) {
        plain(DataFormat::Alpaca)
    } else if has(&f.prompt) && has(&f.completion) {
        plain(DataFormat::PromptCompletion)
    } else if let Some(&(p, c)) = COLUMN_PAIRS.iter().find(|(p, c)| has(p) && has(c)) {
        Some(Detection { format: DataFormat::PromptCompletion, columns: Some((p, c)) })
    } else if has(&f.text) {
        plain(DataFormat::Text)
    } else if spec.prompt_only && has(&f.prompt) {
        plain(DataFormat::PromptCompletion)
    } else if spec.prompt_only && has(&f.instruction) {
        plain(DataFormat::Alpaca)
    } else {
        None
    }
}

/// "a string", "an array", …: what a JSON value is, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Row<'a> {
    obj: Map<String, Value>,
    source: RowRef,
    available: Vec<String>,
    spec: &'a DataSpec,
}

impl Row<'_> {
    fn bad(&self, problem: impl Into<String>) -> DataError {
        DataError::BadRow { path: self.source.file.clone(), line: self.source.line, problem: problem.into() }
    }

    fn missing(&self, field: &str) -> DataError {
        DataError::MissingField {
            path: self.source.file.clone(),
            line: self.source.line,
            field: field.to_string(),
            available: self.available.clone(),
        }
    }

    /// Remove a key; JSON null counts as absent.
    fn take(&mut self, key: &str) -> Option<Value> {
        match self.obj.remove(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A text field; numbers and booleans are written as text.
    fn text_value(&self, key: &str, v: Value) -> Result<String, DataError> {
        match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(self.bad(format!("field `{key}` must be text, found {}", json_kind(&other)))),
        }
    }

    fn required_text(&mut self, key: &str) -> Result<String, DataError> {
        let v = self.take(key).ok_or_else(|| self.missing(key))?;
        self.text_value(key, v)
    }

    fn optional_text(&mut self, key: &str) -> Result<Option<String>, DataError> {
        match self.take(key) {
            Some(v) => self.text_value(key, v).map(Some),
            None => Ok(None),
        }
    }

    /// The optional system prompt: a string, or Bedrock's `[{"text": ...}]`.
    fn system(&mut self) -> Result<Option<String>, DataError> {
        let key = self.spec.fields.system.clone();
        let s = match self.take(&key) {
            None => None,
            Some(Value::Array(parts)) => Some(self.parts_text(&key, parts)?),
            Some(v) => Some(self.text_value(&key, v)?),
        };
        Ok(s.filter(|s| !s.trim().is_empty()))
    }

    /// Text of a content-part list: `{"type": "text", "text": ...}` (OpenAI) or
    /// `{"text": ...}` (Bedrock), joined with "\n".
    fn parts_text(&self, what: &str, parts: Vec<Value>) -> Result<String, DataError> {
        let mut texts = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Value::String(s) => texts.push(s),
                Value::Object(mut p) => {
                    let ty = p.get("type").and_then(Value::as_str).unwrap_or("text").to_string();
                    match (ty.as_str(), p.remove("text")) {
                        ("text", Some(Value::String(t))) => texts.push(t),
                        ("text", _) => {
                            let keys: Vec<&str> = p.keys().map(String::as_str).collect();
                            return Err(self.bad(format!(
                                "{what}: only text content parts are supported, found a part with keys {keys:?}"
                            )));
                        }
                        (other, _) => {
                            return Err(self
                                .bad(format!("{what}: only text content parts are supported, found a `{other}` part")))
                        }
                    }
                }
                other => {
                    return Err(
                        self.bad(format!("{what}: a content part must be an object, found {}", json_kind(&other)))
                    )
                }
            }
        }
        Ok(texts.join("\n"))
    }

    /// A message list (a JSON array, or a JSON string holding one, as in CSV cells).
    fn message_list(&self, key: &str, v: Value) -> Result<Vec<Value>, DataError> {
        match v {
            Value::Array(a) => Ok(a),
            Value::String(s) if s.trim_start().starts_with('[') => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Array(a)) => Ok(a),
                _ => Err(self.bad(format!("field `{key}` holds text that is not a JSON list of messages"))),
            },
            other => Err(self.bad(format!("field `{key}` must be a list of messages, found {}", json_kind(&other)))),
        }
    }

    /// OpenAI / Bedrock messages: `{"role", "content"}` with string, null or part-list content.
    fn openai_messages(&self, key: &str, list: Vec<Value>) -> Result<Vec<Message>, DataError> {
        let mut out = Vec::with_capacity(list.len());
        for (i, m) in list.into_iter().enumerate() {
            let what = format!("{key}[{i}]");
            let Value::Object(mut m) = m else {
                return Err(
                    self.bad(format!("{what} must be an object with `role` and `content`, found {}", json_kind(&m)))
                );
            };
            let role = match m.remove("role") {
                Some(Value::String(r)) if !r.trim().is_empty() => r,
                Some(other) => {
                    return Err(self.bad(format!("{what}: `role` must be a non-empty string, found {other}")))
                }
                None => {
                    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                    return Err(
                        self.bad(format!("{what} has no `role` (keys: {keys:?}); messages need `role` and `content`"))
                    );
                }
            };
            let content = match m.remove("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s,
                Some(Value::Array(parts)) => self.parts_text(&what, parts)?,
                Some(other) => {
                    return Err(self.bad(format!(
                        "{what}: `content` must be text or a list of text parts, found {}",
                        json_kind(&other)
                    )))
                }
            };
            out.push(Message { role, content });
        }
        Ok(out)
    }

    /// ShareGPT turns: `{"from", "value"}` (or `{"role", "content"}`), roles mapped to OpenAI roles.
    fn sharegpt_messages(&self, key: &str, list: Vec<Value>) -> Result<Vec<Message>, DataError> {
        let mut out = Vec::with_capacity(list.len());
        for (i, m) in list.into_iter().enumerate() {
            let what = format!("{key}[{i}]");
            let Value::Object(mut m) = m else {
                return Err(
                    self.bad(format!("{what} must be an object with `from` and `value`, found {}", json_kind(&m)))
                );
            };
            let from = match m.remove("from").or_else(|| m.remove("role")) {
                Some(Value::String(r)) => r,
                Some(other) => return Err(self.bad(format!("{what}: `from` must be a string, found {other}"))),
                None => return Err(self.bad(format!("{what} has no `from`; ShareGPT turns need `from` and `value`"))),
            };
            let role = match from.trim().to_ascii_lowercase().as_str() {
                "human" | "user" => "user",
                "gpt" | "assistant" => "assistant",
                "system" => "system",
                "function_call" => "assistant",
                "observation" | "tool" => "tool",
                _ => {
                    return Err(self.bad(format!(
                        "{what}: unknown ShareGPT role `{from}`; use human, gpt, system, function_call or observation"
                    )))
                }
            };
            let content = match m.remove("value").or_else(|| m.remove("content")) {
                None | Some(Value::Null) => String::new(),
                Some(Value::Array(parts)) => self.parts_text(&what, parts)?,
                Some(v) => self.text_value(&format!("{what}.value"), v)?,
            };
            out.push(Message { role: role.to_string(), content });
        }
        Ok(out)
    }
}

fn with_system(mut msgs: Vec<Message>, system: Option<String>) -> Vec<Message> {
    if let Some(s) = system {
        if msgs.first().is_none_or(|m| m.role != "system") {
            msgs.insert(0, Message { role: "system".into(), content: s });
        }
    }
    msgs
}

/// Convert one row in the given format. Keys the format does not use go to `extra`.
pub(crate) fn convert(
    obj: Map<String, Value>,
    format: DataFormat,
    spec: &DataSpec,
    source: RowRef,
) -> Result<Record, DataError> {
    let available = obj.keys().cloned().collect();
    let mut row = Row { obj, source, available, spec };
    let f = &spec.fields;
    let content = match format {
        DataFormat::Auto => unreachable!("the format is detected before conversion"),
        DataFormat::Text => {
            let text = row.required_text(&f.text)?;
            if text.trim().is_empty() {
                return Err(row.bad(format!("field `{}` is empty", f.text)));
            }
            Content::Text(text)
        }
        DataFormat::Alpaca => {
            let instruction = row.required_text(&f.instruction)?;
            let input = row.optional_text(&f.input)?.unwrap_or_default();
            let output = if spec.prompt_only {
                row.optional_text(&f.output)?.unwrap_or_default()
            } else {
                row.required_text(&f.output)?
            };
            Content::PromptCompletion { prompt: alpaca_prompt(&instruction, &input), completion: output }
        }
        DataFormat::PromptCompletion => {
            let prompt = row.take(&f.prompt).ok_or_else(|| row.missing(&f.prompt))?;
            let completion = match row.take(&f.completion) {
                Some(v) => Some(v),
                None if spec.prompt_only => None,
                None => return Err(row.missing(&f.completion)),
            };
            let system = row.system()?;
            let prompt_list = match prompt {
                Value::Array(a) => Ok(a),
                Value::String(s) => match serde_json::from_str::<Value>(&s) {
                    // A CSV cell holding a JSON message list.
                    Ok(Value::Array(a)) if a.first().is_some_and(|m| m.get("role").is_some()) => Ok(a),
                    _ => Err(Value::String(s)),
                },
                other => Err(other),
            };
            match prompt_list {
                Ok(prompt_list) => {
                    // TRL conversational prompt/completion: message lists.
                    let mut msgs = row.openai_messages(&f.prompt, prompt_list)?;
                    match completion {
                        None => {}
                        Some(v @ Value::Array(_)) => {
                            let list = row.message_list(&f.completion, v)?;
                            msgs.extend(row.openai_messages(&f.completion, list)?);
                        }
                        Some(v) => {
                            msgs.push(Message { role: "assistant".into(), content: row.text_value(&f.completion, v)? })
                        }
                    }
                    Content::Messages(with_system(msgs, system))
                }
                Err(prompt) => {
                    let prompt = row.text_value(&f.prompt, prompt)?;
                    let completion = match completion {
                        Some(v) => row.text_value(&f.completion, v)?,
                        None => String::new(),
                    };
                    let prompt = match system {
                        Some(s) => format!("{s}\n\n{prompt}"),
                        None => prompt,
                    };
                    Content::PromptCompletion { prompt, completion }
                }
            }
        }
        DataFormat::Messages => {
            let v = row.take(&f.messages).ok_or_else(|| row.missing(&f.messages))?;
            let list = row.message_list(&f.messages, v)?;
            let msgs = row.openai_messages(&f.messages, list)?;
            let system = row.system()?;
            // Bedrock's schema marker is not a data column.
            if matches!(row.obj.get("schemaVersion"), Some(Value::String(s)) if s.starts_with("bedrock-conv")) {
                row.obj.remove("schemaVersion");
            }
            if msgs.is_empty() {
                return Err(row.bad(format!("field `{}` is an empty list", f.messages)));
            }
            Content::Messages(with_system(msgs, system))
        }
        DataFormat::ShareGpt => {
            let v = row.take(&f.conversations).ok_or_else(|| row.missing(&f.conversations))?;
            let list = row.message_list(&f.conversations, v)?;
            let msgs = row.sharegpt_messages(&f.conversations, list)?;
            let system = row.system()?;
            if msgs.is_empty() {
                return Err(row.bad(format!("field `{}` is an empty list", f.conversations)));
            }
            Content::Messages(with_system(msgs, system))
        }
    };
    Ok(Record { content, extra: row.obj, source: row.source })
}

/// The Stanford Alpaca prompt. Deviation from stanford_alpaca/train.py (whose prompt
/// ends at "### Response:" with no newline): the prompt here ends with
/// "### Response:\n" and the completion is `output` unchanged, so the newline belongs
/// to the (masked) prompt and the model learns only the response text.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        ALPACA_PROMPT_NO_INPUT.replace("{instruction}", instruction)
    } else {
        // Substitute `input` first so a literal "{input}" inside the instruction stays as is.
        let (head, tail) = ALPACA_PROMPT_INPUT.split_once("{input}").expect("template has {input}");
        format!("{}{input}{tail}", head.replace("{instruction}", instruction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_prompts_match_stanford_text() {
        assert_eq!(
            alpaca_prompt("Add.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Response:\n"
        );
        assert_eq!(
            alpaca_prompt("Add {input}.", "1 2"),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd {input}.\n\n### Input:\n1 2\n\n### Response:\n"
        );
    }
}

//! The data plane: the request body each serving container expects, its reply (whole or streamed)
//! and scoring a live endpoint on a test file with the in-job evaluation's scores.
//!
//! Bodies (shared/reference deploy-and-eval.md §3.2): a chat model gets the messages API on every
//! container; a plain prompt gets `{"inputs", "parameters"}` on LMI and TGI and the OpenAI
//! completions body (`prompt`) on the vLLM DLC. Greedy unless a temperature is given, like the job's
//! evaluation.

use std::path::Path;

use aws_sdk_sagemakerruntime::primitives::Blob;
use serde_json::{json, Value};

use super::serving::Container;
use crate::aws::{explain, Clients, ErrorContext};
use crate::error::Error;
use trainer::data::{Content, Message};
use trainer::eval::rouge::RougeOptions;
use trainer::eval::score::{score_text, CaseScores, ExactMatchOptions};

/// What one request asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A plain prompt, sent as it is.
    Text(String),
    /// Chat turns (the model's chat template is applied by the container).
    Chat(Vec<Message>),
}

#[derive(Debug, Clone)]
pub struct InvokeOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub system: Option<String>,
    pub stream: bool,
    /// LMI: the adapter to apply (`"adapters"` in the body), on an endpoint serving an unmerged one.
    pub adapter: Option<String>,
}

/// A `--prompt` for an endpoint: chat turns when the model has a chat template, else the text.
pub fn prompt_for(text: &str, chat: bool) -> Prompt {
    if chat {
        Prompt::Chat(vec![Message::new("user", text)])
    } else {
        Prompt::Text(text.to_string())
    }
}

/// The JSON body `container` expects for `prompt`.
pub fn request_body(container: Container, prompt: &Prompt, o: &InvokeOptions) -> Result<Value, Error> {
    let sampling = o.temperature > 0.0;
    let mut body = match prompt {
        Prompt::Chat(turns) => {
            let mut messages: Vec<Value> = Vec::new();
            if let Some(s) = &o.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.extend(turns.iter().map(|m| json!({"role": m.role, "content": m.content})));
            json!({"messages": messages, "max_tokens": o.max_new_tokens, "temperature": o.temperature})
        }
        Prompt::Text(text) => {
            if o.system.is_some() {
                return Err(Error::Invalid(
                    "--system needs a chat model (its tokenizer has a chat template); this endpoint takes plain prompts"
                        .into(),
                ));
            }
            match container {
                Container::Vllm => {
                    json!({"prompt": text, "max_tokens": o.max_new_tokens, "temperature": o.temperature})
                }
                Container::Lmi | Container::Tgi => {
                    let mut p =
                        json!({"max_new_tokens": o.max_new_tokens, "do_sample": sampling, "return_full_text": false});
                    if sampling {
                        p["temperature"] = json!(o.temperature);
                    }
                    json!({"inputs": text, "parameters": p})
                }
            }
        }
    };
    if o.stream {
        body["stream"] = json!(true);
    }
    if let Some(a) = &o.adapter {
        body["adapters"] = json!(a);
    }
    Ok(body)
}

/// The completion in a whole reply: `[{"generated_text"}]` (TGI), `{"generated_text"}` (LMI), or an
/// OpenAI chat or text completion.
pub fn completion_of(reply: &[u8]) -> Result<String, Error> {
    let shown = || String::from_utf8_lossy(&reply[..reply.len().min(300)]).to_string();
    let v: Value = serde_json::from_slice(reply)
        .map_err(|_| Error::Failed(format!("the endpoint's reply is not JSON: {}", shown())))?;
    let v = match &v {
        Value::Array(a) if !a.is_empty() => &a[0],
        _ => &v,
    };
    let text = v
        .get("generated_text")
        .or_else(|| v.pointer("/choices/0/message/content"))
        .or_else(|| v.pointer("/choices/0/text"))
        .and_then(Value::as_str);
    text.map(str::to_string).ok_or_else(|| Error::Failed(format!("no completion in the endpoint's reply: {}", shown())))
}

/// Tokens out of a response stream whose payload parts may cut lines anywhere: JSON lines (LMI)
/// or server-sent events (`data: {...}`, TGI, vLLM, LMI's TGI mode).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    streamed: bool,
}

impl StreamDecoder {
    /// The text pieces completed by `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            out.extend(self.line(&line));
        }
        out
    }

    /// What is left once the stream ends (a last line without a newline).
    pub fn finish(&mut self) -> Vec<String> {
        let rest = std::mem::take(&mut self.pending);
        self.line(&rest).into_iter().collect()
    }

    fn line(&mut self, raw: &[u8]) -> Option<String> {
        let line = String::from_utf8_lossy(raw);
        let line = line.trim();
        let line = line.strip_prefix("data:").map(str::trim).unwrap_or(line);
        if line.is_empty() || line == "[DONE]" || line.starts_with("event:") || line.starts_with(':') {
            return None;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else { return Some(line.to_string()) };
        let piece = if let Some(tok) = v.get("token") {
            if tok.get("special").and_then(Value::as_bool) == Some(true) {
                None
            } else {
                tok.get("text").and_then(Value::as_str)
            }
        } else if let Some(c) = v.pointer("/choices/0/delta/content").or_else(|| v.pointer("/choices/0/text")) {
            c.as_str()
        } else if !self.streamed {
            // A final summary (`generated_text`) counts only when no token came before it.
            v.get("generated_text").and_then(Value::as_str)
        } else {
            None
        };
        let piece = piece?.to_string();
        self.streamed = true;
        Some(piece)
    }
}

fn invoke_ctx(clients: &Clients, op: &str) -> ErrorContext {
    ErrorContext { operation: op.into(), region: clients.region.clone(), ..Default::default() }
}

/// A container error, with the status, message and log stream SageMaker passes on.
fn model_error(endpoint: &str, status: Option<i32>, message: Option<&str>, log: Option<&str>) -> Error {
    Error::Failed(format!(
        "endpoint {endpoint}: the model container answered {}{}{}",
        status.map(|s| format!("HTTP {s}")).unwrap_or_else(|| "an error".into()),
        message.map(|m| format!(": {m}")).unwrap_or_default(),
        log.map(|l| format!("\n  its log: {l}")).unwrap_or_default()
    ))
}

/// InvokeEndpoint: the completion of one request.
pub async fn invoke(clients: &Clients, endpoint: &str, body: &Value) -> Result<String, Error> {
    use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
    let out = clients
        .runtime
        .invoke_endpoint()
        .endpoint_name(endpoint)
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(serde_json::to_vec(body).unwrap_or_default()))
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(InvokeEndpointError::ModelError(m)) => {
                model_error(endpoint, m.original_status_code(), m.original_message(), m.log_stream_arn())
            }
            _ => explain(&e, &invoke_ctx(clients, "InvokeEndpoint")),
        })?;
    completion_of(out.body().map(|b| b.as_ref()).unwrap_or_default())
}

/// InvokeEndpointWithResponseStream: `on_piece` gets each piece of text as it arrives; returns the
/// whole completion.
pub async fn invoke_stream(
    clients: &Clients,
    endpoint: &str,
    body: &Value,
    on_piece: &mut dyn FnMut(&str),
) -> Result<String, Error> {
    use aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamError as E;
    use aws_sdk_sagemakerruntime::types::error::ResponseStreamError;
    use aws_sdk_sagemakerruntime::types::ResponseStream;
    let op = "InvokeEndpointWithResponseStream";
    let mut out = clients
        .runtime
        .invoke_endpoint_with_response_stream()
        .endpoint_name(endpoint)
        .content_type("application/json")
        .body(Blob::new(serde_json::to_vec(body).unwrap_or_default()))
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(E::ModelError(m)) => {
                model_error(endpoint, m.original_status_code(), m.original_message(), m.log_stream_arn())
            }
            Some(E::ModelStreamError(m)) => model_error(endpoint, None, m.message(), None),
            _ => explain(&e, &invoke_ctx(clients, op)),
        })?;
    let mut decoder = StreamDecoder::default();
    let mut text = String::new();
    let mut emit = |pieces: Vec<String>, text: &mut String| {
        for p in pieces {
            on_piece(&p);
            text.push_str(&p);
        }
    };
    loop {
        let event = out.body.recv().await.map_err(|e| match e.as_service_error() {
            Some(ResponseStreamError::ModelStreamError(m)) => model_error(endpoint, None, m.message(), None),
            _ => explain(&e, &invoke_ctx(clients, op)),
        })?;
        match event {
            Some(ResponseStream::PayloadPart(part)) => {
                let pieces = decoder.feed(part.bytes().map(|b| b.as_ref()).unwrap_or_default());
                emit(pieces, &mut text);
            }
            Some(_) => {}
            None => break,
        }
    }
    emit(decoder.finish(), &mut text);
    Ok(text)
}

/// One row of a prompts file.
#[derive(Debug, Clone)]
pub struct Case {
    pub prompt: Prompt,
    pub reference: Option<String>,
    /// `file:line`, for messages.
    pub source: String,
}

/// Read a prompts file in any format the trainer reads (prompt/completion, alpaca, question/answer,
/// chat messages, CSV …): chat rows are sent as chat turns (a final assistant turn is the
/// reference), the rest as plain prompts, as the job's evaluation sees them.
pub fn read_cases(path: &Path) -> Result<Vec<Case>, Error> {
    let spec = trainer::data::DataSpec { prompt_only: true, ..Default::default() };
    let read = trainer::data::read_path(path, &spec)?;
    let cases = read
        .records
        .into_iter()
        .map(|r| {
            let source = format!("{}:{}", r.source.file.display(), r.source.line);
            match r.content {
                Content::PromptCompletion { prompt, completion } => Case {
                    prompt: Prompt::Text(prompt),
                    reference: (!completion.is_empty()).then_some(completion),
                    source,
                },
                Content::Text(t) => Case { prompt: Prompt::Text(t), reference: None, source },
                Content::Messages(mut turns) => {
                    let reference = match turns.last() {
                        Some(m) if m.role == "assistant" => turns.pop().map(|m| m.content),
                        _ => None,
                    };
                    Case { prompt: Prompt::Chat(turns), reference, source }
                }
            }
        })
        .collect::<Vec<_>>();
    if cases.is_empty() {
        return Err(Error::Invalid(format!("{}: no prompts in the file", path.display())));
    }
    Ok(cases)
}

/// The in-job evaluation's per-case scores (exact match and ROUGE, default options).
pub fn score(reference: &str, prediction: &str) -> CaseScores {
    score_text(reference, prediction, ExactMatchOptions::default(), RougeOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InvokeOptions {
        InvokeOptions { max_new_tokens: 64, temperature: 0.0, system: None, stream: false, adapter: None }
    }

    #[test]
    fn bodies_per_container() {
        let text = Prompt::Text("Summarise: a b c".into());
        let lmi = request_body(Container::Lmi, &text, &opts()).unwrap();
        assert_eq!(
            lmi,
            json!({"inputs": "Summarise: a b c", "parameters": {"max_new_tokens": 64, "do_sample": false, "return_full_text": false}})
        );
        let sampled =
            request_body(Container::Tgi, &text, &InvokeOptions { temperature: 0.7, stream: true, ..opts() }).unwrap();
        assert_eq!(sampled["parameters"]["temperature"], json!(0.7));
        assert_eq!((sampled["parameters"]["do_sample"].clone(), sampled["stream"].clone()), (json!(true), json!(true)));
        let vllm = request_body(Container::Vllm, &text, &opts()).unwrap();
        assert_eq!(vllm, json!({"prompt": "Summarise: a b c", "max_tokens": 64, "temperature": 0.0}));
        let chat = prompt_for("Hi", true);
        let c =
            request_body(Container::Lmi, &chat, &InvokeOptions { system: Some("Be brief.".into()), ..opts() }).unwrap();
        assert_eq!(
            c["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        );
        assert_eq!(c["max_tokens"], json!(64));
        let e = request_body(Container::Lmi, &text, &InvokeOptions { system: Some("x".into()), ..opts() }).unwrap_err();
        assert!(e.is_invalid_input() && e.to_string().contains("chat model"));
        let a =
            request_body(Container::Lmi, &text, &InvokeOptions { adapter: Some("tuned".into()), ..opts() }).unwrap();
        assert_eq!(a["adapters"], json!("tuned"));
    }

    #[test]
    fn replies() {
        assert_eq!(completion_of(br#"[{"generated_text":"tgi"}]"#).unwrap(), "tgi");
        assert_eq!(completion_of(br#"{"generated_text":"lmi"}"#).unwrap(), "lmi");
        assert_eq!(
            completion_of(br#"{"choices":[{"message":{"role":"assistant","content":"chat"}}]}"#).unwrap(),
            "chat"
        );
        assert_eq!(completion_of(br#"{"choices":[{"text":"done"}]}"#).unwrap(), "done");
        assert!(completion_of(b"<html>").unwrap_err().to_string().contains("not JSON"));
        assert!(completion_of(br#"{"error":"x"}"#).unwrap_err().to_string().contains("no completion"));
    }

    #[test]
    fn streams_cut_anywhere() {
        // LMI JSON lines, split mid-line and mid-UTF-8 character; then the final summary is ignored.
        let stream = "{\"token\":{\"text\":\"Hé\"}}\n{\"token\":{\"text\":\"llo\"}}\n{\"token\":{\"text\":\"</s>\",\"special\":true},\"generated_text\":\"Héllo\"}\n";
        let bytes = stream.as_bytes();
        let mut d = StreamDecoder::default();
        let mut got = String::new();
        for chunk in bytes.chunks(3) {
            got.extend(d.feed(chunk));
        }
        got.extend(d.finish());
        assert_eq!(got, "Héllo");
        // Server-sent events of OpenAI chat chunks, the last line without a newline.
        let sse = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\ndata: [DONE]";
        let mut d = StreamDecoder::default();
        let mut got: Vec<String> = d.feed(sse.as_bytes());
        got.extend(d.finish());
        assert_eq!(got.concat(), "Hi there");
        // A reply that only has the summary still gives the text.
        let mut d = StreamDecoder::default();
        assert_eq!(d.feed(b"{\"generated_text\":\"all at once\"}\n").concat(), "all at once");
    }

    #[test]
    fn prompt_files_in_trainer_formats() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.jsonl");
        std::fs::write(&p, "{\"prompt\":\"2+2=\",\"completion\":\"4\"}\n{\"prompt\":\"only a prompt\"}\n").unwrap();
        let cases = read_cases(&p).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!((cases[0].prompt.clone(), cases[0].reference.as_deref()), (Prompt::Text("2+2=".into()), Some("4")));
        assert_eq!(cases[1].reference, None);
        assert!(cases[1].source.ends_with("t.jsonl:2"));
        let chat = d.path().join("chat.jsonl");
        std::fs::write(
            &chat,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello\"}]}\n",
        )
        .unwrap();
        let cases = read_cases(&chat).unwrap();
        assert_eq!(cases[0].prompt, Prompt::Chat(vec![Message::new("user", "Hi")]));
        assert_eq!(cases[0].reference.as_deref(), Some("Hello"));
        let s = score("The cat sat.", "the cat sat");
        assert_eq!((s.rouge1, s.exact_match), (1.0, 0.0));
        std::fs::write(&p, "{\"prompt\": 3\n").unwrap();
        assert!(read_cases(&p).unwrap_err().to_string().contains("t.jsonl"));
    }
}

//! The tokenizer of a Hugging Face model directory, its special tokens and its chat template.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use super::template::{ChatTemplate, Rendered, SpecialTokens};
use super::{DataError, Message};

/// Files copied next to an adapter so the output directory is self-contained.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// Token ids and their byte offsets `(start, end)` in the encoded text.
pub(crate) type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// `tokenizer.json` plus the settings transformers keeps next to it.
pub struct TokenizerBundle {
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    files: Vec<PathBuf>,
    special: SpecialTokens,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    /// `add_bos_token` / `add_eos_token` from tokenizer_config.json (None = as the post-processor does).
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    /// The chat template, if any: compiled, or why it does not compile.
    template: Option<Result<ChatTemplate, String>>,
    template_origin: Option<PathBuf>,
    max_id: u32,
    vocab_size: usize,
}

impl std::fmt::Debug for TokenizerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerBundle")
            .field("tokenizer", &self.tokenizer_path)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.special.bos_token)
            .field("eos", &self.special.eos_token)
            .field("pad", &self.special.pad_token)
            .field("chat_template", &self.template_origin)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, DataError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map(Some).map_err(|e| DataError::Tokenizer {
        path: path.to_path_buf(),
        problem: format!("invalid JSON: {e}; restore the file from the model repository"),
    })
}

/// A special token given as a string or as an AddedToken object `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TokenizerBundle {
    /// Load `tokenizer.json` (required) from `model_dir`, with `tokenizer_config.json`
    /// (special tokens, `add_bos_token`/`add_eos_token`, `chat_template` as a string or a
    /// list of `{name, template}`), `chat_template.jinja` (preferred over the config's
    /// template) and `special_tokens_map.json` (fallback for the special tokens).
    /// `generation_config.json` is not read: its EOS ids matter for generation only.
    pub fn load(model_dir: &Path) -> Result<Self, DataError> {
        let tokenizer_path = model_dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(DataError::Tokenizer {
                path: tokenizer_path,
                problem:
                    "not found; the model directory must contain the Hugging Face fast-tokenizer file tokenizer.json \
                          (convert a slow tokenizer with transformers' AutoTokenizer(...).save_pretrained())"
                        .into(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| DataError::Tokenizer {
            path: tokenizer_path.clone(),
            problem: format!("cannot load: {e}; the file may be corrupt or from an unsupported tokenizers version"),
        })?;
        // Truncation/padding stored in tokenizer.json would silently cut or pad samples.
        tokenizer
            .with_truncation(None)
            .map_err(|e| DataError::Tokenizer { path: tokenizer_path.clone(), problem: e.to_string() })?;
        tokenizer.with_padding(None);

        let config_path = model_dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?.unwrap_or(Value::Null);
        let map_path = model_dir.join("special_tokens_map.json");
        let special_map = read_json(&map_path)?.unwrap_or(Value::Null);
        let special_token = |key: &str| -> Option<String> {
            match config.get(key) {
                Some(v) => token_string(Some(v)),
                None => token_string(special_map.get(key)),
            }
        };
        let special = SpecialTokens {
            bos_token: special_token("bos_token"),
            eos_token: special_token("eos_token"),
            pad_token: special_token("pad_token"),
            unk_token: special_token("unk_token"),
        };
        let id_of = |tok: &Option<String>| tok.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let (bos_id, eos_id, pad_id) =
            (id_of(&special.bos_token), id_of(&special.eos_token), id_of(&special.pad_token));

        // Chat template: chat_template.jinja first, then tokenizer_config.json.
        let jinja_path = model_dir.join("chat_template.jinja");
        let (template_source, template_origin) = if jinja_path.is_file() {
            let s = std::fs::read_to_string(&jinja_path)
                .map_err(|source| DataError::Io { path: jinja_path.clone(), source })?;
            (Some(s), Some(jinja_path))
        } else {
            let t = match config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => {
                    let named = |name: &str| {
                        list.iter()
                            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                            .and_then(|t| t.get("template").and_then(Value::as_str))
                    };
                    named("default")
                        .or_else(|| list.first().and_then(|t| t.get("template").and_then(Value::as_str)))
                        .map(str::to_string)
                }
                _ => None,
            };
            let origin = t.as_ref().map(|_| config_path.clone());
            (t, origin)
        };
        let template = template_source.map(|s| ChatTemplate::compile(&s));

        let vocab = tokenizer.get_vocab(true);
        let max_id = vocab.values().copied().max().unwrap_or(0);
        let vocab_size = vocab.len().max(max_id as usize + 1);
        let files = TOKENIZER_FILES.iter().map(|f| model_dir.join(f)).filter(|p| p.is_file()).collect();
        Ok(TokenizerBundle {
            tokenizer,
            tokenizer_path,
            files,
            special,
            bos_id,
            eos_id,
            pad_id,
            add_bos: config.get("add_bos_token").and_then(Value::as_bool),
            add_eos: config.get("add_eos_token").and_then(Value::as_bool),
            template,
            template_origin,
            max_id,
            vocab_size,
        })
    }

    /// Number of token ids the tokenizer knows, added tokens included (highest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The pad token, else EOS, else 0 (padding is masked out either way).
    pub fn pad_id(&self) -> u32 {
        self.pad_id.or(self.eos_id).unwrap_or(0)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.special.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos_token.as_deref()
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> DataError {
        DataError::Tokenizer { path: self.tokenizer_path.clone(), problem: format!("encoding failed: {e}") }
    }

    /// Token ids of `text`. With `add_special_tokens` the post-processor runs (e.g. adds
    /// BOS), and `add_bos_token`/`add_eos_token` from tokenizer_config.json are honoured.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, DataError> {
        let enc = self.tokenizer.encode(text, add_special_tokens).map_err(|e| self.tok_err(e))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            self.apply_bos_eos_flags(text, &mut ids)?;
        }
        Ok(ids)
    }

    fn apply_bos_eos_flags(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), DataError> {
        let bos = self.bos_id.filter(|_| self.add_bos.is_some());
        let eos = self.eos_id.filter(|_| self.add_eos.is_some());
        if bos.is_none() && eos.is_none() {
            return Ok(());
        }
        // Only when a flag says "no" and the token is there: was it added, or written in the text?
        let needs_plain = (self.add_bos == Some(false) && bos.is_some() && ids.first() == bos.as_ref())
            || (self.add_eos == Some(false) && eos.is_some() && ids.last() == eos.as_ref());
        let plain = if needs_plain {
            self.tokenizer.encode(text, false).map_err(|e| self.tok_err(e))?.get_ids().to_vec()
        } else {
            vec![]
        };
        if let Some(bos) = bos {
            match self.add_bos {
                Some(true) if ids.first() != Some(&bos) => ids.insert(0, bos),
                // Drop a BOS the post-processor put in front of the text's own tokens.
                Some(false) if ids.first() == Some(&bos) && ids.len() > plain.len() && ids[1..].starts_with(&plain) => {
                    ids.remove(0);
                }
                _ => {}
            }
        }
        if let Some(eos) = eos {
            match self.add_eos {
                Some(true) if ids.last() != Some(&eos) => ids.push(eos),
                Some(false)
                    if ids.last() == Some(&eos)
                        && ids.len() > plain.len()
                        && ids[..ids.len() - 1].ends_with(&plain) =>
                {
                    ids.pop();
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Token ids and their byte offsets in `text`, without special tokens added.
    pub(crate) fn encode_with_offsets(&self, text: &str) -> Result<IdsAndOffsets, DataError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| self.tok_err(e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        self.tokenizer.decode(ids, skip_special).map_err(|e| DataError::Tokenizer {
            path: self.tokenizer_path.clone(),
            problem: format!("decoding failed: {e}"),
        })
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// True when the chat template marks assistant text with `{% generation %}`.
    pub fn chat_template_has_generation(&self) -> bool {
        matches!(&self.template, Some(Ok(t)) if t.has_generation)
    }

    pub(crate) fn template(&self) -> Result<&ChatTemplate, DataError> {
        let origin = || self.template_origin.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        match &self.template {
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => Err(DataError::ChatTemplate { problem: format!("{}: {e}", origin()) }),
            None => Err(DataError::ChatTemplate {
                problem: format!(
                    "the tokenizer in {} has no chat template (no chat_template.jinja and no `chat_template` in tokenizer_config.json), \
                     but the data is chat messages; add the model's chat_template.jinja to the model directory, \
                     use an instruct model's tokenizer, or convert the data to prompt/completion",
                    self.tokenizer_path.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            }),
        }
    }

    pub(crate) fn render_spans(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Rendered, DataError> {
        let t = self.template()?;
        t.render(messages, add_generation_prompt, &self.special).map_err(|problem| DataError::ChatTemplate {
            problem: format!(
                "{}: {problem}",
                self.template_origin.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        })
    }

    /// Render `messages` with the chat template (variables `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`, `pad_token`, `unk_token`,
    /// `tools` = `documents` = none). Tokenise the result with `add_special_tokens = false`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, DataError> {
        Ok(self.render_spans(messages, add_generation_prompt)?.text)
    }

    /// The tokenizer files present in the model directory (to copy into the output).
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.clone()
    }

    /// Error when the tokenizer can produce a token id the model has no embedding for.
    /// A model vocabulary larger than the tokenizer's (padded embeddings) is fine.
    pub fn check_matches_model(&self, model_vocab_size: usize, model_dir: &Path) -> Result<(), DataError> {
        if self.max_id as usize >= model_vocab_size {
            return Err(DataError::TokenizerModelMismatch {
                tokenizer_path: self.tokenizer_path.clone(),
                tokenizer_vocab: self.vocab_size,
                max_token_id: self.max_id,
                config_path: model_dir.join("config.json"),
                model_vocab: model_vocab_size,
            });
        }
        Ok(())
    }
}

//! Tokenizer bundle, chat templates and loss masks (TRL rules), with a tiny
//! byte-level BPE tokenizer written by code.

use std::path::{Path, PathBuf};

use serde_json::json;
use trainer::data::{
    count_tokens, tokenize, Content, DataError, DataSpec, Message, Record, RowRef, TextMode, TokenizerBundle, TrainOn,
};

const BOS: u32 = 260;
const EOS: u32 = 261;
const IM_START: u32 = 262;
const IM_END: u32 = 263;

/// GPT-2's byte → printable character map used by ByteLevel.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(&cs) {
        out[*b as usize] = char::from_u32(*c).unwrap();
    }
    out
}

/// ByteLevel BPE: ids 0..=255 are the bytes, 256..=259 four merges, 260..=263 special tokens.
fn tokenizer_json() -> String {
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    let sp = chars[b' ' as usize];
    let merges = [("h", "e"), ("l", "l"), (&*sp.to_string(), "w"), ("o", "r")];
    for (i, (a, b)) in merges.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(256 + i));
    }
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let bos = |type_id: u32| json!({"SpecialToken": {"id": "<|begin_of_text|>", "type_id": type_id}});
    json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": null,
        "added_tokens": [special(BOS, "<|begin_of_text|>"), special(EOS, "<|end_of_text|>"), special(IM_START, "<|im_start|>"), special(IM_END, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos(0), {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos(0), {"Sequence": {"id": "A", "type_id": 0}}, bos(1), {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [BOS], "tokens": ["<|begin_of_text|>"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()
        }
    })
    .to_string()
}

const CHATML: &str = "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// ChatML with `{% generation %}` around assistant content + `<|im_end|>` (the newline after it is outside).
const CHATML_GENERATION: &str = "{{ bos_token }}\n{%- for message in messages %}\n{%- if message['role'] == 'assistant' %}\n{{- '<|im_start|>assistant\\n' }}\n{%- generation %}\n{{- message['content'] + '<|im_end|>' }}\n{%- endgeneration %}\n{{- '\\n' }}\n{%- else %}\n{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n{%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A model directory with the tiny tokenizer and a tokenizer_config.json holding `template`.
fn model_dir(template: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json()).unwrap();
    let mut cfg = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|end_of_text|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
        "pad_token": null,
        "model_max_length": 131072,
    });
    if let Some(t) = template {
        cfg["chat_template"] = json!(t);
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    dir
}

fn src() -> RowRef {
    RowRef { file: PathBuf::from("train.jsonl"), line: 1 }
}

fn record(content: Content) -> Record {
    Record { content, extra: Default::default(), source: src() }
}

fn chat(list: &[(&str, &str)]) -> Content {
    Content::Messages(list.iter().map(|(r, c)| Message::new(*r, *c)).collect())
}

/// Decode the tokens with mask 1 (targets) and with mask 0.
fn split(tok: &TokenizerBundle, ids: &[u32], mask: &[u8]) -> (String, String) {
    let pick = |want: u8| -> Vec<u32> { ids.iter().zip(mask).filter(|(_, m)| **m == want).map(|(i, _)| *i).collect() };
    (tok.decode(&pick(1), false).unwrap(), tok.decode(&pick(0), false).unwrap())
}

#[test]
fn tokenizer_bundle_loads_special_tokens_and_ignores_stored_truncation() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert_eq!(tok.vocab_size(), 264);
    assert_eq!(tok.bos_id(), Some(BOS));
    assert_eq!(tok.eos_id(), Some(EOS), "eos given as an AddedToken object");
    assert_eq!(tok.pad_id(), EOS, "no pad token: pad = eos");
    assert!(tok.has_chat_template());
    // The post-processor adds BOS; the truncation stored in tokenizer.json (4) is ignored.
    let ids = tok.encode("hello world", true).unwrap();
    assert_eq!(ids[0], BOS);
    assert_eq!(ids[1], 256, "the `h e` merge applies");
    assert!(ids.len() > 4);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
    assert_eq!(tok.encode("<|im_start|>hi", false).unwrap()[0], IM_START, "special tokens in text are matched");
    let files: Vec<String> =
        tok.files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(files, vec!["tokenizer.json", "tokenizer_config.json"]);
}

#[test]
fn chat_template_sources_and_fallbacks() {
    // chat_template.jinja wins over tokenizer_config.json.
    let dir = model_dir(Some(CHATML));
    std::fs::write(dir.path().join("chat_template.jinja"), "JINJA{% for m in messages %}[{{ m.content }}]{% endfor %}")
        .unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert_eq!(tok.render_chat(&[Message::new("user", "x")], false).unwrap(), "JINJA[x]");

    // A named list of templates: "default" is used.
    let dir = model_dir(None);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap()).unwrap();
    cfg["chat_template"] =
        json!([{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT {{ eos_token }}"}]);
    cfg["pad_token"] = json!("<|im_end|>");
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert_eq!(tok.render_chat(&[], false).unwrap(), "DEFAULT <|end_of_text|>");
    assert_eq!(tok.pad_id(), IM_END);

    // special_tokens_map.json fills in what tokenizer_config.json lacks; no template at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json()).unwrap();
    std::fs::write(dir.path().join("special_tokens_map.json"), r#"{"eos_token": "<|im_end|>"}"#).unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert_eq!(tok.eos_id(), Some(IM_END));
    assert_eq!(tok.bos_id(), None);
    assert!(!tok.has_chat_template());
    let e = tok.render_chat(&[Message::new("user", "x")], false).unwrap_err();
    assert!(matches!(e, DataError::ChatTemplate { .. }) && e.to_string().contains("no chat template"), "{e}");

    // Missing tokenizer.json.
    let empty = tempfile::tempdir().unwrap();
    let e = TokenizerBundle::load(empty.path()).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json") && e.is_user_error(), "{e}");
}

#[test]
fn add_bos_token_false_in_config_removes_the_post_processor_bos() {
    let dir = model_dir(None);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|begin_of_text|>", "add_bos_token": false}"#,
    )
    .unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert_ne!(tok.encode("hello", true).unwrap()[0], BOS);
    let ids = tok.encode("<|begin_of_text|>hello", true).unwrap();
    assert_eq!((ids[0], ids[1]), (BOS, 256), "a BOS written in the text stays, the added one goes");
}

#[test]
fn tojson_does_not_html_escape() {
    let dir = model_dir(None);
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% for m in messages %}{{ m | tojson }}\r\n{% endfor %}{{ {'x': 0.00001, 'y': [1, true, none]} | tojson(indent=2) }}",
    )
    .unwrap();
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let out = tok.render_chat(&[Message::new("user", "<b> & 'q' é")], false).unwrap();
    assert_eq!(
        out,
        "{\"role\": \"user\", \"content\": \"<b> & 'q' é\"}\n{\n  \"x\": 1e-05,\n  \"y\": [\n    1,\n    true,\n    null\n  ]\n}"
    );
}

#[test]
fn text_gets_bos_and_eos_and_all_targets() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let rep = tokenize(&[record(Content::Text("hello world".into()))], &tok, &DataSpec::default()).unwrap();
    let ex = &rep.examples[0];
    assert_eq!(ex.input_ids[0], BOS);
    assert_eq!(*ex.input_ids.last().unwrap(), EOS);
    assert!(ex.loss_mask.iter().all(|m| *m == 1));
    assert_eq!(rep.total_tokens, ex.input_ids.len());
    assert_eq!(rep.target_tokens, ex.input_ids.len() - 1, "targets are counted after the shift");
    assert_eq!(rep.mask_method, trainer::data::MASK_TEXT);
}

#[test]
fn completion_only_mask() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let recs = [record(Content::PromptCompletion { prompt: "Say hello:".into(), completion: " hello world".into() })];
    let rep = tokenize(&recs, &tok, &DataSpec::default()).unwrap();
    let ex = &rep.examples[0];
    let (targets, context) = split(&tok, &ex.input_ids, &ex.loss_mask);
    assert_eq!(context, "<|begin_of_text|>Say hello:");
    assert_eq!(targets, " hello world<|end_of_text|>");
    assert_eq!(*ex.input_ids.last().unwrap(), EOS);
    assert_eq!(*ex.loss_mask.last().unwrap(), 1, "EOS is a target");
    let first_target = ex.loss_mask.iter().position(|m| *m == 1).unwrap();
    assert!(
        ex.loss_mask[..first_target].iter().all(|m| *m == 0) && ex.loss_mask[first_target..].iter().all(|m| *m == 1)
    );
    assert_eq!(rep.mask_method, trainer::data::MASK_PROMPT_PREFIX);

    // train_on=all: every token.
    let rep = tokenize(&recs, &tok, &DataSpec { train_on: TrainOn::All, ..DataSpec::default() }).unwrap();
    assert!(rep.examples[0].loss_mask.iter().all(|m| *m == 1));
}

const CONVERSATION: &[(&str, &str)] = &[
    ("system", "Be brief."),
    ("user", "hello"),
    ("assistant", "world"),
    ("user", "more"),
    ("assistant", "hello world"),
];

#[test]
fn assistant_only_mask_by_prefix_diff() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let rep = tokenize(&[record(chat(CONVERSATION))], &tok, &DataSpec::default()).unwrap();
    assert_eq!(rep.mask_method, trainer::data::MASK_PREFIX_DIFF);
    let ex = &rep.examples[0];
    assert_eq!(ex.input_ids[0], BOS, "the template's BOS, not a second one");
    assert_ne!(ex.input_ids[1], BOS);
    let (targets, context) = split(&tok, &ex.input_ids, &ex.loss_mask);
    assert_eq!(targets, "world<|im_end|>\nhello world<|im_end|>\n");
    assert_eq!(
        context,
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n\
         <|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"
    );
    // The rendered text round-trips through the tokens.
    let full =
        tok.render_chat(&CONVERSATION.iter().map(|(r, c)| Message::new(*r, *c)).collect::<Vec<_>>(), false).unwrap();
    assert_eq!(tok.decode(&ex.input_ids, false).unwrap(), full);
}

#[test]
fn assistant_only_mask_from_generation_tags() {
    let dir = model_dir(Some(CHATML_GENERATION));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let msgs: Vec<Message> = CONVERSATION.iter().map(|(r, c)| Message::new(*r, *c)).collect();
    // The generation tags leave no trace in the rendered text, and whitespace control works as in Jinja2.
    assert_eq!(
        tok.render_chat(&msgs, false).unwrap(),
        tok.render_chat(&msgs, false).unwrap().replace(['\u{1}', '\u{2}'], "")
    );
    assert_eq!(
        tok.render_chat(&msgs[..2], true).unwrap(),
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let rep = tokenize(&[record(chat(CONVERSATION))], &tok, &DataSpec::default()).unwrap();
    assert_eq!(rep.mask_method, trainer::data::MASK_GENERATION_TAGS);
    let ex = &rep.examples[0];
    let (targets, _) = split(&tok, &ex.input_ids, &ex.loss_mask);
    // Exactly the {% generation %} spans: the newline after <|im_end|> is outside them.
    assert_eq!(targets, "world<|im_end|>hello world<|im_end|>");
}

#[test]
fn prefix_diff_handles_templates_that_rewrite_history() {
    // Like Qwen3 (a think block on the last assistant turn only) and Phi-3 (EOS after the last turn):
    // render(messages[..=k]) is not a prefix of the full render for earlier turns.
    let tmpl = "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n{% if loop.last %}<think></think>{% endif %}\
                {{ m.content }}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}\
                {% if add_generation_prompt %}<|im_start|>assistant\n{% else %}<|end_of_text|>{% endif %}";
    let dir = model_dir(Some(tmpl));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let conv = chat(&[("user", "hello"), ("assistant", "world"), ("user", "more"), ("assistant", "hello world")]);
    let rep = tokenize(&[record(conv)], &tok, &DataSpec::default()).unwrap();
    assert_eq!(rep.searched_turns, 1);
    let ex = &rep.examples[0];
    let (targets, context) = split(&tok, &ex.input_ids, &ex.loss_mask);
    assert_eq!(targets, "world<|im_end|>\n<think></think>hello world<|im_end|>\n<|end_of_text|>");
    assert_eq!(context, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn chat_rows_without_assistant_are_dropped_and_template_errors_name_the_row() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let rep = tokenize(&[record(chat(&[("user", "only a question")]))], &tok, &DataSpec::default()).unwrap();
    assert_eq!((rep.examples.len(), rep.dropped_no_target), (0, 1));

    let dir = model_dir(Some("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ messages[0]['content'] }}"));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let rec = Record {
        content: chat(&[("assistant", "hi")]),
        extra: Default::default(),
        source: RowRef { file: "d.jsonl".into(), line: 9 },
    };
    let e = tokenize(std::slice::from_ref(&rec), &tok, &DataSpec::default()).unwrap_err().to_string();
    assert!(e.contains("d.jsonl:9") && e.contains("first message must be from the user"), "{e}");
    let rep = tokenize(&[rec], &tok, &DataSpec { skip_bad_rows: true, ..DataSpec::default() }).unwrap();
    assert_eq!(rep.skipped.len(), 1);

    // Chat data with a tokenizer that has no template: one clear error.
    let dir = model_dir(None);
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let e = tokenize(&[record(chat(CONVERSATION))], &tok, &DataSpec::default()).unwrap_err();
    assert!(matches!(e, DataError::ChatTemplate { .. }) && e.to_string().contains("no chat template"), "{e}");
}

#[test]
fn truncation_keeps_the_start_and_drops_examples_without_targets() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    let spec = DataSpec { max_seq_length: 8, ..DataSpec::default() };
    let long_text = record(Content::Text("hello world hello world hello world".into()));
    let long_prompt = record(Content::PromptCompletion {
        prompt: "a very long prompt that never ends".into(),
        completion: " x".into(),
    });
    let short = record(Content::PromptCompletion { prompt: "q".into(), completion: " a".into() });
    let rep = tokenize(&[long_text.clone(), long_prompt, short], &tok, &spec).unwrap();
    assert_eq!(rep.truncated, 2);
    assert_eq!(rep.dropped_no_target, 1, "the completion of the long prompt was cut away");
    assert_eq!(rep.examples.len(), 2);
    let full = tok.encode("hello world hello world hello world", true).unwrap();
    assert_eq!(rep.examples[0].input_ids, full[..8].to_vec());
    assert_eq!(rep.total_tokens, 8 + rep.examples[1].input_ids.len());

    // A .txt document in text_mode=file is cut into overlapping windows instead.
    let doc = Record { source: RowRef { file: "corpus.txt".into(), line: 1 }, ..long_text };
    let rep = tokenize(&[doc], &tok, &DataSpec { text_mode: TextMode::File, ..spec }).unwrap();
    let mut ids = tok.encode("hello world hello world hello world", true).unwrap();
    ids.push(EOS);
    assert_eq!((rep.truncated, rep.split_documents), (0, 1));
    assert!(rep.examples.len() > 1);
    assert_eq!(rep.target_tokens, ids.len() - 1, "every token after the first is a target exactly once");
    let mut joined = rep.examples[0].input_ids.clone();
    for ex in &rep.examples[1..] {
        assert!(ex.input_ids.len() <= 8);
        assert_eq!(ex.input_ids[0], *joined.last().unwrap());
        joined.extend_from_slice(&ex.input_ids[1..]);
    }
    assert_eq!(joined, ids);
}

#[test]
fn tokenizer_model_mismatch_names_both_files_and_sizes() {
    let dir = model_dir(Some(CHATML));
    let tok = TokenizerBundle::load(dir.path()).unwrap();
    assert!(tok.check_matches_model(264, dir.path()).is_ok());
    assert!(tok.check_matches_model(300, dir.path()).is_ok(), "padded embeddings are fine");
    let e = tok.check_matches_model(200, Path::new("/models/base")).unwrap_err();
    assert!(matches!(e, DataError::TokenizerModelMismatch { .. }));
    let msg = e.to_string();
    assert!(msg.contains("tokenizer.json") && msg.contains("/models/base/config.json"), "{msg}");
    assert!(msg.contains("263") && msg.contains("264") && msg.contains("200"), "{msg}");
    assert!(e.is_user_error());
}

#[test]
fn count_tokens_reads_and_tokenizes_like_the_job() {
    let model = model_dir(Some(CHATML));
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("train.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}, {\"role\": \"assistant\", \"content\": \"world\"}]}\n\
         {\"prompt\": \"q\", \"completion\": \" a\"}\n",
    )
    .unwrap();
    // Two formats in one file are not mixed: the second row misses `messages`.
    assert!(count_tokens(data.path(), model.path(), &DataSpec::default()).is_err());
    std::fs::write(
        data.path().join("train.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}, {\"role\": \"assistant\", \"content\": \"world\"}]}\n",
    )
    .unwrap();
    let rep = count_tokens(data.path(), model.path(), &DataSpec::default()).unwrap();
    assert_eq!(rep.examples.len(), 1);
    let tok = TokenizerBundle::load(model.path()).unwrap();
    let (targets, _) = split(&tok, &rep.examples[0].input_ids, &rep.examples[0].loss_mask);
    assert_eq!(targets, "world<|im_end|>\n");
}

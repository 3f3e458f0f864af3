//! Data readers: JSONL / JSON / CSV / TSV / TXT, format detection and conversion,
//! bad-row reporting and channel-directory handling.

use std::path::{Path, PathBuf};

use trainer::data::{read_path, Content, DataError, DataFormat, DataSpec, Message, ReadReport, TextMode};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data").join(name)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn read(path: &Path) -> ReadReport {
    read_path(path, &DataSpec::default()).unwrap()
}

fn pc(prompt: &str, completion: &str) -> Content {
    Content::PromptCompletion { prompt: prompt.into(), completion: completion.into() }
}

fn msgs(list: &[(&str, &str)]) -> Content {
    Content::Messages(list.iter().map(|(r, c)| Message::new(*r, *c)).collect())
}

#[test]
fn jsonl_prompt_completion_keeps_extra_columns() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "train.jsonl",
        "{\"prompt\": \"2+2=\", \"completion\": 4, \"answer\": \"4\", \"id\": 7}\n\n{\"prompt\": \"3+3=\", \"completion\": \"6\"}\r\n",
    );
    let r = read(&f);
    assert_eq!(r.format, DataFormat::PromptCompletion);
    assert_eq!(r.files, vec![f.clone()]);
    assert_eq!(r.records.len(), 2);
    assert_eq!(r.records[0].content, pc("2+2=", "4"), "numbers become text");
    assert_eq!(r.records[0].extra.get("answer"), Some(&serde_json::json!("4")));
    assert_eq!(r.records[0].extra.get("id"), Some(&serde_json::json!(7)));
    assert!(!r.records[0].extra.contains_key("prompt"));
    assert_eq!((r.records[0].source.line, r.records[1].source.line), (1, 3), "blank lines keep the numbering");
    assert_eq!(r.records[1].content, pc("3+3=", "6"));
}

#[test]
fn json_array_of_openai_messages_with_content_parts() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "chat.json",
        r#"[
          {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
          {"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]},
                        {"role": "assistant", "content": null}, {"role": "assistant", "content": "Done"}], "reference_answer": "x"}
        ]"#,
    );
    let r = read(&f);
    assert_eq!(r.format, DataFormat::Messages);
    assert_eq!(r.records[0].content, msgs(&[("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]));
    assert_eq!(
        r.records[1].content,
        msgs(&[("user", "Part one.\nPart two."), ("assistant", ""), ("assistant", "Done")])
    );
    assert_eq!(r.records[1].source.line, 2, "JSON array rows are numbered by element");
    assert_eq!(r.records[1].extra.get("reference_answer"), Some(&serde_json::json!("x")));
}

#[test]
fn json_wrapper_object_and_jsonl_saved_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", r#"{"data": [{"text": "one"}, {"text": "two"}]}"#);
    assert_eq!(read(&a).records.len(), 2);
    let b = write(dir.path(), "b.json", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n");
    let r = read(&b);
    assert_eq!(r.records.len(), 3);
    assert_eq!(r.records[2].source.line, 3);
}

#[test]
fn csv_quoted_newline_keeps_line_numbers_right() {
    let f = fixture("quoted_newline.csv");
    let spec = DataSpec { skip_bad_rows: true, ..DataSpec::default() };
    let r = read_path(&f, &spec).unwrap();
    assert_eq!(r.format, DataFormat::PromptCompletion);
    assert_eq!(r.records.len(), 2);
    assert_eq!(r.records[0].content, pc("multi\nline prompt", "answer one"));
    assert_eq!(r.records[0].source.line, 2);
    assert_eq!(r.records[1].content, pc("second", "answer, two"));
    assert_eq!(r.records[1].source.line, 4, "the record after a two-line field starts on line 4");
    assert_eq!(r.records[1].extra.get("id"), Some(&serde_json::json!("2")), "CSV cells stay text");
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].0.line, 5);

    // Without skipping, the bad row is an error naming file:line.
    let e = read_path(&f, &DataSpec::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::BadRow { line: 5, .. }), "{msg}");
    assert!(msg.contains("quoted_newline.csv:5"), "{msg}");
    assert!(msg.contains("2 field(s)") && msg.contains("header has 3"), "{msg}");
    assert!(e.is_user_error());
}

#[test]
fn tsv_alpaca_uses_the_stanford_prompt() {
    let r = read(&fixture("alpaca.tsv"));
    assert_eq!(r.format, DataFormat::Alpaca);
    assert_eq!(
        r.records[0].content,
        pc(
            "Below is an instruction that describes a task, paired with an input that provides further context. \
             Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 3\n\n### Response:\n",
            "5"
        )
    );
    assert_eq!(
        r.records[1].content,
        pc(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\nSay hi.\n\n### Response:\n",
            "hi"
        )
    );
    assert_eq!(r.records[1].source.line, 3);
}

#[test]
fn txt_lines_and_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "corpus.txt", "first line\n\n   \nsecond line\r\nthird");
    let r = read(&f);
    assert_eq!(r.format, DataFormat::Text);
    let got: Vec<(usize, Content)> = r.records.iter().map(|x| (x.source.line, x.content.clone())).collect();
    assert_eq!(
        got,
        vec![
            (1, Content::Text("first line".into())),
            (4, Content::Text("second line".into())),
            (5, Content::Text("third".into()))
        ]
    );
    let whole = read_path(&f, &DataSpec { text_mode: TextMode::File, ..DataSpec::default() }).unwrap();
    assert_eq!(whole.records.len(), 1);
    assert_eq!(whole.records[0].content, Content::Text("first line\n\n   \nsecond line\r\nthird".into()));

    // A .txt file cannot be read with a forced non-text format.
    let e = read_path(&f, &DataSpec { format: DataFormat::Alpaca, ..DataSpec::default() }).unwrap_err();
    assert!(e.to_string().contains("corpus.txt") && e.to_string().contains("format"), "{e}");
}

#[test]
fn sharegpt_roles_are_mapped() {
    let r = read(&fixture("sharegpt.jsonl"));
    assert_eq!(r.format, DataFormat::ShareGpt);
    assert_eq!(
        r.records[0].content,
        msgs(&[
            ("system", "Use tools."),
            ("user", "Weather in Paris?"),
            ("assistant", "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}"),
            ("tool", "{\"temp\": 21}"),
            ("assistant", "It is 21 degrees."),
        ])
    );
    assert_eq!(r.records[0].extra.get("tools"), Some(&serde_json::json!("[]")));
    // A top-level system field becomes the first message.
    assert_eq!(
        r.records[1].content,
        msgs(&[("system", "You are a calculator."), ("user", "2+2?"), ("assistant", "4")])
    );

    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.jsonl",
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}\n\
         {\"conversations\": [{\"from\": \"narrator\", \"value\": \"a\"}]}\n",
    );
    let e = read_path(&f, &DataSpec::default()).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("narrator"), "{e}");
}

#[test]
fn bedrock_conversation_both_spellings() {
    let r = read(&fixture("bedrock.jsonl"));
    assert_eq!(r.format, DataFormat::Messages);
    assert_eq!(
        r.records[0].content,
        msgs(&[("system", "You are terse."), ("user", "Capital of France?"), ("assistant", "Paris.")])
    );
    assert_eq!(
        r.records[1].content,
        msgs(&[
            ("system", "Be kind.\nBe brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Bye"),
            ("assistant", "Goodbye.")
        ])
    );
    assert!(r.records[0].extra.is_empty(), "schemaVersion and system are consumed: {:?}", r.records[0].extra);
}

#[test]
fn trl_conversational_prompt_completion() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.jsonl",
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}"#,
    );
    assert_eq!(read(&f).records[0].content, msgs(&[("user", "Hi"), ("assistant", "Hello")]));
}

#[test]
fn bad_rows_name_file_and_line_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.jsonl",
        "{\"text\": \"ok one\"}\n{\"text\": \"ok two\"}\n{\"text\": \"broken\n[1, 2]\n{\"text\": \"ok three\"}\n{\"other\": 1}\n",
    );
    let e = read_path(&f, &DataSpec::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.jsonl:3"), "{msg}");
    assert!(msg.contains("invalid JSON"), "{msg}");

    let r = read_path(&f, &DataSpec { skip_bad_rows: true, ..DataSpec::default() }).unwrap();
    assert_eq!(r.records.len(), 3);
    let skipped: Vec<usize> = r.skipped.iter().map(|(row, _)| row.line).collect();
    assert_eq!(skipped, vec![3, 4, 6]);
    assert!(r.skipped[1].1.contains("array"), "{}", r.skipped[1].1);
    assert!(
        r.skipped[2].1.contains("missing field `text`") && r.skipped[2].1.contains("`other`"),
        "{}",
        r.skipped[2].1
    );
}

#[test]
fn missing_field_names_the_field_and_the_available_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "d.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"response\": \"b\"}\n",
    );
    let e = read_path(&f, &DataSpec::default()).unwrap_err();
    match &e {
        DataError::MissingField { line, field, available, .. } => {
            assert_eq!((*line, field.as_str()), (2, "completion"));
            assert_eq!(available, &vec!["prompt".to_string(), "response".to_string()]);
        }
        other => panic!("expected MissingField, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("d.jsonl:2") && msg.contains("`completion`") && msg.contains("`response`"), "{msg}");
}

#[test]
fn field_mapping_and_forced_format() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "gsm.csv", "question,answer\nWhat is 2+3?,#### 5\n");
    let mut spec = DataSpec { format: DataFormat::PromptCompletion, ..DataSpec::default() };
    spec.fields.prompt = "question".into();
    spec.fields.completion = "answer".into();
    let r = read_path(&f, &spec).unwrap();
    assert_eq!(r.records[0].content, pc("What is 2+3?", "#### 5"));

    // Auto-detection with mapped names works too.
    let r = read_path(&f, &DataSpec { format: DataFormat::Auto, ..spec }).unwrap();
    assert_eq!(r.format, DataFormat::PromptCompletion);
}

#[test]
fn unknown_format_lists_keys_and_prompt_only_is_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "g.jsonl", "{\"prompt\": \"What is 2+3?\", \"answer\": \"5\"}\n");
    let e = read_path(&f, &DataSpec::default()).unwrap_err();
    assert!(matches!(e, DataError::UnknownFormat { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("g.jsonl") && msg.contains("`prompt`") && msg.contains("`answer`"), "{msg}");
    assert!(msg.contains("conversations") && msg.contains("instruction"), "lists the accepted shapes: {msg}");

    let r = read_path(&f, &DataSpec { prompt_only: true, ..DataSpec::default() }).unwrap();
    assert_eq!(r.records[0].content, pc("What is 2+3?", ""));
    assert_eq!(r.records[0].extra.get("answer"), Some(&serde_json::json!("5")));
}

#[test]
fn empty_dataset_and_missing_channel() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "empty/train.jsonl", "\n\n");
    let e = read_path(&f, &DataSpec::default()).unwrap_err();
    assert!(matches!(e, DataError::EmptyDataset { .. }), "{e:?}");
    assert!(e.to_string().contains("train.jsonl"), "{e}");

    // Every row skipped: still empty, and the message says rows were skipped.
    let g = write(dir.path(), "allbad/x.jsonl", "nope\n");
    let e = read_path(&g, &DataSpec { skip_bad_rows: true, ..DataSpec::default() }).unwrap_err();
    assert!(e.to_string().contains("1 bad row"), "{e}");

    let missing = dir.path().join("no/such/channel");
    let e = read_path(&missing, &DataSpec::default()).unwrap_err();
    assert!(matches!(e, DataError::NoDataFiles { .. }), "{e:?}");
    assert!(e.to_string().contains("no/such/channel") && e.to_string().contains("does not exist"), "{e}");
    assert!(e.is_user_error());

    let docs = dir.path().join("docs");
    write(&docs, "README.md", "# not data");
    write(&docs, ".hidden.jsonl", "{\"text\": \"x\"}");
    let e = read_path(&docs, &DataSpec::default()).unwrap_err();
    assert!(matches!(e, DataError::NoDataFiles { .. }), "{e:?}");
    assert!(e.to_string().contains("README.md"), "{e}");
}

#[test]
fn channel_directory_is_read_recursively_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let ch = dir.path().join("train");
    write(&ch, "b.jsonl", "{\"text\": \"from b\"}\n");
    write(&ch, "a/part-0.jsonl", "{\"text\": \"from a\"}\n");
    write(&ch, "c.CSV", "text\nfrom c\n");
    write(&ch, "notes.md", "ignored");
    write(&ch, ".cache/x.jsonl", "{\"text\": \"hidden\"}\n");
    let r = read(&ch);
    let texts: Vec<String> = r
        .records
        .iter()
        .map(|x| match &x.content {
            Content::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, vec!["from a", "from b", "from c"]);
    assert_eq!(r.files.len(), 3);
    assert_eq!(r.format, DataFormat::Text);
}

#[test]
fn invalid_utf8_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.csv");
    std::fs::write(&p, b"text\nok\ncaf\xe9\n").unwrap();
    let e = read_path(&p, &DataSpec::default()).unwrap_err().to_string();
    assert!(e.contains("latin1.csv:3") && e.contains("UTF-8"), "{e}");
}

/// Column pairs of public datasets map onto prompt/completion with no settings, each one, and the
/// report says which pair was used; explicit fields still win.
#[test]
fn common_column_pairs_are_recognised() {
    let dir = tempfile::tempdir().unwrap();
    for (p, c) in [
        ("dialogue", "summary"),
        ("question", "answer"),
        ("input", "target"),
        ("source", "target"),
        ("document", "summary"),
        ("context", "response"),
        ("query", "response"),
    ] {
        let f = write(dir.path(), &format!("{p}_{c}.csv"), &format!("id,{p},{c}\n1,\"the {p}\",the {c}\n"));
        let r = read(&f);
        assert_eq!(r.format, DataFormat::PromptCompletion, "{p}/{c}");
        assert_eq!(r.records[0].content, pc(&format!("the {p}"), &format!("the {c}")), "{p}/{c}");
        assert_eq!(r.records[0].extra.get("id"), Some(&serde_json::json!("1")), "other columns are kept");
        assert_eq!(r.column_pairs, vec![(f.clone(), p, c)]);
    }
    // Alpaca's instruction/input/output is still Alpaca, not input/…; prompt/completion still wins.
    let f = write(
        dir.path(),
        "a.jsonl",
        "{\"instruction\": \"i\", \"input\": \"x\", \"output\": \"o\", \"target\": \"t\"}\n",
    );
    assert_eq!(read(&f).format, DataFormat::Alpaca);
    assert!(read(&f).column_pairs.is_empty());
    let f = write(
        dir.path(),
        "p.jsonl",
        "{\"prompt\": \"p\", \"completion\": \"c\", \"question\": \"q\", \"answer\": \"a\"}\n",
    );
    assert_eq!(read(&f).records[0].content, pc("p", "c"));
}

#[test]
fn undetectable_keys_name_the_trainers_hyperparameters() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "odd.csv", "speech,gist\nhello,hi\n");
    let msg = read_path(&f, &DataSpec::default()).unwrap_err().to_string();
    assert!(msg.contains("`speech`") && msg.contains("`prompt_field`") && msg.contains("`completion_field`"), "{msg}");
    assert!(msg.contains("dialogue/summary"), "the accepted shapes list the column pairs: {msg}");
}

//! `train generate` and `train evaluate`: a trained adapter on its base, outside a job. The streamed
//! text is the completion generation gives in-process (greedy, same adapter); evaluation writes one
//! prediction per row and the means; bad paths are bad input that names what is missing.

use std::process::Command;

use trainer::data::DataSpec;
use trainer::device::JobDevice;
use trainer::inference;

use crate::common::{rows, text, train_bin, Job, SMALL_JOB};

/// A job trained for 3 steps: (its tree, the base model dir, the adapter dir).
fn trained() -> (Job, std::path::PathBuf, std::path::PathBuf) {
    let job = Job::new(SMALL_JOB, &rows(16));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let (base, adapter) = (job.channel("model"), job.root().join("model"));
    (job, base, adapter)
}

fn train(args: &[&str]) -> std::process::Output {
    Command::new(train_bin()).args(args).env("OXTUNE_DEVICE", "cpu").output().unwrap()
}

#[test]
fn generate_streams_what_in_process_generation_gives() {
    let (job, base, adapter) = trained();
    let (base_s, adapter_s) = (base.to_str().unwrap(), adapter.to_str().unwrap());
    let out = train(&[
        "generate",
        "--model",
        base_s,
        "--adapter",
        adapter_s,
        "--prompt",
        "Add 2 and 3:",
        "--max-new-tokens",
        "6",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let streamed = String::from_utf8(out.stdout).unwrap();

    let device = JobDevice::select(&[("OXTUNE_DEVICE".into(), "cpu".into())]).unwrap();
    let m = inference::load(&base, Some(&adapter), &device, candle_core::DType::F32).unwrap();
    let prompt = inference::text_prompt(&m, "Add 2 and 3:", None).unwrap();
    let opts =
        inference::GenerateOptions { max_new_tokens: 6, temperature: 0.0, top_p: 1.0, stop_strings: vec![], seed: 42 };
    let mut sink = Vec::new();
    let done = inference::stream(&m, std::slice::from_ref(&prompt), &opts, &mut sink).unwrap();
    assert_eq!(streamed, format!("{}\n", done[0].0), "stdout is the completion, then a newline");
    assert_eq!(String::from_utf8(sink).unwrap(), streamed);

    // The adapter matters: the base alone is the same model without it.
    let base_only = inference::load(&base, None, &device, candle_core::DType::F32).unwrap();
    assert!(!base_only.adapters && m.adapters);

    // --file takes any format the trainer reads: two prompt/completion rows, two completions.
    let file = job.root().join("prompts.jsonl");
    std::fs::write(&file, rows(2)).unwrap();
    let out = train(&["generate", "--model", base_s, "--file", file.to_str().unwrap(), "--max-new-tokens", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2, "one line per prompt");
    let spec = DataSpec::default();
    assert_eq!(inference::file_prompts(&base_only, &file, &spec).unwrap().len(), 2);
}

#[test]
fn evaluate_writes_predictions_and_means() {
    let (job, base, adapter) = trained();
    let test = job.root().join("test.jsonl");
    std::fs::write(&test, rows(3)).unwrap();
    let out_dir = job.root().join("eval-out");
    let out = train(&[
        "evaluate",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--file",
        test.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
        "--eval_max_new_tokens",
        "4",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.lines().any(|l| l.starts_with("METRIC ") && l.contains(" test_rouge1=")), "{stdout}");
    let preds = std::fs::read_to_string(out_dir.join("eval_predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), 3, "one prediction per row");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("eval_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["cases"], 3);
    assert!(summary["metrics"]["test_exact_match"].is_number(), "{summary}");
}

#[test]
fn bad_paths_and_missing_flags_are_bad_input() {
    let (job, base, _) = trained();
    let empty = job.root().join("not-an-adapter");
    std::fs::create_dir_all(&empty).unwrap();
    let base_s = base.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "--prompt", "hi"], "--model DIR is required"),
        (&["generate", "--model", base_s], "give --prompt TEXT or --file FILE"),
        (
            &["generate", "--model", base_s, "--adapter", empty.to_str().unwrap(), "--prompt", "x"],
            "adapter_config.json",
        ),
        (&["generate", "--model", "/nonexistent", "--prompt", "x"], "/nonexistent has no config.json"),
        (&["generate", "--model", base_s, "--prompt", "x", "--lora_r", "8"], "generate does not take --lora_r"),
        (&["evaluate", "--model", base_s], "--file FILE is required"),
        (&["evaluate", "--model", base_s, "--file", "x.jsonl", "--eval_batch_size", "0"], "eval_batch_size"),
    ];
    for (args, want) in cases {
        let out = train(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: wanted `{want}` in:\n{err}");
    }
}

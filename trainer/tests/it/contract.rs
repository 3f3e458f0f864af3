//! The `/opt/ml` contract, end to end through the `train` binary: outputs on
//! success; message, exit code and failure file for every bad-input case.

use crate::common::{rows, text, Job};

/// Runs the job, expects `code`, and returns the failure file's first line.
fn expect_failure(job: &Job, args: &[&str], code: i32) -> String {
    let out = job.run(args);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    let failure = job.failure().unwrap_or_else(|| panic!("no failure file; output:\n{}", text(&out)));
    let first = failure.lines().next().unwrap().to_string();
    assert!(first.chars().count() <= 1024);
    assert!(text(&out).contains(&first), "the console shows the same reason");
    first
}

#[test]
fn success_writes_peft_adapter_tokenizer_summary_and_metrics() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(24));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("format prompt_completion"), "detected format is printed:\n{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("METRIC step=3 ") && l.contains(" loss=")), "{stdout}");
    assert!(job.failure().is_none());

    let model = job.root().join("model");
    let bytes = std::fs::read(model.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    assert_eq!(st.len(), 2 * 7 * 2, "2 layers × 7 projections × (A, B)");
    let a = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").unwrap();
    assert_eq!(a.shape(), &[4, 64], "A is [r, in]");
    let b = st.tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").unwrap();
    assert_eq!(b.shape(), &[16, 4], "B is [out, r]: 2 kv heads × head_dim 8");

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    for f in ["tokenizer.json", "tokenizer_config.json", "training_summary.json"] {
        assert!(model.join(f).exists(), "{f}");
    }
    let summary = job.summary();
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["hyperparameters"]["lora_r"], "4");
    assert!(summary["tokens_seen"].as_u64().unwrap() > 0);
    assert!(summary["wall_time_secs"].as_f64().unwrap() > 0.0);
    let data = job.root().join("output/data");
    assert_eq!(std::fs::read_to_string(data.join("metrics.jsonl")).unwrap().lines().count(), 3);
    assert!(std::fs::read_to_string(data.join("loss_curve.svg")).unwrap().contains("<polyline"));
}

#[test]
fn training_channel_alias_env_and_cli_precedence() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(16));
    std::fs::rename(job.channel("train"), job.channel("training")).unwrap();
    // hyperparameters.json says 3 steps, the environment 2, the command line 1: CLI wins.
    let out = job.command(&["--max-steps", "1"]).env("OXTUNE_HP_MAX_STEPS", "2").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(job.summary()["steps"], 1);
    let out = job.command(&[]).env("OXTUNE_HP_MAX_STEPS", "2").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(job.summary()["steps"], 2);
}

#[test]
fn unknown_hyperparameter_names_key_and_suggestion() {
    let job = Job::new(&[("learning_rat", "1e-4")], &rows(8));
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("learning_rat") && reason.contains("did you mean `learning_rate`"), "{reason}");
    assert!(reason.contains("hyperparameters.json"), "names the file: {reason}");
}

#[test]
fn bad_value_names_key_value_and_allowed() {
    let job = Job::new(&[("lora_r", "abc")], &rows(8));
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("lora_r") && reason.contains("abc") && reason.contains("integer"), "{reason}");
}

#[test]
fn missing_train_channel() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    std::fs::remove_dir_all(job.channel("train")).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("channel `train`"), "{reason}");
}

#[test]
fn missing_model_channel() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    std::fs::remove_dir_all(job.channel("model")).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("`model` channel"), "{reason}");
}

#[test]
fn bad_row_names_file_and_line_and_skip_bad_rows_reports() {
    let mut lines: Vec<String> = rows(6).lines().map(String::from).collect();
    lines.insert(2, "{\"prompt\": broken".into()); // line 3
    let job = Job::new(crate::common::SMALL_JOB, &(lines.join("\n") + "\n"));
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("data.jsonl") && reason.contains('3'), "{reason}");
    let out = job.run(&["--skip_bad_rows", "true"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped 1 bad row"), "{}", text(&out));
}

#[test]
fn empty_dataset() {
    let job = Job::new(crate::common::SMALL_JOB, "");
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.to_lowercase().contains("empty") || reason.contains("no training"), "{reason}");
}

#[test]
fn tokenizer_larger_than_model_vocab() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    let mut cfg = crate::common::tiny_config_json(2, 32);
    cfg["vocab_size"] = serde_json::json!(100);
    crate::common::write_model(&job.channel("model"), &cfg, 1);
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("tokenizer") && reason.contains("100"), "{reason}");
}

#[test]
fn corrupt_weights_and_unsupported_model() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    std::fs::write(job.channel("model").join("model.safetensors"), b"not a safetensors file").unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("model.safetensors") || reason.contains("safetensors"), "{reason}");

    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    let mut cfg = crate::common::tiny_config_json(2, 32);
    cfg["model_type"] = serde_json::json!("gpt2");
    std::fs::write(job.channel("model").join("config.json"), cfg.to_string()).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("gpt2") && reason.contains("supported"), "{reason}");
}

#[test]
fn an_unsupported_family_and_a_model_channel_without_config_say_so() {
    // A BART config has none of the decoder's fields: the message is about the family, not a field.
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    let bart =
        r#"{"architectures":["BartForConditionalGeneration"],"model_type":"bart","d_model":64,"vocab_size":32128}"#;
    std::fs::write(job.channel("model").join("config.json"), bart).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("model_type `bart` is not supported; supported families: llama"), "{reason}");
    // T5 is read as T5: a field it lacks is named with the file.
    let t5 = r#"{"architectures":["T5ForConditionalGeneration"],"model_type":"t5","d_model":64,"num_layers":2,"vocab_size":32128}"#;
    std::fs::write(job.channel("model").join("config.json"), t5).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("config.json") && reason.contains("`d_kv` is missing"), "{reason}");
    // A supported family with a field missing names the family and the field.
    let mut cfg = crate::common::tiny_config_json(2, 32);
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(job.channel("model").join("config.json"), cfg.to_string()).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("not a valid llama config") && reason.contains("num_hidden_layers"), "{reason}");
    // A model channel that holds no config.json is bad input (exit 2), named as such.
    std::fs::remove_file(job.channel("model").join("config.json")).unwrap();
    let reason = expect_failure(&job, &[], 2);
    assert!(reason.contains("has no config.json") && reason.contains("model"), "{reason}");
}

#[test]
fn a_samsum_shaped_csv_trains_and_the_log_names_the_columns() {
    let job = Job::new(crate::common::SMALL_JOB, "");
    std::fs::remove_file(job.channel("train").join("data.jsonl")).unwrap();
    let rows: String = (0..8).map(|i| format!("{i},\"A: add {i} and 1\nB: ok\",They add {i} and 1.\n")).collect();
    std::fs::write(job.channel("train").join("samsum.csv"), format!("id,dialogue,summary\n{rows}")).unwrap();
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("using columns `dialogue` as the prompt and `summary` as the completion"), "{stdout}");
    assert!(stdout.contains("8 rows from 1 file(s), format prompt_completion"), "{stdout}");
}

/// The `epoch` of the last METRIC line on stdout.
fn last_metric_epoch(stdout: &str) -> f64 {
    let line = stdout.lines().rfind(|l| l.starts_with("METRIC ")).expect("a METRIC line");
    let field = line.split_whitespace().find_map(|f| f.strip_prefix("epoch=")).expect("epoch= in the METRIC line");
    field.parse().unwrap()
}

#[test]
fn epochs_completed_says_what_the_metric_lines_say() {
    let hp = [("lora_r", "4"), ("per_device_batch_size", "4"), ("max_seq_length", "32"), ("logging_steps", "1")];
    // Two whole epochs: 24 rows, 4 per batch, no packing = 6 steps an epoch.
    let job = Job::new(&[&hp[..], &[("epochs", "2"), ("packing", "false")]].concat(), &rows(24));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_metric_epoch(&String::from_utf8_lossy(&out.stdout)), 2.0, "{}", text(&out));
    assert_eq!(job.summary()["epochs_completed"], 2.0);
    assert_eq!(job.summary()["steps"], 12);
    // max_steps stopping inside the first epoch: a fraction, the same as the METRIC line's.
    let job =
        Job::new(&[&hp[..], &[("max_steps", "4"), ("save_steps", "2"), ("packing", "false")]].concat(), &rows(24));
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let epochs = job.summary()["epochs_completed"].as_f64().unwrap();
    assert!((epochs - 4.0 / 6.0).abs() < 1e-9, "{epochs}");
    assert!((last_metric_epoch(&String::from_utf8_lossy(&out.stdout)) - epochs).abs() < 0.005);
    // Run again: it resumes from checkpoint-2 and must report the same.
    std::fs::remove_dir_all(job.root().join("model")).unwrap();
    let out = job.run(&[]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Resuming from checkpoint"),
        "{}",
        text(&out)
    );
    assert_eq!(job.summary()["epochs_completed"].as_f64().unwrap(), epochs);
}

#[test]
fn pipe_mode_foreign_hosts_and_methods_not_built_are_refused() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    let cfg = job.root().join("input/config");
    std::fs::write(cfg.join("inputdataconfig.json"), r#"{"train":{"TrainingInputMode":"Pipe"}}"#).unwrap();
    assert!(expect_failure(&job, &[], 2).contains("Pipe"));
    std::fs::remove_file(cfg.join("inputdataconfig.json")).unwrap();
    std::fs::write(cfg.join("resourceconfig.json"), r#"{"current_host":"algo-3","hosts":["algo-1","algo-2"]}"#)
        .unwrap();
    assert!(expect_failure(&job, &[], 2).contains("`algo-3` is not among hosts"));
    std::fs::write(cfg.join("resourceconfig.json"), r#"{"current_host":"algo-1","hosts":["algo-1","algo-2"]}"#)
        .unwrap();
    std::fs::write(cfg.join("inputdataconfig.json"), r#"{"train":{"S3DistributionType":"ShardedByS3Key"}}"#).unwrap();
    assert!(expect_failure(&job, &[], 2).contains("ShardedByS3Key on 2 hosts"));
    std::fs::remove_file(cfg.join("inputdataconfig.json")).unwrap();
    std::fs::remove_file(cfg.join("resourceconfig.json")).unwrap();
    let out = job.command(&["--num_gpus", "2"]).env("OXTUNE_MASTER_PORT", "seventy").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(job.failure().unwrap().contains("OXTUNE_MASTER_PORT=seventy is not a port number"));
    // QLoRA runs now; its unimplemented fp4 variant is refused.
    assert!(expect_failure(&job, &["--method", "qlora", "--bnb_4bit_quant_type", "fp4"], 2).contains("fp4"));
}

#[test]
fn help_serve_and_stale_failure_file() {
    let job = Job::new(crate::common::SMALL_JOB, &rows(8));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_train")).arg("--help").output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage"));
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_train")).arg("serve").output().unwrap();
    assert_eq!(serve.status.code(), Some(2));
    // A failure file from an earlier attempt is cleared by a successful run.
    std::fs::create_dir_all(job.root().join("output")).unwrap();
    std::fs::write(job.root().join("output/failure"), "old").unwrap();
    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(job.failure().is_none());
}

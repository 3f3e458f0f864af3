//! SIGTERM → checkpoint → exit 143 → restart resumes automatically and produces
//! the same loss sequence and adapter, bit for bit, as an uninterrupted run.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{loss_bits, rows, text, Job};

const HP: &[(&str, &str)] = &[
    ("max_steps", "160"),
    ("lora_r", "4"),
    ("lora_dropout", "0.1"), // exercises the saved RNG state
    ("per_device_batch_size", "2"),
    ("gradient_accumulation_steps", "2"),
    ("max_seq_length", "32"),
    ("logging_steps", "1"),
    ("save_steps", "0"),
    ("learning_rate", "1e-3"),
    ("seed", "3"),
    ("lr_scheduler", "cosine"),
    ("warmup_steps", "5"),
];

#[test]
fn same_seed_gives_identical_loss_sequence() {
    let hp: Vec<(&str, &str)> =
        HP.iter().copied().map(|(k, v)| if k == "max_steps" { (k, "6") } else { (k, v) }).collect();
    let a = Job::new(&hp, &rows(20));
    let b = Job::new(&hp, &rows(20));
    for j in [&a, &b] {
        let out = j.run(&[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (la, lb) = (loss_bits(&a.summary()), loss_bits(&b.summary()));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb);
}

/// Runs `hp` uninterrupted, then again with a SIGTERM after step 4 and a restart; both must agree
/// bit for bit. `new` makes the job tree (the tiny Llama or the tiny T5).
fn sigterm_then_resume_matches_uninterrupted(
    new: fn(&[(&str, &str)], &str) -> Job,
    hp: &[(&str, &str)],
    data: &str,
    max_steps: u64,
) {
    let reference = new(hp, data);
    let out = reference.run(&[]);
    assert!(out.status.success(), "{}", text(&out));

    let job = new(hp, data);
    let mut child = job.command(&[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Wait until training is under way, then stop it as SageMaker would.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("METRIC step=4 ") {
            break;
        }
    }
    let sent = Instant::now();
    let kill = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(60), "exits well inside SageMaker's 120 s grace");
    assert_eq!(status.code(), Some(143), "interrupted exit code; output after the signal:\n{}", rest.join("\n"));
    let failure = job.failure().expect("failure file on interruption");
    assert!(failure.starts_with("Interrupted") && failure.contains("checkpoint"), "{failure}");
    let ckpts: Vec<_> = std::fs::read_dir(job.root().join("checkpoints")).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(ckpts.len(), 1, "one complete checkpoint, no temporaries");
    let name = ckpts[0].file_name().to_string_lossy().to_string();
    let step: u64 = name.strip_prefix("checkpoint-").unwrap().parse().unwrap();
    assert!((4..max_steps).contains(&step), "{name}");

    let out = job.run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Resuming from checkpoint"), "{}", text(&out));
    assert!(job.failure().is_none(), "the stale failure file is gone after a successful resume");

    assert_eq!(loss_bits(&job.summary()), loss_bits(&reference.summary()));
    let adapter = |j: &Job| std::fs::read(j.root().join("model/adapter_model.safetensors")).unwrap();
    assert!(adapter(&job) == adapter(&reference), "adapters differ after resume");
}

#[test]
fn sigterm_checkpoints_and_resume_is_bit_exact() {
    sigterm_then_resume_matches_uninterrupted(Job::new, HP, &rows(20), 160);
}

/// The same for T5 (the encoder–decoder path through the same frame), LoRA dropout included.
#[test]
fn t5_sigterm_checkpoints_and_resume_is_bit_exact() {
    sigterm_then_resume_matches_uninterrupted(Job::new_t5, HP, &rows(20), 160);
}

#[test]
fn grpo_resume_restores_the_sampling_rng_bit_exact() {
    let prompts: String = (0..12)
        .map(|i| serde_json::json!({"prompt": format!("Item {i}:"), "answer": "7"}).to_string() + "\n")
        .collect();
    let hp: &[(&str, &str)] = &[
        ("method", "grpo"),
        ("reward_funcs", "format,length"),
        ("reward_weights", "1.0,0.5"),
        ("format_regex", "e"),
        ("num_generations", "4"),
        ("per_device_batch_size", "4"),
        ("gradient_accumulation_steps", "2"),
        ("max_completion_length", "6"),
        ("max_steps", "120"),
        ("beta", "0.05"),
        ("lora_r", "4"),
        ("learning_rate", "5e-3"),
        ("logging_steps", "1"),
        ("save_steps", "0"),
        ("log_completions_steps", "0"),
        ("seed", "9"),
    ];
    sigterm_then_resume_matches_uninterrupted(Job::new, hp, &prompts, 120);
    // The same with a T5 policy (encoder prompts, decoder completions).
    sigterm_then_resume_matches_uninterrupted(Job::new_t5, hp, &prompts, 120);
}

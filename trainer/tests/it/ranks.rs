//! Ranks as processes: `train` on each of two hosts (two /opt/ml trees on this machine, the
//! SageMaker host names mapped onto loopback) starts two CPU workers; the four ranks meet at rank
//! 0's port and train as one rank with the whole batch would, and rank 0 alone writes; a worker
//! killed mid-run fails the job on both hosts within seconds, naming its rank; SIGTERM stops every
//! rank at a checkpoint, and a restart on another world size resumes from it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{rows, text, Job};

const HOSTS: [&str; 2] = ["algo-1", "algo-2"];

fn hp(max_steps: &str, ga: &str, num_gpus: &str) -> Vec<(&'static str, String)> {
    [
        ("max_steps", max_steps),
        ("lora_r", "4"),
        // Dropout streams differ by world size (each rank draws its own); the comparison needs none.
        ("lora_dropout", "0"),
        ("per_device_batch_size", "2"),
        ("gradient_accumulation_steps", ga),
        ("num_gpus", num_gpus),
        ("max_seq_length", "32"),
        ("logging_steps", "1"),
        ("save_steps", "2"),
        ("learning_rate", "1e-2"),
        ("seed", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

fn job(hp: &[(&'static str, String)], host: usize, hosts: &[&str]) -> Job {
    let hp: Vec<(&str, &str)> = hp.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let j = Job::new(&hp, &rows(24));
    let rc = serde_json::json!({"current_host": hosts[host], "hosts": hosts, "network_interface_name": "lo"});
    std::fs::write(j.root().join("input/config/resourceconfig.json"), rc.to_string()).unwrap();
    j
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `train` for one host of the job; rank 0 waits at `port`.
fn host(j: &Job, port: u16) -> Command {
    let mut c = j.command(&[]);
    c.env("OXTUNE_HOST_ADDRS", "algo-1=127.0.0.1,algo-2=127.0.0.1")
        .env("OXTUNE_MASTER_PORT", port.to_string())
        .env("OXTUNE_RENDEZVOUS_TIMEOUT", "60");
    c
}

fn adapter(j: &Job) -> Vec<f32> {
    let t = candle_core::safetensors::load(j.root().join("model/adapter_model.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    let sorted: std::collections::BTreeMap<_, _> = t.into_iter().collect();
    sorted.values().flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn losses(j: &Job) -> Vec<f64> {
    j.summary()["history"].as_array().unwrap().iter().filter_map(|r| r.get("loss")?.as_f64()).collect()
}

/// Files under `dir` (none when it does not exist).
fn files(dir: &std::path::Path) -> usize {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).map(|e| if e.path().is_dir() { files(&e.path()) } else { 1 }).sum(),
        Err(_) => 0,
    }
}

#[test]
fn two_hosts_of_two_ranks_train_as_one_rank_with_the_whole_batch_and_rank_0_writes() {
    // The same effective batch: 4 ranks × 1 micro-batch, 1 rank × 4.
    let (a, b) = (job(&hp("4", "1", "2"), 0, &HOSTS), job(&hp("4", "1", "2"), 1, &HOSTS));
    let one = job(&hp("4", "4", "1"), 0, &HOSTS[..1]);
    let port = free_port();
    let (ra, rb) = std::thread::scope(|s| {
        let rb = s.spawn(|| host(&b, port).output().unwrap());
        let ra = host(&a, port).output().unwrap();
        (ra, rb.join().unwrap())
    });
    assert!(ra.status.success(), "host algo-1:\n{}", text(&ra));
    assert!(rb.status.success(), "host algo-2:\n{}", text(&rb));
    let out = one.run(&[]);
    assert!(out.status.success(), "{}", text(&out));

    let stdout = String::from_utf8_lossy(&ra.stdout);
    assert!(stdout.contains("Data parallelism: 4 ranks (2 host(s) × 2)"), "{stdout}");
    assert!(stdout.contains("Outputs in") && !String::from_utf8_lossy(&rb.stdout).contains("Outputs in"));
    let metric_lines = |s: &str| s.lines().filter(|l| l.starts_with("METRIC step=1 ")).count();
    assert_eq!(metric_lines(&stdout) + metric_lines(&String::from_utf8_lossy(&rb.stdout)), 1, "rank 0 alone logs");
    // Rank 0 writes the outputs and checkpoints; the other host writes nothing.
    assert!(a.root().join("model/adapter_model.safetensors").exists());
    assert!(files(&a.root().join("checkpoints")) > 0);
    for dir in ["model", "output", "checkpoints"] {
        assert_eq!(files(&b.root().join(dir)), 0, "algo-2 wrote under {dir}/");
    }
    let batch = |j: &Job| (j.summary()["ranks"].as_u64(), j.summary()["effective_batch_size"].as_u64());
    assert_eq!((batch(&a), batch(&one)), ((Some(4), Some(8)), (Some(1), Some(8))));
    let (la, l1) = (losses(&a), losses(&one));
    assert_eq!(la.len(), 4);
    for (x, y) in la.iter().zip(&l1) {
        assert!((x - y).abs() < 1e-4 * y.abs().max(1.0), "4 ranks' loss {x} vs one rank's {y}");
    }
    let (wa, w1) = (adapter(&a), adapter(&one));
    let scale = w1.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
    let d = wa.iter().zip(&w1).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(d <= 1e-4 * scale, "adapters differ by {d}");
}

/// Starts both hosts of a long job and returns them once rank 0 has logged step 2, with rank 0's
/// remaining stdout drained in the background.
fn start_long_job(a: &Job, b: &Job) -> (Child, Child) {
    let port = free_port();
    let hb = host(b, port).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut ha = host(a, port).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(ha.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("METRIC step=2 ") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (ha, hb)
}

/// The worker processes `parent` started, with their local rank.
fn workers_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid …: comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let local = env
                .split(|b| *b == 0)
                .find_map(|kv| String::from_utf8_lossy(kv).strip_prefix("OXTUNE_LOCAL_RANK=").map(str::to_string));
            out.extend(local.map(|l| (pid, l)));
        }
    }
    out
}

fn wait_with_output(c: Child, limit: Duration) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = c.wait_with_output().unwrap();
    assert!(t.elapsed() < limit, "took {:?}", t.elapsed());
    (out, t.elapsed())
}

#[test]
fn a_killed_worker_fails_the_job_on_both_hosts_naming_its_rank() {
    let (a, b) = (job(&hp("100000", "1", "2"), 0, &HOSTS), job(&hp("100000", "1", "2"), 1, &HOSTS));
    let (ha, hb) = start_long_job(&a, &b);
    let victims = workers_of(hb.id());
    let (pid, _) = victims.iter().find(|(_, l)| l == "1").expect("algo-2 runs local rank 1");
    assert!(Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap().success());
    let (ob, _) = wait_with_output(hb, Duration::from_secs(30));
    let (oa, _) = wait_with_output(ha, Duration::from_secs(30));
    assert_eq!(ob.status.code(), Some(1), "{}", text(&ob));
    let fb = b.failure().expect("algo-2's failure file");
    assert!(fb.contains("rank 3 of 4 (host algo-2, local rank 1) was killed"), "{fb}");
    assert_ne!(oa.status.code(), Some(0), "{}", text(&oa));
    let fa = a.failure().expect("algo-1's failure file");
    assert!(fa.contains("rank 3 failed") || fa.contains("rank 2 failed"), "algo-1 names the lost rank: {fa}");
}

#[test]
fn sigterm_stops_every_rank_at_a_checkpoint_and_fewer_ranks_resume_it() {
    let (a, b) = (job(&hp("100000", "1", "2"), 0, &HOSTS), job(&hp("100000", "1", "2"), 1, &HOSTS));
    let (ha, hb) = start_long_job(&a, &b);
    for h in [&ha, &hb] {
        assert!(Command::new("kill").arg("-TERM").arg(h.id().to_string()).status().unwrap().success());
    }
    let (oa, _) = wait_with_output(ha, Duration::from_secs(60));
    let (ob, _) = wait_with_output(hb, Duration::from_secs(60));
    assert_eq!((oa.status.code(), ob.status.code()), (Some(143), Some(143)), "{}\n{}", text(&oa), text(&ob));
    assert!(a.failure().unwrap().starts_with("Interrupted"), "{:?}", a.failure());
    let step = crate::common::newest_checkpoint_step(&a.root().join("checkpoints")).expect("rank 0 checkpointed");
    assert_eq!(files(&b.root().join("checkpoints")), 0);

    // The same job on algo-1 alone with one rank: 4 micro-batches per step as before.
    std::fs::write(
        a.root().join("input/config/resourceconfig.json"),
        serde_json::json!({"current_host": "algo-1", "hosts": ["algo-1"]}).to_string(),
    )
    .unwrap();
    let until = (step + 2).to_string();
    let out = a.run(&["--num_gpus", "1", "--max_steps", &until]);
    assert!(out.status.success(), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("gradient_accumulation_steps 1 → 4 keeps the effective batch"), "{log}");
    assert!(log.contains("Resuming from checkpoint"), "{log}");
    assert_eq!(a.summary()["steps"].as_u64(), Some(step + 2), "{}", a.summary());
    assert!(a.failure().is_none());
}

/// GRPO on two CPU ranks of one host: each rank generates its own prompts' groups, a step takes
/// both ranks' prompts (half the steps of one rank per epoch), rank 0 logs and writes its own
/// prompts' completions, and a run reproduces bit for bit.
#[test]
fn grpo_on_two_ranks_splits_the_prompts_and_reproduces() {
    let prompts: String =
        (0..8).map(|i| serde_json::json!({"prompt": format!("Say something {i}:")}).to_string() + "\n").collect();
    let hp: &[(&str, &str)] = &[
        ("method", "grpo"),
        ("reward_funcs", "format"),
        ("format_regex", "e"),
        ("num_generations", "4"),
        ("per_device_batch_size", "4"),
        ("max_completion_length", "4"),
        ("lora_r", "4"),
        ("logging_steps", "1"),
        ("log_completions_steps", "1"),
        ("save_steps", "0"),
        ("seed", "5"),
        ("num_gpus", "2"),
    ];
    let run = || {
        let j = Job::new(hp, &prompts);
        // One host: no host-name mapping needed (rank 0 is local).
        let out = j.command(&[]).env("OXTUNE_MASTER_PORT", free_port().to_string()).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        (j, out)
    };
    let (a, out) = run();
    let (b, _) = run();
    let summary = a.summary();
    assert_eq!(summary["total_steps"].as_u64(), Some(4), "8 prompts, 1 per rank per step, 2 ranks");
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(log.lines().filter(|l| l.starts_with("METRIC step=") && l.contains("reward=")).count(), 4, "{log}");
    let rows = std::fs::read_to_string(a.root().join("output/data/completions/step-000001.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 4, "rank 0's one prompt × 4 generations");
    assert_eq!(adapter(&a), adapter(&b), "two runs on two ranks agree bit for bit");
}

/// Two GPUs of one host reduce over NCCL (the GPU test pack's 2-GPU run): the same effective batch
/// as one GPU with twice the accumulation gives the same losses within bf16 tolerance, and the
/// ranks' adapters agree (debug builds check them at every save). Skipped where fewer than two
/// GPUs exist; `OXTUNE_REQUIRE_GPU` makes a machine without any GPU a failure.
#[cfg(feature = "cuda")]
mod nccl_two_gpus {
    use super::*;

    #[test]
    fn cuda() {
        let gpus = candle_core::cuda::cudarc::driver::CudaContext::device_count().unwrap_or(0);
        if gpus < 2 {
            assert!(gpus > 0 || std::env::var_os("OXTUNE_REQUIRE_GPU").is_none(), "no CUDA GPU");
            eprintln!("SKIPPED nccl_two_gpus: it needs 2 GPUs, this machine has {gpus}");
            return;
        }
        let two = job(&hp("4", "1", "2"), 0, &HOSTS[..1]);
        let one = job(&hp("4", "2", "1"), 0, &HOSTS[..1]);
        let out2 = host(&two, free_port()).env("OXTUNE_DEVICE", "cuda").output().unwrap();
        assert!(out2.status.success(), "2 GPUs:\n{}", text(&out2));
        let out1 = one.command(&[]).env("OXTUNE_DEVICE", "cuda").output().unwrap();
        assert!(out1.status.success(), "1 GPU:\n{}", text(&out1));
        let log = text(&out2);
        assert!(log.contains("Data parallelism: 2 ranks") && log.contains("summed by NCCL"), "{log}");
        for (x, y) in losses(&two).iter().zip(&losses(&one)) {
            assert!((x - y).abs() < 3e-2 * y.abs().max(1.0), "2 GPUs' loss {x} vs one GPU's {y}");
        }
    }
}

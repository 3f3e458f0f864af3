//! `oxtune local --image / --docker` without a Docker engine: a fake `docker`
//! (tests/fixtures/fake-docker.sh) first on PATH records every `docker run` / `docker kill`
//! command line and the container's environment, and acts like the container by running a
//! trainer over the mounted `/opt/ml` tree. Checked: the exact `docker run` command line
//! (`--gpus`, `--user`, the `-v` mounts, `-e` names only, image, `train`), secrets passed by name
//! and never printed, SIGTERM / SIGKILL through `docker kill`, restart + resume after an injected
//! interruption, and model.tar.gz packing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{demo_channels, tar_names, train_binary};

const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/oxtune:0.1.0";
const TOKEN: &str = "hf_dockerTestTokenAbCdEfGhIjKlMnOpQrStUv";

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding only `docker` → the fake script.
fn fake_docker_bin(dir: &Path) -> PathBuf {
    let script = manifest().join("tests/fixtures/fake-docker.sh");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{} must be executable (chmod +x)", script.display());
    }
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    // A symlink, not a written copy: executing a file just written by this multi-threaded test
    // process can fail with ETXTBSY when another thread forks meanwhile.
    if !bin.join("docker").exists() {
        std::os::unix::fs::symlink(&script, bin.join("docker")).unwrap();
    }
    bin
}

/// `oxtune` with the fake docker first on PATH and no AWS settings.
fn oxtune(dir: &Path, record: &Path, train_bin: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oxtune"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k == "HF_TOKEN" || k.starts_with("OXTUNE_") {
            c.env_remove(k);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{}:{path}", fake_docker_bin(dir).display()))
        .env("HOME", dir)
        .env("FAKE_DOCKER_RECORD", record)
        .env("FAKE_DOCKER_TRAIN_BIN", train_bin);
    c
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).lines().map(str::to_string).collect()
}

/// The recorded commands in order: (file stem like `run-0`, argv).
fn recorded(record: &Path) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(usize, String, Vec<String>)> = std::fs::read_dir(record)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "argv"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let n: usize = stem.rsplit('-').next().unwrap().parse().unwrap();
            (n, stem, lines(&p))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, s, a)| (s, a)).collect()
}

fn user() -> String {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
    format!("{u}:{g}")
}

fn all_output(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The job image on a CPU machine (`--docker --gpus none`), a relative work dir (the default is
/// relative too), and a trainer that ignores SIGTERM: max runtime → `docker kill --signal TERM`,
/// then `--signal KILL` after the grace period; the job ends Stopped (exit 2).
#[test]
fn docker_max_runtime_sends_term_then_kill_through_docker_kill() {
    let d = tempfile::tempdir().unwrap();
    let record = d.path().join("record");
    std::fs::write(d.path().join("train.jsonl"), "{\"prompt\":\"a\",\"completion\":\"b\"}\n").unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        format!(
            "name = \"docker-stop\"\n[sagemaker]\nimage = \"{IMAGE}\"\ninstance_type = \"ml.g5.xlarge\"\nmax_runtime = \"1s\"\n\
             [hyperparameters]\nepochs = 1\n[channels]\ntrain = \"train.jsonl\"\n\
             [environment]\nFAKE_TRAIN_STEPS = \"1000\"\nFAKE_TRAIN_IGNORE_TERM = \"1\"\n"
        ),
    )
    .unwrap();
    let fake_train = manifest().join("../tests/launcher/fake-train.sh");
    let started = std::time::Instant::now();
    let out = oxtune(d.path(), &record, &fake_train)
        .current_dir(d.path())
        .args(["local", "--exact-name", "--docker", "--gpus", "none", "--stop-grace", "1s", "--work-dir", "work"])
        .arg("job.toml")
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(4), "stopped has its own exit code: {text}");
    assert!(started.elapsed().as_secs() < 20, "{text}");
    assert!(text.contains("ignoring SIGTERM") && text.contains("sending SIGKILL"), "{text}");
    assert!(text.contains("Stopped (MaxRuntimeExceeded)"), "{text}");

    let work = d.path().canonicalize().unwrap().join("work");
    let train = d.path().canonicalize().unwrap().join("train.jsonl");
    let cmds = recorded(&record);
    let names: Vec<&str> = cmds.iter().map(|(s, _)| s.split('-').next().unwrap()).collect();
    assert_eq!(names, ["run", "kill", "kill"], "{cmds:?}");
    assert_eq!(
        cmds[0].1,
        strs(&[
            "run",
            "--rm",
            "--name",
            "oxtune-docker-stop-1",
            "--user",
            &user(),
            "-v",
            &format!("{}:/opt/ml", work.join("opt_ml").display()),
            "-v",
            &format!("{}:/opt/ml/input/data/train/train.jsonl:ro", train.display()),
            "-e",
            "TRAINING_JOB_NAME",
            "-e",
            "TRAINING_JOB_ARN",
            "-e",
            "FAKE_TRAIN_IGNORE_TERM",
            "-e",
            "FAKE_TRAIN_STEPS",
            IMAGE,
            "train",
        ]),
        "`--gpus none` leaves the flag out; the work dir is made absolute for the bind mount"
    );
    assert_eq!(cmds[1].1, strs(&["kill", "--signal", "TERM", "oxtune-docker-stop-1"]));
    assert_eq!(cmds[2].1, strs(&["kill", "--signal", "KILL", "oxtune-docker-stop-1"]));
    // A stopped job still gets its model packed, like SageMaker.
    assert!(work.join("output/model.tar.gz").is_file());
}

#[test]
fn docker_errors_are_explained() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("train.jsonl"), "{\"text\":\"a\"}\n").unwrap();
    let job = |image: &str| {
        format!("name = \"docker-err\"\n[sagemaker]\n{image}\n[hyperparameters]\nepochs = 1\n[channels]\ntrain = \"train.jsonl\"\n")
    };
    std::fs::write(d.path().join("noimage.toml"), job("")).unwrap();
    std::fs::write(d.path().join("image.toml"), job(&format!("image = \"{IMAGE}\""))).unwrap();
    let record = d.path().join("record");
    let fake_train = manifest().join("../tests/launcher/fake-train.sh");

    let out = oxtune(d.path(), &record, &fake_train)
        .current_dir(d.path())
        .args(["local", "--docker", "--work-dir", "w1", "noimage.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(all_output(&out).contains("--docker needs an image"), "{}", all_output(&out));

    // No container engine on PATH at all: named before anything is started.
    let empty = d.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = oxtune(d.path(), &record, &fake_train)
        .current_dir(d.path())
        .env("PATH", &empty)
        .args(["local", "--docker", "--work-dir", "w2", "image.toml"])
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("neither `docker` nor `podman` is on PATH") && text.contains("install one"), "{text}");
    assert!(!record.exists(), "nothing should have reached a docker: {:?}", recorded(&record));
}

/// `oxtune local --image IMAGE` with GPUs (`--gpus all`), directory channels mounted read-only,
/// HF_TOKEN passed by name only, an injected spot interruption delivered with `docker kill`,
/// a second container that resumes from the checkpoint, and model.tar.gz from the real trainer.
#[test]
fn docker_run_command_line_interruption_resume_and_packing() {
    let Some(train) = train_binary() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = demo_channels(&train, d.path());

    let steps = 6u64;
    let mut hp = trainer::demo::demo_hyperparameters(Some(steps), trainer::demo::DemoFamily::Llama);
    hp.insert("logging_steps".into(), "1".into());
    hp.insert("save_steps".into(), "0".into()); // only the SIGTERM checkpoint
    hp.insert("eval_steps".into(), "0".into());
    let mut job = format!(
        "name = \"docker-e2e\"\npass_env = [\"HF_TOKEN\"]\n[sagemaker]\nimage = \"{IMAGE}\"\ninstance_type = \"ml.g5.xlarge\"\nmax_runtime = \"30m\"\n[hyperparameters]\n"
    );
    for (k, v) in &hp {
        job.push_str(&format!("{k} = {}\n", toml::Value::String(v.clone())));
    }
    job.push_str("[channels]\n");
    for ch in ["train", "validation", "model"] {
        job.push_str(&format!("{ch} = {}\n", toml::Value::String(data.join(ch).display().to_string())));
    }
    job.push_str("[environment]\nOXTUNE_DEVICE = \"cpu\"\n");
    std::fs::write(d.path().join("job.toml"), job).unwrap();

    let record = d.path().join("record");
    let work = d.path().canonicalize().unwrap().join("work");
    let out = oxtune(d.path(), &record, &train)
        .args(["local", "--exact-name", "--image", IMAGE, "--stop-grace", "60s", "--interrupt-after-step", "2"])
        .arg("--work-dir")
        .arg(&work)
        .arg(d.path().join("job.toml"))
        .env("HF_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains(TOKEN), "the token was printed:\n{text}");

    let cmds = recorded(&record);
    let kinds: Vec<&str> = cmds.iter().map(|(s, _)| s.split('-').next().unwrap()).collect();
    assert_eq!(kinds, ["run", "kill", "run"], "{cmds:?}");
    let expected_run = |attempt: u32| {
        let mut v = strs(&["run", "--rm", "--name", &format!("oxtune-docker-e2e-{attempt}"), "--gpus", "all"]);
        v.extend(strs(&["--user", &user(), "-v", &format!("{}:/opt/ml", work.join("opt_ml").display())]));
        for ch in ["model", "train", "validation"] {
            v.push("-v".into());
            v.push(format!("{}:/opt/ml/input/data/{ch}:ro", data.join(ch).display()));
        }
        v.extend(strs(&[
            "-e",
            "TRAINING_JOB_NAME",
            "-e",
            "TRAINING_JOB_ARN",
            "-e",
            "HF_TOKEN",
            "-e",
            "OXTUNE_DEVICE",
            IMAGE,
            "train",
        ]));
        v
    };
    assert_eq!(cmds[0].1, expected_run(1));
    assert_eq!(cmds[1].1, strs(&["kill", "--signal", "TERM", "oxtune-docker-e2e-1"]));
    assert_eq!(cmds[2].1, expected_run(2));
    // The value reached the container through docker's environment, not its command line.
    let env = lines(&record.join(format!("{}.env", cmds[0].0)));
    for want in [
        format!("HF_TOKEN={TOKEN}"),
        "OXTUNE_DEVICE=cpu".to_string(),
        "TRAINING_JOB_NAME=docker-e2e".to_string(),
        "TRAINING_JOB_ARN=arn:aws:sagemaker:local:000000000000:training-job/docker-e2e".to_string(),
    ] {
        assert!(env.contains(&want), "missing {want} in the container environment: {env:?}");
    }

    assert!(text.contains("simulated spot interruption — sending SIGTERM"), "{text}");
    assert!(text.contains("attempt 1 ended") && text.contains("exit code 143"), "{text}");
    let after = text.split("Resuming from checkpoint").nth(1).unwrap_or_else(|| panic!("no resume:\n{text}"));
    assert!(after.contains(&format!("METRIC step={steps} ")), "{text}");
    assert!(!after.contains("METRIC step=1 "), "restarted from scratch:\n{text}");
    assert!(text.contains("Completed after 2 attempt(s)"), "{text}");

    let model = tar_names(&work.join("output/model.tar.gz"));
    assert!(model.iter().any(|n| n == "adapter_model.safetensors"), "{model:?}");
    assert!(model.iter().any(|n| n == "adapter_config.json"), "{model:?}");
    assert!(work.join("output/output.tar.gz").is_file());
}

//! One process per GPU. `train` on each host works out the job's ranks — the hosts of
//! `resourceconfig.json` × the GPUs of a host (`num_gpus` limits them; on a host without GPUs,
//! `num_gpus` CPU ranks) — and when there is more than one, starts a worker per local rank (itself,
//! re-executed, as torchrun starts Python) and supervises them: a worker that fails takes the
//! others on its host down at once and its rank and reason go to `output/failure`; SIGTERM reaches
//! every worker (they checkpoint together); the exit code is what one process would have returned.

use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::device;
use crate::dist::nccl_env::{nccl_vars, NcclHost};
use crate::dist::topology::{self, Topology};
use crate::dist::worker::{self, WorkerEnv};
use crate::error::TrainError;
use crate::job::{self, JobOptions};
use crate::sagemaker::{self, ExitCode};

/// How this process runs the job.
pub enum Plan {
    /// In this process: one rank, or a worker a supervisor started.
    InProcess,
    /// Several ranks: start this host's workers and supervise them.
    /// `nccl`: what the workers get for NCCL (see `dist::nccl_env`).
    Ranks { topology: Topology, nccl: Vec<(&'static str, String)> },
}

/// The job's ranks, worked out before anything is loaded.
pub fn plan(opts: &JobOptions) -> Result<Plan, TrainError> {
    if WorkerEnv::from_env(&opts.env)?.is_some() {
        return Ok(Plan::InProcess);
    }
    let spec = job::resolve_spec(&opts.paths, &opts.env, &opts.cli)?;
    let resources = sagemaker::read_resource_config(&opts.paths)?;
    let local = device::local_ranks(&opts.env, spec.num_gpus)?;
    let port = match sagemaker::env_value(&opts.env, topology::PORT_VAR) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| TrainError::BadInput(format!("{}={v} is not a port number", topology::PORT_VAR)))?,
        None => topology::DEFAULT_PORT,
    };
    let topology = Topology::new(&resources.hosts, &resources.current_host, local, port)
        .map_err(|e| TrainError::BadInput(format!("{e} ({})", opts.paths.config_dir().display())))?;
    if topology.world() == 1 {
        return Ok(Plan::InProcess);
    }
    if topology.hosts.len() > 1 {
        // Every rank walks the same plan of the whole data set; hosts with different shards would not.
        let channels = sagemaker::read_input_data_config(&opts.paths)?;
        if let Some((name, _)) = channels.iter().find(|(name, c)| {
            matches!(name.as_str(), "train" | "training") && c.distribution.as_deref() == Some("ShardedByS3Key")
        }) {
            return Err(TrainError::Unsupported(format!(
                "channel `{name}` is ShardedByS3Key on {} hosts: every rank reads the whole training set for now; use FullyReplicated (the default)",
                topology.hosts.len()
            )));
        }
    }
    let host = NcclHost {
        hosts: topology.hosts.len(),
        network_interface: resources.network_interface_name.as_deref(),
        instance_type: resources.current_instance_type.as_deref(),
        efa_userspace: NcclHost::efa_installed(),
    };
    let nccl = nccl_vars(&host, &opts.env);
    Ok(Plan::Ranks { topology, nccl })
}

/// Starts this host's workers and waits for them; returns the process exit code, with
/// `output/failure` written when the job did not finish.
pub fn run(topology: &Topology, nccl: &[(&'static str, String)], opts: &JobOptions) -> u8 {
    let paths = &opts.paths;
    paths.clear_stale_failure();
    let env = |k: &str| sagemaker::env_value(&opts.env, k);
    let overrides = env(topology::HOST_ADDRS_VAR).unwrap_or_default();
    let timeout =
        env(worker::TIMEOUT_VAR).and_then(|v| v.parse().ok()).map_or(worker::DEFAULT_TIMEOUT, Duration::from_secs);
    if topology.hosts.len() > 1 {
        if let Err(e) = topology::wait_for_names(&topology.hosts, overrides, timeout) {
            return give_up(paths, &TrainError::from(e));
        }
    }
    // One host: every rank is local, so no name needs resolving.
    let master = match topology.hosts.len() {
        1 => format!("127.0.0.1:{}", topology.port),
        _ => topology.master_addr(overrides),
    };
    let reports = std::env::temp_dir().join(format!("oxtune-ranks-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&reports) {
        return give_up(paths, &TrainError::Io { path: reports.display().to_string(), source: e });
    }
    let first = topology.rank(0);
    tracing::info!(
        "Data parallelism: {} ranks ({} host(s) × {}); host {} runs ranks {}–{}; rank 0 listens at {}",
        topology.world(),
        topology.hosts.len(),
        topology.local_ranks,
        topology.hosts[topology.host_index],
        first,
        first + topology.local_ranks - 1,
        master
    );
    if !nccl.is_empty() {
        let list: Vec<String> = nccl.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!("NCCL settings for the workers (as SageMaker's toolkit sets them): {}", list.join(" "));
    }
    let mut children: Vec<Child> = Vec::new();
    let mut relays = Vec::new();
    for local in 0..topology.local_ranks {
        let worker = WorkerEnv {
            rank: topology.rank(local),
            world: topology.world(),
            local_rank: local,
            master: master.clone(),
            report: report_path(&reports, topology.rank(local)),
            timeout,
        };
        match spawn(&worker, nccl, opts) {
            Ok((c, relay)) => {
                children.push(c);
                relays.push(relay);
            }
            Err(e) => {
                kill_all(&mut children);
                return give_up(paths, &TrainError::Io { path: "train (re-executed as a worker)".into(), source: e });
            }
        }
    }
    let statuses = wait_all(&mut children, opts);
    // Every worker has exited, so its stderr is at its end: the relays finish its last lines.
    for r in relays.into_iter().flatten() {
        let _ = r.join();
    }
    let code = conclude(topology, &statuses, &reports, paths);
    let _ = std::fs::remove_dir_all(&reports);
    code
}

fn give_up(paths: &sagemaker::MlPaths, e: &TrainError) -> u8 {
    eprintln!("error: {}", e.reason());
    let _ = paths.write_failure(&e.reason(), "");
    e.exit_code() as u8
}

/// `train train --ml-root ROOT --k=v…` with the worker's place in its environment; its stderr
/// lines get a `[rank N]` prefix, its stdout (rank 0's progress and METRIC lines) passes as is.
fn spawn(
    worker: &WorkerEnv,
    nccl: &[(&'static str, String)],
    opts: &JobOptions,
) -> std::io::Result<(Child, Option<std::thread::JoinHandle<()>>)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("train").arg("--ml-root").arg(&opts.paths.root);
    cmd.args(opts.cli.iter().map(|(k, v)| format!("--{k}={v}")));
    cmd.envs(worker.vars()).envs(nccl.iter().cloned()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let relay = child.stderr.take().map(|err| {
        let rank = worker.rank;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
            }
        })
    });
    Ok((child, relay))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn stopped(s: &ExitStatus) -> bool {
    s.code() == Some(ExitCode::Interrupted as i32)
}

/// How a worker ended: its status, when it was seen to end, and whether the supervisor killed it.
type Ended = (ExitStatus, std::time::Instant, bool);

/// Waits for every worker: SIGTERM is passed on to them; the first that fails takes the others
/// down (they cannot finish a step without it).
fn wait_all(children: &mut [Child], opts: &JobOptions) -> Vec<Ended> {
    let mut done: Vec<Option<Ended>> = vec![None; children.len()];
    let mut forwarded = false;
    let mut failed = false;
    while done.iter().any(Option::is_none) {
        if opts.stop.is_set() && !forwarded {
            forwarded = true;
            for (c, d) in children.iter().zip(&done) {
                if d.is_none() {
                    signal(c, libc::SIGTERM);
                }
            }
        }
        // Only workers still running after an earlier round saw a failure got the supervisor's SIGKILL.
        let killed = failed;
        for (c, d) in children.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                if let Ok(Some(s)) = c.try_wait() {
                    *d = Some((s, std::time::Instant::now(), killed));
                    failed |= !s.success() && !stopped(&s);
                }
            }
        }
        if failed {
            for (c, d) in children.iter().zip(&done) {
                if d.is_none() {
                    signal(c, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done.into_iter().map(|d| d.expect("every worker exited")).collect()
}

/// The job's exit code from its workers'; `output/failure` names the rank that failed first.
fn conclude(topology: &Topology, statuses: &[Ended], reports: &Path, paths: &sagemaker::MlPaths) -> u8 {
    if statuses.iter().all(|(s, _, _)| s.success()) {
        return ExitCode::Success as u8;
    }
    // The cause: a worker killed from outside (it could not say why, and the others failed
    // because it went), else the first to fail; never one the supervisor killed itself.
    let failed = || statuses.iter().enumerate().filter(|(_, (s, _, ours))| !s.success() && !stopped(s) && !ours);
    let culprit = failed()
        .find(|(_, (s, _, _))| s.signal().is_some())
        .or_else(|| failed().min_by_key(|(_, (_, t, _))| *t))
        .or_else(|| statuses.iter().enumerate().find(|(_, (s, _, _))| !s.success()));
    let Some((mut local, _)) = culprit else { return ExitCode::Success as u8 };
    // A worker that failed because another rank of this host did (its report says "rank K
    // failed") points at the cause, which may have been seen to end a moment later.
    let read = |local: usize| std::fs::read_to_string(report_path(reports, topology.rank(local))).unwrap_or_default();
    if let Some(k) = blamed_rank(&read(local)).and_then(|k| k.checked_sub(topology.rank(0))) {
        if statuses.get(k).is_some_and(|(s, _, _)| !s.success()) {
            local = k;
        }
    }
    let status = statuses[local].0;
    let rank = topology.rank(local);
    let (host, _) = topology.place(rank);
    let place = format!("rank {rank} of {} (host {host}, local rank {local})", topology.world());
    let report = read(local);
    let (reason, details) = report.split_once("\n\n").unwrap_or((report.trim(), ""));
    let (reason, code) = match (status.code(), status.signal()) {
        (Some(code), _) if !reason.trim().is_empty() => (format!("{} [{place}]", reason.trim()), code as u8),
        (Some(code), _) => (format!("Internal error: {place} exited with code {code} without a reason"), code as u8),
        (None, Some(sig)) => {
            (format!("Internal error: {place} was {}", describe_signal(sig)), ExitCode::Internal as u8)
        }
        (None, None) => (format!("Internal error: {place} ended abnormally"), ExitCode::Internal as u8),
    };
    eprintln!("error: {reason}");
    if let Err(e) = paths.write_failure(&reason, details) {
        eprintln!("error: could not write {}: {e}", paths.failure_file().display());
    }
    code
}

/// The rank a worker's failure report blames (`… rank K failed: …`), if any.
fn blamed_rank(report: &str) -> Option<usize> {
    let at = report.find(" failed: ")?;
    report[..at].rsplit_once("rank ")?.1.trim().parse().ok()
}

fn report_path(reports: &Path, rank: usize) -> PathBuf {
    reports.join(format!("rank-{rank}.failure"))
}

fn describe_signal(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "killed (SIGKILL: the host ran out of memory, or something outside the job killed it)".into(),
        libc::SIGSEGV | libc::SIGBUS | libc::SIGABRT => {
            format!("crashed (signal {sig}); please report it with the job's logs")
        }
        other => format!("ended by signal {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_blames_the_rank_that_failed_first() {
        let r = "Internal error: data parallelism: rank 3 failed: its connection was lost\n\ndetails";
        assert_eq!(blamed_rank(r), Some(3));
        assert_eq!(blamed_rank("Bad input: no training examples"), None);
    }
}

//! A worker's place in the job, as its supervisor (`train` on the same host) hands it down in the
//! environment, and how the worker joins the others.

use std::path::PathBuf;
use std::time::Duration;

use super::tcp::TcpGroup;
use super::DistError;

pub const RANK_VAR: &str = "OXTUNE_RANK";
pub const WORLD_VAR: &str = "OXTUNE_WORLD_SIZE";
/// The local rank is the GPU ordinal the worker computes on.
pub const LOCAL_RANK_VAR: &str = "OXTUNE_LOCAL_RANK";
/// `host:port` where rank 0 waits for the others.
pub const MASTER_VAR: &str = "OXTUNE_MASTER_ADDR";
/// Where the worker writes its failure reason (its supervisor writes `output/failure`).
pub const REPORT_VAR: &str = "OXTUNE_WORKER_REPORT";
/// Seconds the ranks wait for each other to start (default [`DEFAULT_TIMEOUT`]).
pub const TIMEOUT_VAR: &str = "OXTUNE_RENDEZVOUS_TIMEOUT";
/// As long as SageMaker's training toolkit waits for the hosts' names.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// One worker of a multi-rank job.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master: String,
    pub report: PathBuf,
    pub timeout: Duration,
}

impl WorkerEnv {
    /// The worker's place, or `None` for a process that is not a worker (one rank, or a supervisor).
    pub fn from_env(env: &[(String, String)]) -> Result<Option<WorkerEnv>, DistError> {
        let get = |k: &str| crate::sagemaker::env_value(env, k).map(|v| v.trim().to_string());
        let Some(rank) = get(RANK_VAR) else { return Ok(None) };
        let num = |k: &str, v: Option<String>| -> Result<u64, DistError> {
            let v = v.ok_or_else(|| DistError::Rendezvous(format!("{RANK_VAR} is set but {k} is not")))?;
            v.parse().map_err(|_| DistError::Rendezvous(format!("{k}={v} is not a whole number")))
        };
        let w = WorkerEnv {
            rank: num(RANK_VAR, Some(rank))? as usize,
            world: num(WORLD_VAR, get(WORLD_VAR))? as usize,
            local_rank: num(LOCAL_RANK_VAR, get(LOCAL_RANK_VAR))? as usize,
            master: get(MASTER_VAR)
                .ok_or_else(|| DistError::Rendezvous(format!("{RANK_VAR} is set but {MASTER_VAR} is not")))?,
            report: PathBuf::from(get(REPORT_VAR).unwrap_or_default()),
            timeout: match get(TIMEOUT_VAR) {
                Some(v) => Duration::from_secs(num(TIMEOUT_VAR, Some(v))?),
                None => DEFAULT_TIMEOUT,
            },
        };
        if w.rank >= w.world {
            return Err(DistError::Rendezvous(format!("{RANK_VAR}={} is not below {WORLD_VAR}={}", w.rank, w.world)));
        }
        Ok(Some(w))
    }

    /// The variables a supervisor sets for this worker.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (RANK_VAR, self.rank.to_string()),
            (WORLD_VAR, self.world.to_string()),
            (LOCAL_RANK_VAR, self.local_rank.to_string()),
            (MASTER_VAR, self.master.clone()),
            (REPORT_VAR, self.report.display().to_string()),
            (TIMEOUT_VAR, self.timeout.as_secs().to_string()),
        ]
    }

    /// Joins the other ranks (returns once all have joined).
    pub fn connect(&self) -> Result<TcpGroup, DistError> {
        TcpGroup::join(self.rank, self.world, &self.master, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_environment() {
        let w = WorkerEnv {
            rank: 3,
            world: 4,
            local_rank: 1,
            master: "algo-1:7777".into(),
            report: "/tmp/r3".into(),
            timeout: Duration::from_secs(60),
        };
        let env: Vec<(String, String)> = w.vars().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(WorkerEnv::from_env(&env).unwrap(), Some(w));
        assert_eq!(WorkerEnv::from_env(&[]).unwrap(), None);
        let bad = [(RANK_VAR.to_string(), "4".to_string())];
        assert!(WorkerEnv::from_env(&bad).unwrap_err().to_string().contains("OXTUNE_WORLD_SIZE is not"));
    }
}

//! Who trains where: the job's hosts (SageMaker's `resourceconfig.json`, sorted as SageMaker
//! sorts them), the ranks each host runs, and where rank 0 waits for the others. Ranks are
//! ordered by host position, then by local rank (= the GPU ordinal), as torchrun orders them.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use super::DistError;

/// The port rank 0 listens on, as the SageMaker training toolkit uses for torchrun.
pub const DEFAULT_PORT: u16 = 7777;
/// Overrides [`DEFAULT_PORT`].
pub const PORT_VAR: &str = "OXTUNE_MASTER_PORT";
/// `host=address,…`: names resolved without DNS (tests map SageMaker's `algo-N` onto loopback).
pub const HOST_ADDRS_VAR: &str = "OXTUNE_HOST_ADDRS";

/// The ranks of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Every host, in rank order.
    pub hosts: Vec<String>,
    /// This host's position in `hosts`.
    pub host_index: usize,
    /// Ranks (GPUs) per host; every host runs as many.
    pub local_ranks: usize,
    pub port: u16,
}

impl Topology {
    /// `hosts` sorted (SageMaker lists them sorted; a heterogeneous group need not be),
    /// `current` among them.
    pub fn new(hosts: &[String], current: &str, local_ranks: usize, port: u16) -> Result<Topology, String> {
        let mut hosts = hosts.to_vec();
        hosts.sort();
        hosts.dedup();
        let host_index = hosts
            .iter()
            .position(|h| h == current)
            .ok_or_else(|| format!("current_host `{current}` is not among hosts {hosts:?} in resourceconfig.json"))?;
        Ok(Topology { hosts, host_index, local_ranks: local_ranks.max(1), port })
    }

    pub fn world(&self) -> usize {
        self.hosts.len() * self.local_ranks
    }

    /// The global rank of this host's `local` rank.
    pub fn rank(&self, local: usize) -> usize {
        self.host_index * self.local_ranks + local
    }

    /// The host of global `rank` and its local rank there.
    pub fn place(&self, rank: usize) -> (&str, usize) {
        (&self.hosts[rank / self.local_ranks], rank % self.local_ranks)
    }

    /// `host:port` of rank 0, the host's name mapped through `overrides` (`OXTUNE_HOST_ADDRS`).
    pub fn master_addr(&self, overrides: &str) -> String {
        let host = &self.hosts[0];
        format!("{}:{}", mapped(host, overrides).unwrap_or(host), self.port)
    }
}

/// The address `OXTUNE_HOST_ADDRS` gives `host`, if any.
fn mapped<'a>(host: &str, overrides: &'a str) -> Option<&'a str> {
    overrides.split(',').filter_map(|kv| kv.split_once('=')).find(|(k, _)| k.trim() == host).map(|(_, v)| v.trim())
}

/// Waits until every host's name resolves (SageMaker: names "may not be immediately available"),
/// retrying with backoff as the training toolkit does, up to `timeout`.
pub fn wait_for_names(hosts: &[String], overrides: &str, timeout: Duration) -> Result<(), DistError> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(100);
    for host in hosts {
        let name = mapped(host, overrides).unwrap_or(host);
        loop {
            match (name, 0u16).to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(_)) => break,
                result => {
                    if Instant::now() > deadline {
                        let why = result.err().map(|e| e.to_string()).unwrap_or_else(|| "no address".into());
                        return Err(DistError::Rendezvous(format!(
                            "host `{host}` of resourceconfig.json did not resolve within {}s ({why})",
                            timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ranks_follow_host_order_then_local_rank() {
        // SageMaker sorts names as text: algo-10 before algo-2.
        let t = Topology::new(&hosts(&["algo-2", "algo-1", "algo-10"]), "algo-2", 4, 7777).unwrap();
        assert_eq!(t.hosts, hosts(&["algo-1", "algo-10", "algo-2"]));
        assert_eq!((t.world(), t.rank(0), t.rank(3)), (12, 8, 11));
        assert_eq!(t.place(5), ("algo-10", 1));
        assert_eq!(t.master_addr(""), "algo-1:7777");
        assert_eq!(t.master_addr("algo-1=127.0.0.1, algo-2=127.0.0.1"), "127.0.0.1:7777");
        let e = Topology::new(&hosts(&["algo-1"]), "algo-3", 1, 1).unwrap_err();
        assert!(e.contains("`algo-3` is not among hosts"), "{e}");
    }

    #[test]
    fn names_resolve_or_the_host_is_named() {
        wait_for_names(&hosts(&["algo-1", "localhost"]), "algo-1=127.0.0.1", Duration::from_secs(5)).unwrap();
        let e = wait_for_names(&hosts(&["no-such-host.invalid"]), "", Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("`no-such-host.invalid` of resourceconfig.json did not resolve"), "{e}");
    }
}

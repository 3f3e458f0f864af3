//! The NCCL settings SageMaker's Python toolkit would set for a distributed job, which a
//! bring-your-own container must set itself (the platform gives only `resourceconfig.json`). The
//! supervisor passes them to its workers; a variable the user set is never overridden.
//!
//! Facts from the toolkit (sagemaker-training-toolkit 5.1): `NCCL_SOCKET_IFNAME` from
//! `network_interface_name`; `FI_PROVIDER=efa` and `NCCL_PROTO=simple` on the instance types of
//! `SM_EFA_NCCL_INSTANCES`, `FI_EFA_USE_DEVICE_RDMA=1` and `RDMAV_FORK_SAFE=1` on those of
//! `SM_EFA_RDMA_INSTANCES` (both lists as the toolkit hard-codes them). EFA needs the EFA userspace
//! and the aws-ofi-nccl plugin in the image; without them NCCL uses TCP sockets, so the EFA
//! variables are set only where the EFA userspace is installed.

use std::path::Path;

/// Instance types whose toolkit jobs get `FI_PROVIDER=efa`.
pub const EFA_INSTANCES: [&str; 8] = [
    "ml.g4dn.8xlarge",
    "ml.g4dn.12xlarge",
    "ml.g5.48xlarge",
    "ml.p3dn.24xlarge",
    "ml.p4d.24xlarge",
    "ml.p4de.24xlarge",
    "ml.p5.48xlarge",
    "ml.trn1.32xlarge",
];

/// Instance types whose toolkit jobs also get `FI_EFA_USE_DEVICE_RDMA=1`.
pub const EFA_RDMA_INSTANCES: [&str; 3] = ["ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.trn1.32xlarge"];

/// Where the EFA installer puts the EFA userspace (libfabric, fi_info) in an image.
pub const EFA_HOME: &str = "/opt/amazon/efa";

/// What a job's hosts look like to NCCL.
pub struct NcclHost<'a> {
    pub hosts: usize,
    pub network_interface: Option<&'a str>,
    pub instance_type: Option<&'a str>,
    /// The image has the EFA userspace ([`EFA_HOME`]).
    pub efa_userspace: bool,
}

impl NcclHost<'_> {
    /// Whether this image has the EFA userspace.
    pub fn efa_installed() -> bool {
        Path::new(EFA_HOME).join("lib").is_dir()
    }
}

/// The variables to set for the workers: the toolkit's, minus what `env` (the user's) sets.
pub fn nccl_vars(host: &NcclHost, env: &[(String, String)]) -> Vec<(&'static str, String)> {
    let mut vars = Vec::new();
    // Within one host NCCL uses NVLink/PCIe and finds its bootstrap interface itself.
    if host.hosts > 1 {
        if let Some(ifname) = host.network_interface {
            vars.push(("NCCL_SOCKET_IFNAME", ifname.to_string()));
        }
    }
    let on = |list: &[&str]| host.instance_type.is_some_and(|t| list.contains(&t));
    if host.hosts > 1 && host.efa_userspace && on(&EFA_INSTANCES) {
        vars.push(("FI_PROVIDER", "efa".into()));
        vars.push(("NCCL_PROTO", "simple".into()));
        if on(&EFA_RDMA_INSTANCES) {
            vars.push(("FI_EFA_USE_DEVICE_RDMA", "1".into()));
            vars.push(("RDMAV_FORK_SAFE", "1".into()));
        }
    }
    vars.retain(|(k, _)| !env.iter().any(|(u, _)| u == k));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(hosts: usize, instance: &str, efa: bool) -> NcclHost<'_> {
        NcclHost { hosts, network_interface: Some("eth1"), instance_type: Some(instance), efa_userspace: efa }
    }

    fn names(v: &[(&'static str, String)]) -> Vec<String> {
        v.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[test]
    fn sets_what_the_toolkit_would_unless_the_user_did() {
        assert!(nccl_vars(&host(1, "ml.p4d.24xlarge", true), &[]).is_empty());
        assert_eq!(names(&nccl_vars(&host(2, "ml.g5.12xlarge", true), &[])), ["NCCL_SOCKET_IFNAME=eth1"]);
        assert_eq!(
            names(&nccl_vars(&host(2, "ml.p4d.24xlarge", true), &[])),
            [
                "NCCL_SOCKET_IFNAME=eth1",
                "FI_PROVIDER=efa",
                "NCCL_PROTO=simple",
                "FI_EFA_USE_DEVICE_RDMA=1",
                "RDMAV_FORK_SAFE=1"
            ]
        );
        assert_eq!(
            names(&nccl_vars(&host(2, "ml.p5.48xlarge", true), &[])),
            ["NCCL_SOCKET_IFNAME=eth1", "FI_PROVIDER=efa", "NCCL_PROTO=simple"]
        );
        // No EFA userspace in the image: NCCL would use sockets, so no EFA variables.
        assert_eq!(names(&nccl_vars(&host(2, "ml.p5.48xlarge", false), &[])), ["NCCL_SOCKET_IFNAME=eth1"]);
        let user = [("NCCL_SOCKET_IFNAME".to_string(), "^lo".to_string())];
        assert_eq!(
            names(&nccl_vars(&host(2, "ml.p5.48xlarge", true), &user)),
            ["FI_PROVIDER=efa", "NCCL_PROTO=simple"]
        );
    }
}

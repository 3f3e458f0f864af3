//! `benches/calibration.toml`: efficiency factors and overhead constants of the estimate.
//!
//! The file is compiled in; `--calibration FILE` or `OXTUNE_CALIBRATION` reads another
//! (the benchmark harness writes measured values there).

use crate::error::Error;
use std::path::Path;

use serde::Deserialize;

pub const EMBEDDED: &str = include_str!("../../benches/calibration.toml");
pub const ENV_VAR: &str = "OXTUNE_CALIBRATION";

#[derive(Debug, Clone, Deserialize)]
pub struct Calibration {
    pub date: String,
    pub default: DefaultEfficiency,
    #[serde(default)]
    pub efficiency: Vec<EfficiencyEntry>,
    pub method_factor: MethodFactor,
    pub generation: Generation,
    pub memory: Memory,
    pub overhead: Overhead,
    pub spot: Spot,
    pub trainer: TrainerFacts,
    /// Where this calibration was read from.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DefaultEfficiency {
    pub efficiency: f64,
    pub source: String,
    #[serde(default)]
    pub measured: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EfficiencyEntry {
    pub gpu: String,
    pub method: String,
    pub value: f64,
    pub source: String,
    #[serde(default)]
    pub measured: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MethodFactor {
    pub lora: f64,
    pub qlora: f64,
    pub grpo: f64,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Generation {
    pub bandwidth_efficiency: f64,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Memory {
    pub cuda_overhead_gib: f64,
    pub cuda_overhead_source: String,
    pub headroom_fraction: f64,
    pub headroom_source: String,
    pub ce_chunk_tokens: u64,
    pub ce_chunk_source: String,
    pub attention_scores_saved: bool,
    pub attention_source: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Overhead {
    pub startup_fixed_s: f64,
    pub startup_source: String,
    pub download_mb_per_s: f64,
    pub download_source: String,
    pub upload_fixed_s: f64,
    pub upload_source: String,
    pub provisioning_s: f64,
    pub provisioning_source: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Spot {
    pub typical_savings: f64,
    pub low_savings: f64,
    pub high_savings: f64,
    pub source: String,
}

fn no_loss() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrainerFacts {
    pub gpus_used: String,
    pub gpus_used_source: String,
    /// Data parallelism: N ranks train at N × one rank's throughput × this, on one host / across hosts.
    #[serde(default = "no_loss")]
    pub scaling_one_host: f64,
    #[serde(default = "no_loss")]
    pub scaling_hosts: f64,
    #[serde(default)]
    pub scaling_source: String,
    pub padding_overhead: f64,
    pub padding_source: String,
    pub bytes_per_token: f64,
    pub bytes_per_token_source: String,
}

/// The efficiency used for one (GPU, method) pair and why.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficiencyChoice {
    pub value: f64,
    pub source: String,
    pub measured: bool,
}

impl Calibration {
    pub fn embedded() -> Calibration {
        let mut c: Calibration = toml::from_str(EMBEDDED).expect("benches/calibration.toml is valid (tested)");
        c.origin = "benches/calibration.toml (embedded)".into();
        c
    }

    pub fn from_file(path: &Path) -> Result<Calibration, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("cannot read calibration {}: {e}", path.display())))?;
        let mut c: Calibration = toml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("calibration {} is not valid: {e}", path.display())))?;
        c.origin = path.display().to_string();
        Ok(c)
    }

    /// `--calibration`, else `$OXTUNE_CALIBRATION`, else the embedded file.
    pub fn load(explicit: Option<&Path>) -> Result<Calibration, Error> {
        if let Some(p) = explicit {
            return Self::from_file(p);
        }
        if let Some(p) = std::env::var_os(ENV_VAR) {
            return Self::from_file(Path::new(&p));
        }
        Ok(Self::embedded())
    }

    pub fn method_factor(&self, method: &str) -> f64 {
        match method {
            "qlora" => self.method_factor.qlora,
            "grpo" => self.method_factor.grpo,
            _ => self.method_factor.lora,
        }
    }

    /// Exact (gpu, method) → (gpu, lora) × method factor → default.
    pub fn efficiency(&self, gpu: &str, method: &str) -> EfficiencyChoice {
        if let Some(e) = self.efficiency.iter().find(|e| e.gpu == gpu && e.method == method) {
            return EfficiencyChoice { value: e.value, source: e.source.clone(), measured: e.measured };
        }
        let factor = self.method_factor(method);
        if let Some(e) = self.efficiency.iter().find(|e| e.gpu == gpu && e.method == "lora") {
            return EfficiencyChoice {
                value: e.value * factor,
                source: format!("{} × {method} factor {factor} ({})", e.source, self.method_factor.source),
                measured: false,
            };
        }
        EfficiencyChoice {
            value: self.default.efficiency * factor,
            source: format!("default: {}", self.default.source),
            measured: false,
        }
    }

    pub fn one_gpu_per_instance(&self) -> bool {
        self.trainer.gpus_used != "all"
    }

    /// The share of each rank's throughput kept when `ranks` train together on `hosts` hosts.
    pub fn scaling(&self, ranks: u32, hosts: u32) -> f64 {
        match (ranks, hosts) {
            (0 | 1, _) => 1.0,
            (_, 0 | 1) => self.trainer.scaling_one_host,
            _ => self.trainer.scaling_hosts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_parses_and_every_entry_has_a_source() {
        let c = Calibration::embedded();
        assert!(!c.efficiency.is_empty());
        for e in &c.efficiency {
            assert!(!e.source.trim().is_empty() && e.value > 0.0 && e.value < 1.0, "{e:?}");
        }
        let cat = crate::catalogue::Catalogue::embedded();
        for (name, gpu) in &cat.gpus {
            if gpu.bf16 {
                assert!(
                    c.efficiency.iter().any(|e| &e.gpu == name && e.method == "lora"),
                    "no lora efficiency for {name}"
                );
            }
        }
    }

    /// Every constant cites its source; a number marked measured names its results file in
    /// benches/results/, and that file exists.
    #[test]
    fn every_number_cites_its_source() {
        let c = Calibration::embedded();
        let sources = [
            ("default.source", &c.default.source),
            ("method_factor.source", &c.method_factor.source),
            ("generation.source", &c.generation.source),
            ("memory.cuda_overhead_source", &c.memory.cuda_overhead_source),
            ("memory.headroom_source", &c.memory.headroom_source),
            ("memory.ce_chunk_source", &c.memory.ce_chunk_source),
            ("memory.attention_source", &c.memory.attention_source),
            ("overhead.startup_source", &c.overhead.startup_source),
            ("overhead.download_source", &c.overhead.download_source),
            ("overhead.upload_source", &c.overhead.upload_source),
            ("overhead.provisioning_source", &c.overhead.provisioning_source),
            ("spot.source", &c.spot.source),
            ("trainer.gpus_used_source", &c.trainer.gpus_used_source),
            ("trainer.scaling_source", &c.trainer.scaling_source),
            ("trainer.padding_source", &c.trainer.padding_source),
            ("trainer.bytes_per_token_source", &c.trainer.bytes_per_token_source),
        ];
        for (field, s) in sources {
            assert!(s.trim().len() > 10, "benches/calibration.toml: `{field}` must say where its number comes from");
        }
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let measured = c.efficiency.iter().filter(|e| e.measured).map(|e| (&e.gpu, &e.source));
        for (gpu, source) in measured.chain(c.default.measured.then_some((&c.default.source, &c.default.source))) {
            let file = source.split_whitespace().find(|w| w.starts_with("benches/results/"));
            let file = file.unwrap_or_else(|| panic!("{gpu}: a measured entry must cite benches/results/<file>"));
            assert!(repo.join(file.trim_end_matches([',', ';', ')'])).is_file(), "{gpu}: {file} does not exist");
        }
    }

    #[test]
    fn lookup_order() {
        let c = Calibration::embedded();
        let h = c.efficiency("H100", "lora");
        assert_eq!(h.value, 0.30);
        let q = c.efficiency("H100", "qlora");
        assert!((q.value - 0.30 * 0.85).abs() < 1e-12);
        let unknown = c.efficiency("B200", "lora");
        assert_eq!(unknown.value, c.default.efficiency);
    }
}

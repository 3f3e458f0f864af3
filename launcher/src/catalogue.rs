//! The embedded catalogue: GPUs, SageMaker training instances, on-demand prices per
//! region (with date and source per number) and base-model configs.
//!
//! Data lives in `launcher/data/` and is compiled in; `oxtune prices refresh` writes a
//! per-region cache that overrides the embedded prices (see [`crate::prices`]).

use crate::error::Error;
use std::collections::BTreeMap;

use serde::Deserialize;
use trainer::model::Arch;

pub const INSTANCES_TOML: &str = include_str!("../data/instances.toml");
pub const PRICES_TOML: &str = include_str!("../data/prices.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Gpu {
    pub name: String,
    pub bf16: bool,
    #[serde(default)]
    pub unsupported: Option<String>,
    pub bf16_tflops: f64,
    pub memory_mib: u64,
    pub bandwidth_gbs: f64,
    #[serde(default)]
    pub src: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Instance {
    #[serde(rename = "type")]
    pub instance_type: String,
    pub gpu: String,
    pub gpus: u32,
    pub vcpu: u32,
    pub ram_gib: u32,
}

#[derive(Debug, Deserialize)]
struct InstancesFile {
    meta: Meta,
    sources: BTreeMap<String, String>,
    gpu: BTreeMap<String, Gpu>,
    instance: Vec<Instance>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    pub date: String,
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PriceEntry {
    pub usd: f64,
    pub src: String,
}

#[derive(Debug, Deserialize)]
struct PricesFile {
    meta: Meta,
    sources: BTreeMap<String, String>,
    regions: BTreeMap<String, BTreeMap<String, PriceEntry>>,
}

/// GPU and instance facts.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub date: String,
    pub sources: BTreeMap<String, String>,
    pub gpus: BTreeMap<String, Gpu>,
    pub instances: Vec<Instance>,
}

impl Catalogue {
    pub fn embedded() -> Catalogue {
        let f: InstancesFile = toml::from_str(INSTANCES_TOML).expect("launcher/data/instances.toml is valid (tested)");
        Catalogue { date: f.meta.date, sources: f.sources, gpus: f.gpu, instances: f.instance }
    }

    pub fn instance(&self, instance_type: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.instance_type == instance_type)
    }

    pub fn gpu_of(&self, inst: &Instance) -> &Gpu {
        self.gpus.get(&inst.gpu).expect("every instance names a catalogued GPU (tested)")
    }
}

/// One region's price table and where it came from.
#[derive(Debug, Clone)]
pub struct PriceTable {
    pub region: String,
    /// `embedded <date>` or `price list <publication date> (cached <path>)`.
    pub origin: String,
    pub date: String,
    pub prices: BTreeMap<String, PriceEntry>,
    pub sources: BTreeMap<String, String>,
}

impl PriceTable {
    pub fn rate(&self, instance_type: &str) -> Option<f64> {
        self.prices.get(instance_type).map(|p| p.usd)
    }

    /// True when the rate is an estimate rather than a published figure.
    pub fn is_estimate(&self, instance_type: &str) -> bool {
        self.prices.get(instance_type).is_some_and(|p| p.src == "EU" || p.src == "SAMEUS")
    }
}

pub const EMBEDDED_REGIONS: &[&str] = &["us-east-1", "us-west-2", "eu-west-1"];

/// The embedded table for a region, if we have one.
pub fn embedded_prices(region: &str) -> Option<PriceTable> {
    let f: PricesFile = toml::from_str(PRICES_TOML).expect("launcher/data/prices.toml is valid (tested)");
    let prices = f.regions.get(region)?.clone();
    Some(PriceTable {
        region: region.to_string(),
        origin: format!("embedded table of {} (launcher/data/prices.toml)", f.meta.date),
        date: f.meta.date.clone(),
        prices,
        sources: f.sources,
    })
}

/// A base model known by name.
#[derive(Debug, Clone, Copy)]
pub struct CatalogueModel {
    pub id: &'static str,
    pub hub_id: &'static str,
    pub aliases: &'static [&'static str],
    /// config.json text; `None` for models listed as not supported.
    pub config: Option<&'static str>,
    pub unsupported: Option<&'static str>,
    pub source: &'static str,
}

const SRC_FORMATS: &str = "shared/reference/formats.md §3 (exact values)";
const SRC_MEMORY: &str = "from knowledge of the published Hugging Face config.json (not re-checked offline)";

pub const MODELS: &[CatalogueModel] = &[
    CatalogueModel {
        id: "llama-2-7b",
        hub_id: "meta-llama/Llama-2-7b-hf",
        aliases: &["llama2-7b"],
        config: Some(include_str!("../data/models/llama-2-7b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "llama-2-13b",
        hub_id: "meta-llama/Llama-2-13b-hf",
        aliases: &["llama2-13b"],
        config: Some(include_str!("../data/models/llama-2-13b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "llama-3.2-1b",
        hub_id: "meta-llama/Llama-3.2-1B",
        aliases: &["llama3.2-1b"],
        config: Some(include_str!("../data/models/llama-3.2-1b.json")),
        unsupported: None,
        source: SRC_FORMATS,
    },
    CatalogueModel {
        id: "llama-3.2-3b",
        hub_id: "meta-llama/Llama-3.2-3B",
        aliases: &["llama3.2-3b"],
        config: Some(include_str!("../data/models/llama-3.2-3b.json")),
        unsupported: None,
        source: SRC_FORMATS,
    },
    CatalogueModel {
        id: "llama-3.1-8b",
        hub_id: "meta-llama/Llama-3.1-8B",
        aliases: &["llama3.1-8b", "meta-llama-3.1-8b"],
        config: Some(include_str!("../data/models/llama-3.1-8b.json")),
        unsupported: None,
        source: SRC_FORMATS,
    },
    CatalogueModel {
        id: "llama-3.3-70b",
        hub_id: "meta-llama/Llama-3.3-70B-Instruct",
        aliases: &["llama3.3-70b"],
        config: Some(include_str!("../data/models/llama-3.3-70b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "mistral-7b-v0.3",
        hub_id: "mistralai/Mistral-7B-v0.3",
        aliases: &["mistral-7b"],
        config: Some(include_str!("../data/models/mistral-7b-v0.3.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "mistral-7b-v0.1",
        hub_id: "mistralai/Mistral-7B-v0.1",
        aliases: &[],
        config: Some(include_str!("../data/models/mistral-7b-v0.1.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "qwen2.5-0.5b",
        hub_id: "Qwen/Qwen2.5-0.5B",
        aliases: &["qwen2.5-0.5b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-0.5b.json")),
        unsupported: None,
        source: SRC_FORMATS,
    },
    CatalogueModel {
        id: "qwen2.5-1.5b",
        hub_id: "Qwen/Qwen2.5-1.5B",
        aliases: &["qwen2.5-1.5b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-1.5b.json")),
        unsupported: None,
        source: SRC_FORMATS,
    },
    CatalogueModel {
        id: "qwen2.5-3b",
        hub_id: "Qwen/Qwen2.5-3B",
        aliases: &["qwen2.5-3b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-3b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "qwen2.5-7b",
        hub_id: "Qwen/Qwen2.5-7B",
        aliases: &["qwen2.5-7b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-7b.json")),
        unsupported: None,
        source: SRC_FORMATS,
    },
    CatalogueModel {
        id: "qwen2.5-14b",
        hub_id: "Qwen/Qwen2.5-14B",
        aliases: &["qwen2.5-14b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-14b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "qwen2.5-32b",
        hub_id: "Qwen/Qwen2.5-32B",
        aliases: &["qwen2.5-32b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-32b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "qwen2.5-72b",
        hub_id: "Qwen/Qwen2.5-72B",
        aliases: &["qwen2.5-72b-instruct"],
        config: Some(include_str!("../data/models/qwen2.5-72b.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "flan-t5-small",
        hub_id: "google/flan-t5-small",
        aliases: &["t5-small"],
        config: Some(include_str!("../data/models/flan-t5-small.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "flan-t5-base",
        hub_id: "google/flan-t5-base",
        aliases: &["t5-base"],
        config: Some(include_str!("../data/models/flan-t5-base.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "flan-t5-large",
        hub_id: "google/flan-t5-large",
        aliases: &["t5-large"],
        config: Some(include_str!("../data/models/flan-t5-large.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "flan-t5-xl",
        hub_id: "google/flan-t5-xl",
        aliases: &["t5-xl"],
        config: Some(include_str!("../data/models/flan-t5-xl.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
    CatalogueModel {
        id: "flan-t5-xxl",
        hub_id: "google/flan-t5-xxl",
        aliases: &["t5-xxl"],
        config: Some(include_str!("../data/models/flan-t5-xxl.json")),
        unsupported: None,
        source: SRC_MEMORY,
    },
];

fn norm(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace(['_', ' '], "-")
}

/// Find a catalogue model by id, alias or Hub id (case-insensitive; `-instruct` suffix tolerated).
pub fn find_model(name: &str) -> Option<&'static CatalogueModel> {
    let n = norm(name);
    let hit = |m: &&CatalogueModel| {
        norm(m.id) == n || norm(m.hub_id) == n || m.aliases.iter().any(|a| norm(a) == n) || {
            let short = n.rsplit('/').next().unwrap_or(&n);
            norm(m.id) == short || m.aliases.iter().any(|a| norm(a) == short)
        }
    };
    MODELS.iter().find(hit).or_else(|| {
        let stripped = n.trim_end_matches("-instruct").trim_end_matches("-hf").to_string();
        let stripped = stripped.rsplit('/').next().unwrap_or(&stripped).to_string();
        MODELS.iter().find(|m| norm(m.id) == stripped || m.aliases.iter().any(|a| norm(a) == stripped))
    })
}

impl CatalogueModel {
    /// The model's architecture from its embedded config.json.
    pub fn arch(&self) -> Result<Arch, Error> {
        match (self.config, self.unsupported) {
            (_, Some(why)) => Err(Error::Invalid(why.to_string())),
            (Some(text), None) => {
                Arch::from_json_str(text, std::path::Path::new(self.id)).map_err(|e| Error::Invalid(e.to_string()))
            }
            (None, None) => Err(Error::Invalid(format!("{} has no config", self.id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        let c = Catalogue::embedded();
        for i in &c.instances {
            assert!(c.gpus.contains_key(&i.gpu), "{} names unknown GPU {}", i.instance_type, i.gpu);
        }
        for region in EMBEDDED_REGIONS {
            let t = embedded_prices(region).unwrap();
            for (ty, p) in &t.prices {
                assert!(c.instance(ty).is_some(), "{region}: price for uncatalogued {ty}");
                assert!(t.sources.contains_key(&p.src), "{region} {ty}: unknown source {}", p.src);
                assert!(p.usd > 0.0);
            }
        }
        // p3 is not offered in us-west-2 and is unsupported everywhere.
        assert!(embedded_prices("us-west-2").unwrap().rate("ml.p3.2xlarge").is_none());
        let p3 = c.instance("ml.p3.2xlarge").unwrap();
        assert!(!c.gpu_of(p3).bf16 && c.gpu_of(p3).unsupported.is_some());
    }

    /// Derived (estimated) rates are exactly what their source label says: EU = us-east-1 × 1.12
    /// rounded to 0.001, SAMEUS = the us-east-1 rate. Every rate of eu-west-1 is derived.
    #[test]
    fn derived_prices_follow_their_rule() {
        let us = embedded_prices("us-east-1").unwrap();
        let mut derived = 0;
        for region in EMBEDDED_REGIONS {
            let t = embedded_prices(region).unwrap();
            for (ty, p) in &t.prices {
                let base =
                    || us.rate(ty).unwrap_or_else(|| panic!("{region} {ty}: derived from a missing us-east-1 rate"));
                match p.src.as_str() {
                    "EU" => assert_eq!(p.usd, (base() * 1.12 * 1000.0).round() / 1000.0, "{region} {ty}"),
                    "SAMEUS" => assert_eq!(p.usd, base(), "{region} {ty}"),
                    _ => continue,
                }
                assert!(t.is_estimate(ty), "{region} {ty} must be shown as an estimate");
                derived += 1;
            }
        }
        let eu = embedded_prices("eu-west-1").unwrap();
        assert!(eu.prices.values().all(|p| p.src == "EU"));
        assert!(derived > eu.prices.len());
        assert!(eu.sources["EU"].contains("DERIVED 2026-11-23") && eu.sources["EU"].contains("x 1.12"));
    }

    /// Parameter counts of the embedded configs against the published model sizes.
    #[test]
    fn model_configs_match_published_sizes() {
        let billions = |id: &str| find_model(id).unwrap().arch().unwrap().param_count() as f64 / 1e9;
        // Published sizes (model cards): 6.74B, 13.0B, 1.24B, 3.21B, 8.03B, 70.6B, 7.25B, 0.49B, 1.54B, 3.09B, 7.62B,
        // 14.7B, 32.5B, 72.7B; FLAN-T5 small/base/large/XL/XXL 77.0M, 248M, 783M, 2.85B, 11.1B.
        let cases = [
            ("llama-2-7b", 6.74),
            ("llama-2-13b", 13.0),
            ("llama-3.2-1b", 1.24),
            ("llama-3.2-3b", 3.21),
            ("llama-3.1-8b", 8.03),
            ("llama-3.3-70b", 70.6),
            ("mistral-7b-v0.3", 7.25),
            ("qwen2.5-0.5b", 0.494),
            ("qwen2.5-1.5b", 1.54),
            ("qwen2.5-3b", 3.09),
            ("qwen2.5-7b", 7.62),
            ("qwen2.5-14b", 14.7),
            ("qwen2.5-32b", 32.5),
            ("qwen2.5-72b", 72.7),
            ("flan-t5-small", 0.0770),
            ("flan-t5-base", 0.248),
            ("flan-t5-large", 0.783),
            ("flan-t5-xl", 2.85),
            ("flan-t5-xxl", 11.1),
        ];
        for (id, want) in cases {
            let got = billions(id);
            assert!((got - want).abs() / want < 0.015, "{id}: {got:.3}B vs published {want}B");
        }
        // Exact: Llama-3.1-8B = 8,030,261,248 parameters.
        assert_eq!(find_model("meta-llama/Llama-3.1-8B").unwrap().arch().unwrap().param_count(), 8_030_261_248);
    }

    #[test]
    fn lookup_names() {
        assert_eq!(find_model("Qwen/Qwen2.5-7B-Instruct").unwrap().id, "qwen2.5-7b");
        assert_eq!(find_model("mistral-7b").unwrap().id, "mistral-7b-v0.3");
        assert_eq!(find_model("LLAMA-3.2-1B").unwrap().id, "llama-3.2-1b");
        let t5 = find_model("google/flan-t5-xl").unwrap();
        assert!(t5.arch().unwrap().is_seq2seq());
        assert!(find_model("gpt-5").is_none());
    }
}

//! The serving containers `deploy` can use (data in `launcher/data/serving.toml`): their image URI
//! per region, the host AMI pinned with each, and the environment each reads its settings from.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const SERVING_TOML: &str = include_str!("../../data/serving.toml");

/// A serving container: the one declaration of the choice (`--container`, the endpoint's tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Container {
    /// LMI (DJL Serving) with the vLLM engine — the default.
    Lmi,
    /// Hugging Face TGI (upstream in maintenance mode).
    Tgi,
    /// The AWS vLLM deep learning container.
    Vllm,
}

impl Container {
    /// The name in `--container`, the data file and the endpoint's tag (as clap spells the variant;
    /// a test holds them equal).
    pub fn key(self) -> &'static str {
        match self {
            Container::Lmi => "lmi",
            Container::Tgi => "tgi",
            Container::Vllm => "vllm",
        }
    }

    pub fn from_key(key: &str) -> Option<Container> {
        use clap::ValueEnum;
        Container::value_variants().iter().copied().find(|c| c.key() == key)
    }
}

/// One container's pinned image and host AMI.
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub name: String,
    pub repo: String,
    pub tag: String,
    pub cuda: String,
    pub ami: String,
    pub src: String,
}

#[derive(Debug, Deserialize)]
struct Meta {
    date: String,
    default: String,
    default_account: String,
}

#[derive(Debug, Deserialize)]
struct ServingFile {
    meta: Meta,
    accounts: BTreeMap<String, String>,
    container: BTreeMap<String, Image>,
}

/// The embedded table of serving images.
#[derive(Debug)]
pub struct Serving {
    pub date: String,
    pub default: Container,
    default_account: String,
    accounts: BTreeMap<String, String>,
    images: BTreeMap<String, Image>,
}

impl Serving {
    pub fn embedded() -> Serving {
        let f: ServingFile = toml::from_str(SERVING_TOML).expect("launcher/data/serving.toml is valid (tested)");
        Serving {
            date: f.meta.date,
            default: Container::from_key(&f.meta.default).expect("the default container is known (tested)"),
            default_account: f.meta.default_account,
            accounts: f.accounts,
            images: f.container,
        }
    }

    pub fn image(&self, c: Container) -> &Image {
        self.images.get(c.key()).expect("every container has an image (tested)")
    }

    /// `<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repo>:<tag>`.
    pub fn image_uri(&self, c: Container, region: &str) -> String {
        let img = self.image(c);
        let account = self.accounts.get(region).unwrap_or(&self.default_account);
        let domain = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
        format!("{account}.dkr.ecr.{region}.{domain}/{}:{}", img.repo, img.tag)
    }
}

/// What a container's settings are computed from.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    /// Longest prompt + completion, in tokens.
    pub max_model_len: usize,
    pub gpus: u32,
    /// The GPU computes in bfloat16 (Ampere and later); otherwise the model is served in float16.
    pub bf16: bool,
    /// Serve an unmerged LoRA adapter (LMI only): the base model's S3 prefix and the adapter's rank.
    pub adapter: Option<(String, usize)>,
}

/// The adapter's name on an LMI endpoint: its directory under `adapters/` and the request's `adapters`.
pub const ADAPTER_NAME: &str = "tuned";

/// vLLM's accepted `max_lora_rank` values: the adapter's rank rounded up to one of them.
fn lora_rank_slot(r: usize) -> usize {
    [8, 16, 32, 64, 128, 256, 320, 512].into_iter().find(|&s| s >= r).unwrap_or(r)
}

/// The container's environment for a merged model in `/opt/ml/model` (shared/reference
/// deploy-and-eval.md §3.2: each container's variables).
pub fn environment(c: Container, s: &ServingSettings) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    match c {
        Container::Lmi => {
            match &s.adapter {
                // The base comes from S3 (LMI reads an s3:// model id); /opt/ml/model holds adapters/<name>/.
                Some((base, rank)) => {
                    set("OPTION_MODEL_ID", base.clone());
                    set("OPTION_ENABLE_LORA", "true".into());
                    set("OPTION_MAX_LORAS", "1".into());
                    set("OPTION_MAX_LORA_RANK", lora_rank_slot(*rank).to_string());
                }
                None => set("HF_MODEL_ID", "/opt/ml/model".into()),
            }
            set("OPTION_ROLLING_BATCH", "vllm".into());
            set("TENSOR_PARALLEL_DEGREE", "max".into());
            set("OPTION_MAX_MODEL_LEN", s.max_model_len.to_string());
            if !s.bf16 {
                set("OPTION_DTYPE", "fp16".into());
            }
        }
        Container::Tgi => {
            set("HF_MODEL_ID", "/opt/ml/model".into());
            set("SM_NUM_GPUS", s.gpus.to_string());
            set("MAX_TOTAL_TOKENS", s.max_model_len.to_string());
            set("MAX_INPUT_TOKENS", tgi_max_input(s.max_model_len).to_string());
            if !s.bf16 {
                set("DTYPE", "float16".into());
            }
        }
        Container::Vllm => {
            set("SM_VLLM_MAX_MODEL_LEN", s.max_model_len.to_string());
            set("SM_VLLM_TENSOR_PARALLEL_SIZE", s.gpus.to_string());
            if !s.bf16 {
                set("SM_VLLM_DTYPE", "float16".into());
            }
        }
    }
    env
}

/// TGI needs MAX_INPUT_TOKENS < MAX_TOTAL_TOKENS: three quarters of the window go to the prompt.
fn tgi_max_input(total: usize) -> usize {
    (total * 3 / 4).clamp(1, total.saturating_sub(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_has_a_pinned_image_and_ami() {
        let s = Serving::embedded();
        assert_eq!(s.default, Container::Lmi);
        for &c in <Container as clap::ValueEnum>::value_variants() {
            let img = s.image(c);
            assert!(!img.tag.is_empty() && !img.ami.is_empty() && !img.src.is_empty(), "{c:?}");
            // The AMI's driver must carry the image's CUDA: cu13 needs the 4-x AMI (§3.4).
            if img.cuda.starts_with("13") {
                assert!(img.ami.contains("gpu-4"), "{c:?}: CUDA {} on {}", img.cuda, img.ami);
            } else {
                assert!(img.ami.contains("gpu-3"), "{c:?}: CUDA {} on {}", img.cuda, img.ami);
            }
        }
    }

    #[test]
    fn keys_are_the_flag_values() {
        use clap::ValueEnum;
        for &c in Container::value_variants() {
            assert_eq!(c.to_possible_value().unwrap().get_name(), c.key());
            assert_eq!(Container::from_key(c.key()), Some(c));
        }
        assert_eq!(Container::from_key("sglang"), None);
    }

    #[test]
    fn image_uris_per_region() {
        let s = Serving::embedded();
        assert_eq!(
            s.image_uri(Container::Lmi, "us-east-1"),
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"
        );
        assert!(s
            .image_uri(Container::Tgi, "af-south-1")
            .starts_with("626614931356.dkr.ecr.af-south-1.amazonaws.com/"));
        assert!(s.image_uri(Container::Vllm, "cn-north-1").contains(".amazonaws.com.cn/vllm:"));
        // Every image URI passes the launcher's own image check.
        for &c in <Container as clap::ValueEnum>::value_variants() {
            assert!(crate::limits::check_image_uri(&s.image_uri(c, "eu-west-1")).is_ok(), "{c:?}");
        }
    }

    #[test]
    fn environments() {
        let s = ServingSettings { max_model_len: 2048, gpus: 4, bf16: false, adapter: None };
        let lmi = environment(Container::Lmi, &s);
        assert_eq!(lmi["OPTION_MAX_MODEL_LEN"], "2048");
        assert_eq!(lmi["OPTION_DTYPE"], "fp16");
        let tgi = environment(Container::Tgi, &s);
        assert_eq!((tgi["MAX_INPUT_TOKENS"].as_str(), tgi["MAX_TOTAL_TOKENS"].as_str()), ("1536", "2048"));
        assert_eq!(tgi["SM_NUM_GPUS"], "4");
        let v = environment(Container::Vllm, &ServingSettings { bf16: true, ..s });
        assert_eq!(v["SM_VLLM_TENSOR_PARALLEL_SIZE"], "4");
        assert!(!v.contains_key("SM_VLLM_DTYPE"));
        assert_eq!(tgi_max_input(2), 1);
        let a = environment(Container::Lmi, &ServingSettings { adapter: Some(("s3://b/base/".into(), 12)), ..s });
        assert_eq!(a["OPTION_MODEL_ID"], "s3://b/base/");
        assert_eq!((a["OPTION_ENABLE_LORA"].as_str(), a["OPTION_MAX_LORA_RANK"].as_str()), ("true", "16"));
        assert!(!a.contains_key("HF_MODEL_ID"));
    }
}

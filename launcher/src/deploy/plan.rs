//! What `deploy` will create, decided and checked before any Create call: the names, the image and
//! host AMI, the container's environment, the production variant (timeouts, volume), the tags, the
//! fit of the model on the instance's GPUs and the endpoint's hourly price.

use std::collections::BTreeMap;

use trainer::model::config::ModelConfig;

use super::serving::{environment, Container, Serving, ServingSettings};
use crate::catalogue::{Catalogue, Instance, PriceTable};
use crate::error::Error;
use crate::estimate::{Method, ModelFacts};
use crate::limits::{self, InstanceUse};

/// The tag every resource `deploy` creates carries (value: the endpoint's name); `endpoints` and
/// `undeploy` find oxtune's endpoints by it.
pub const TAG_ENDPOINT: &str = "oxtune:endpoint";
/// What was deployed: a training job's name or the S3 prefix of the model.
pub const TAG_SOURCE: &str = "oxtune:source";
/// The serving container's key (`lmi`, `tgi`, `vllm`): `invoke` builds its request body by it.
pub const TAG_CONTAINER: &str = "oxtune:container";
/// `true` when the model's tokenizer has a chat template: `invoke` sends the messages API then.
pub const TAG_CHAT: &str = "oxtune:chat";
/// The adapter's name on an endpoint that serves an unmerged adapter: `invoke` selects it.
pub const TAG_ADAPTER: &str = "oxtune:adapter";
/// The variant's name (one variant per endpoint).
pub const VARIANT: &str = "AllTraffic";
/// Of each GPU's memory, the share the engine may use (vLLM's default `gpu_memory_utilization`).
pub const GPU_MEMORY_SHARE: f64 = 0.9;
/// CUDA context, engine workspace and activations of one forward pass, per GPU.
pub const ENGINE_OVERHEAD_BYTES: f64 = 1.5 * GIB;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// Above this model size disk-less instances need a bigger volume, and timeouts grow (§1 of the
/// reference page: SageMaker's large-model hosting guide).
const DEFAULT_VOLUME_LIMIT_GB: f64 = 30.0;

/// A merged model found in S3, as `deploy` serves it.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    /// `s3://…/` prefix holding config.json, the safetensors and the tokenizer files.
    pub prefix: String,
    pub config: ModelConfig,
    /// Bytes of every object under the prefix.
    pub bytes: u64,
    /// The tokenizer has a chat template.
    pub chat: bool,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub name: String,
    /// Job name or S3 prefix (tagged on what is created).
    pub source: String,
    pub instance_type: String,
    pub count: u32,
    pub container: Container,
    pub role: String,
    pub region: String,
    /// Longest prompt + completion; the job's `max_seq_length` unless given.
    pub max_model_len: usize,
    /// An unmerged adapter on a base in S3: the base's prefix and the adapter's rank.
    pub adapter: Option<(String, usize)>,
}

/// The model's fit on one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub needed_bytes: f64,
    pub usable_bytes: f64,
    pub gpus: u32,
    pub gpu: String,
}

impl Fit {
    pub fn fits(&self) -> bool {
        self.needed_bytes <= self.usable_bytes
    }

    pub fn describe(&self) -> String {
        format!(
            "{:.1} GiB of weights, KV cache and engine overhead on {} × {} ({:.1} GiB usable at {:.0} %)",
            self.needed_bytes / GIB,
            self.gpus,
            self.gpu,
            self.usable_bytes / GIB,
            GPU_MEMORY_SHARE * 100.0
        )
    }
}

/// The three Create calls' content.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// The endpoint, its config and its model share this name (each is its own resource type).
    pub name: String,
    pub role: String,
    pub image: String,
    pub ami: String,
    pub model_prefix: String,
    pub environment: BTreeMap<String, String>,
    pub instance_type: String,
    pub count: u32,
    /// None on instance families with local NVMe, which reject `VolumeSizeInGB`.
    pub volume_gb: Option<u32>,
    pub startup_timeout_s: u32,
    pub download_timeout_s: u32,
    pub tags: Vec<(String, String)>,
    pub fit: Fit,
    /// On-demand USD per hour for all instances, when the price table has the type.
    pub hourly_usd: Option<f64>,
    pub container: Container,
    /// An unmerged adapter's prefix: `create` copies it into `model_prefix`'s `adapters/` first.
    pub adapter_source: Option<String>,
}

/// The GPU instance `deploy` can check a model against, or why not.
pub fn gpu_instance<'c>(catalogue: &'c Catalogue, instance_type: &str) -> Result<&'c Instance, Error> {
    limits::check_instance_type(instance_type, InstanceUse::Hosting)?;
    catalogue.instance(instance_type).ok_or_else(|| {
        let known: Vec<&str> = catalogue.instances.iter().map(|i| i.instance_type.as_str()).collect();
        Error::Invalid(format!(
            "oxtune deploys to the GPU instances it knows the memory of, and `{instance_type}` is not one of them: {}",
            known.join(", ")
        ))
    })
}

/// Weights (16-bit) + the KV cache of one full-length sequence + engine overhead per GPU, against
/// [`GPU_MEMORY_SHARE`] of the instance's GPU memory (tensor parallel over all its GPUs).
pub fn fit(config: &ModelConfig, max_model_len: usize, catalogue: &Catalogue, instance: &Instance) -> Fit {
    let facts = ModelFacts::decoder_only(config, 0, &[]);
    let gpu = catalogue.gpu_of(instance);
    let needed = facts.weight_bytes(Method::Lora)
        + facts.kv_cache_bytes(1, max_model_len as u64)
        + ENGINE_OVERHEAD_BYTES * instance.gpus as f64;
    let usable = GPU_MEMORY_SHARE * (gpu.memory_mib as f64 * 1024.0 * 1024.0) * instance.gpus as f64;
    Fit { needed_bytes: needed, usable_bytes: usable, gpus: instance.gpus, gpu: gpu.name.clone() }
}

/// Catalogued instance types the model fits on, cheapest first (for the error when it does not).
pub fn instances_that_fit(
    config: &ModelConfig,
    max_model_len: usize,
    catalogue: &Catalogue,
    prices: &PriceTable,
) -> Vec<(String, Option<f64>)> {
    let mut v: Vec<(String, Option<f64>)> = catalogue
        .instances
        .iter()
        .filter(|i| fit(config, max_model_len, catalogue, i).fits())
        .map(|i| (i.instance_type.clone(), prices.rate(&i.instance_type)))
        .collect();
    v.sort_by(|a, b| a.1.unwrap_or(f64::MAX).total_cmp(&b.1.unwrap_or(f64::MAX)));
    v
}

/// Families with local NVMe reject `VolumeSizeInGB`: every family with a `d` (g4dn, p4d, …) and
/// g5, g6, g6e, g7e, p5, p6-b200, trn1, trn2 (sagemaker-core `volume_size_supported`).
pub fn volume_size_supported(instance_type: &str) -> bool {
    let family = instance_type.strip_prefix("ml.").unwrap_or(instance_type).split('.').next().unwrap_or("");
    let no_volume = ["g5", "g6", "g6e", "g7e", "p5", "p5e", "p5en", "p6-b200", "trn1", "trn1n", "trn2"];
    !(family.contains('d') || no_volume.contains(&family))
}

/// Plan the deployment of `artifact`; every problem is collected into one `Error::Invalid`.
pub fn plan(
    req: &DeployRequest,
    artifact: &ModelArtifact,
    catalogue: &Catalogue,
    prices: &PriceTable,
) -> Result<DeployPlan, Error> {
    let serving = Serving::embedded();
    let instance = gpu_instance(catalogue, &req.instance_type)?;
    let fit = fit(&artifact.config, req.max_model_len, catalogue, instance);
    if !fit.fits() {
        let alternatives = instances_that_fit(&artifact.config, req.max_model_len, catalogue, prices);
        let list: Vec<String> = alternatives
            .iter()
            .take(4)
            .map(|(t, p)| p.map(|p| format!("{t} (${p:.3}/h)")).unwrap_or_else(|| t.clone()))
            .collect();
        return Err(Error::Invalid(format!(
            "the model does not fit {}: it needs {}; nothing was created. {}",
            req.instance_type,
            fit.describe(),
            if list.is_empty() {
                "No catalogued instance fits it; lower --max-model-len or serve a smaller model.".to_string()
            } else {
                format!("Instances it fits, cheapest first: {} (or lower --max-model-len).", list.join(", "))
            }
        )));
    }
    let gb = artifact.bytes as f64 / 1e9;
    let settings = ServingSettings {
        max_model_len: req.max_model_len,
        gpus: instance.gpus,
        bf16: catalogue.gpu_of(instance).bf16,
        adapter: req.adapter.clone(),
    };
    let image = serving.image(req.container);
    let plan = DeployPlan {
        name: req.name.clone(),
        role: req.role.clone(),
        image: serving.image_uri(req.container, &req.region),
        ami: image.ami.clone(),
        model_prefix: artifact.prefix.clone(),
        environment: environment(req.container, &settings),
        instance_type: req.instance_type.clone(),
        count: req.count,
        volume_gb: (volume_size_supported(&req.instance_type) && gb > DEFAULT_VOLUME_LIMIT_GB)
            .then(|| ((gb * 1.2).ceil() as u32 + 10).min(512)),
        startup_timeout_s: (300.0 + 20.0 * gb).clamp(60.0, 3600.0) as u32,
        download_timeout_s: (600.0 + 30.0 * gb).clamp(60.0, 3600.0) as u32,
        tags: [
            (TAG_ENDPOINT.into(), req.name.clone()),
            (TAG_SOURCE.into(), tag_value(&req.source)),
            (TAG_CONTAINER.into(), req.container.key().into()),
            (TAG_CHAT.into(), artifact.chat.to_string()),
        ]
        .into_iter()
        .chain(req.adapter.as_ref().map(|_| (TAG_ADAPTER.to_string(), super::serving::ADAPTER_NAME.to_string())))
        .collect(),
        hourly_usd: prices.rate(&req.instance_type).map(|r| r * req.count as f64),
        fit,
        container: req.container,
        adapter_source: None,
    };
    let problems = check(&plan);
    if !problems.is_empty() {
        return Err(Error::Invalid(format!(
            "the deployment breaks SageMaker limits:\n  - {}",
            problems.join("\n  - ")
        )));
    }
    Ok(plan)
}

/// A tag value: ≤ 256 characters of the allowed set (an S3 URI keeps its tail).
fn tag_value(s: &str) -> String {
    let cleaned: String = s.chars().map(|c| if limits::is_tag_char(c) { c } else { '_' }).collect();
    let n = cleaned.chars().count();
    if n <= limits::MAX_TAG_VALUE {
        cleaned
    } else {
        cleaned.chars().skip(n - limits::MAX_TAG_VALUE).collect()
    }
}

/// Limits of CreateModel, CreateEndpointConfig and CreateEndpoint (the API model: botocore 1.43
/// `service-2.json`, shared/reference deploy-and-eval.md §1) that the service would check only
/// after part of the deployment exists.
pub fn check(p: &DeployPlan) -> Vec<String> {
    let mut errs = Vec::new();
    for field in ["ModelName", "EndpointConfigName", "EndpointName"] {
        if let Err(e) = limits::check_resource_name(field, &p.name) {
            errs.push(e.to_string());
        }
    }
    if let Err(e) = limits::check_role_arn(&p.role) {
        errs.push(e.to_string());
    }
    match limits::check_image_uri(&p.image) {
        Ok(_) => {}
        Err(e) => errs.push(e.to_string().replace("TrainingImage", "Image")),
    }
    if let Err(e) = limits::check_s3_uri("ModelDataSource.S3DataSource.S3Uri", &p.model_prefix) {
        errs.push(e.to_string());
    }
    if !p.model_prefix.ends_with('/') {
        errs.push(format!("S3Uri `{}` of an S3Prefix model source must end with `/`", p.model_prefix));
    }
    errs.extend(check_environment(&p.environment));
    if let Err(e) = limits::check_instance_type(&p.instance_type, InstanceUse::Hosting) {
        errs.push(e.to_string());
    }
    if p.count < 1 {
        errs.push("InitialInstanceCount must be at least 1".into());
    }
    for (field, v) in [
        ("ContainerStartupHealthCheckTimeoutInSeconds", p.startup_timeout_s),
        ("ModelDataDownloadTimeoutInSeconds", p.download_timeout_s),
    ] {
        if !(60..=3600).contains(&v) {
            errs.push(format!("{field} = {v} must be 60–3600"));
        }
    }
    if let Some(v) = p.volume_gb {
        if !(1..=512).contains(&v) {
            errs.push(format!("VolumeSizeInGB = {v} must be 1–512"));
        }
        if !volume_size_supported(&p.instance_type) {
            errs.push(format!("{} has local NVMe storage and rejects VolumeSizeInGB", p.instance_type));
        }
    }
    if !aws_sdk_sagemaker::types::ProductionVariantInferenceAmiVersion::values().contains(&p.ami.as_str()) {
        errs.push(format!("InferenceAmiVersion `{}` is not one the API knows", p.ami));
    }
    errs.extend(limits::check_tag_list(p.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    errs
}

/// `Environment`: ≤ 100 entries, keys and values ≤ 1024 bytes, 32 KB in all.
pub fn check_environment(env: &BTreeMap<String, String>) -> Vec<String> {
    let mut errs = Vec::new();
    if env.len() > 100 {
        errs.push(format!("Environment has {} entries; the limit is 100", env.len()));
    }
    let mut total = 0;
    for (k, v) in env {
        total += k.len() + v.len();
        if k.is_empty() || k.len() > 1024 || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errs.push(format!("Environment key `{k}` must be 1–1024 characters of letters, digits and _"));
        }
        if v.len() > 1024 {
            errs.push(format!("Environment `{k}` value is {} bytes; the limit is 1024", v.len()));
        }
    }
    if total > 32 * 1024 {
        errs.push(format!("Environment is {total} bytes in all; the limit is 32 KB"));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::embedded_prices;

    fn llama(layers: usize, hidden: usize) -> ModelConfig {
        ModelConfig::from_json_str(&format!(
            r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":{hidden},"intermediate_size":{},"num_hidden_layers":{layers},"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,"max_position_embeddings":131072,"rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":false}}"#,
            hidden * 7 / 2
        ))
        .unwrap()
    }

    fn request(instance: &str) -> DeployRequest {
        DeployRequest {
            name: "llama-sft-20261207-101500".into(),
            source: "llama-sft-20261207-101500".into(),
            instance_type: instance.into(),
            count: 1,
            container: Container::Lmi,
            role: "arn:aws:iam::123456789012:role/SageMakerExecution".into(),
            region: "us-east-1".into(),
            max_model_len: 2048,
            adapter: None,
        }
    }

    fn artifact(config: ModelConfig, gb: f64) -> ModelArtifact {
        ModelArtifact {
            prefix: "s3://b/out/job/output/model/merged/".into(),
            config,
            bytes: (gb * 1e9) as u64,
            chat: true,
        }
    }

    #[test]
    fn an_8b_model_fits_one_a10g_and_a_70b_names_what_fits() {
        let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());
        let p = plan(&request("ml.g5.2xlarge"), &artifact(llama(32, 4096), 16.1), &cat, &prices).unwrap();
        assert!(p.fit.fits(), "{}", p.fit.describe());
        assert_eq!(p.hourly_usd, Some(1.515));
        assert_eq!(p.volume_gb, None, "g5 rejects VolumeSizeInGB");
        assert_eq!(p.ami, "al2023-ami-sagemaker-inference-gpu-4-1");
        assert_eq!(p.environment["OPTION_MAX_MODEL_LEN"], "2048");
        assert!(p.tags.contains(&(TAG_CONTAINER.to_string(), "lmi".to_string())));
        let e = plan(&request("ml.g5.2xlarge"), &artifact(llama(80, 8192), 141.0), &cat, &prices).unwrap_err();
        let m = e.to_string();
        assert!(
            e.is_invalid_input() && m.contains("does not fit ml.g5.2xlarge") && m.contains("cheapest first"),
            "{m}"
        );
        assert!(m.contains("ml.g6e.12xlarge ($13.116/h)"), "{m}");
    }

    #[test]
    fn unknown_and_cpu_instances_are_refused_before_any_call() {
        let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());
        let a = artifact(llama(2, 512), 0.1);
        let e = plan(&request("ml.g5.2xlarg"), &a, &cat, &prices).unwrap_err().to_string();
        assert!(e.contains("not a SageMaker endpoint instance type") && e.contains("ml.g5.2xlarge"), "{e}");
        let e = plan(&request("ml.m5.xlarge"), &a, &cat, &prices).unwrap_err().to_string();
        assert!(e.contains("GPU instances it knows"), "{e}");
    }

    #[test]
    fn every_limit_is_checked() {
        let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());
        let mut p = plan(&request("ml.g4dn.xlarge"), &artifact(llama(2, 512), 0.1), &cat, &prices).unwrap();
        assert!(check(&p).is_empty(), "{:?}", check(&p));
        assert_eq!(p.environment["OPTION_DTYPE"], "fp16", "T4 has no bfloat16");
        p.name = "my_endpoint".into();
        p.model_prefix = "s3://b/model".into();
        p.startup_timeout_s = 30;
        p.volume_gb = Some(600);
        p.ami = "al2-ami-unknown".into();
        p.count = 0;
        p.environment.insert("BAD-KEY".into(), "x".repeat(1025));
        p.tags.push(("aws:owner".into(), "me".into()));
        let errs = check(&p).join("\n");
        for want in [
            "ModelName `my_endpoint` contains `_`",
            "EndpointName",
            "must end with `/`",
            "ContainerStartupHealthCheckTimeoutInSeconds = 30 must be 60–3600",
            "VolumeSizeInGB = 600 must be 1–512",
            "rejects VolumeSizeInGB",
            "InferenceAmiVersion `al2-ami-unknown`",
            "InitialInstanceCount",
            "Environment key `BAD-KEY`",
            "value is 1025 bytes",
            "reserved prefix aws:",
        ] {
            assert!(errs.contains(want), "missing `{want}` in:\n{errs}");
        }
    }

    #[test]
    fn volumes_and_timeouts_grow_with_the_model() {
        assert!(!volume_size_supported("ml.g4dn.xlarge") && !volume_size_supported("ml.p4d.24xlarge"));
        assert!(!volume_size_supported("ml.g6e.12xlarge") && !volume_size_supported("ml.p5.48xlarge"));
        assert!(volume_size_supported("ml.p3.2xlarge") && volume_size_supported("ml.m5.xlarge"));
        let (cat, prices) = (Catalogue::embedded(), embedded_prices("us-east-1").unwrap());
        let mut r = request("ml.p3.2xlarge");
        r.max_model_len = 512;
        let p = plan(&r, &artifact(llama(2, 512), 40.0), &cat, &prices).unwrap();
        assert_eq!(p.volume_gb, Some(58));
        assert_eq!((p.startup_timeout_s, p.download_timeout_s), (1100, 1800));
        assert_eq!(tag_value(&format!("s3://{}/x", "b".repeat(300))).len(), 256);
    }
}

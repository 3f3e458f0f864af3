//! Memory-mapped safetensors checkpoints: one file, or shards listed by
//! `model.safetensors.index.json`; or random weights drawn on request ([`Weights::random`]).

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::random::RandomWeights;
use super::{ModelConfig, ModelError};
use crate::quant::nf4::Nf4Options;

pub struct Weights {
    dir: PathBuf,
    source: Source,
}

enum Source {
    Files(MmapedSafetensors),
    Random(RandomWeights),
}

impl Weights {
    pub fn open(dir: &Path) -> Result<Weights, ModelError> {
        let files = shard_files(dir)?;
        // SAFETY: the files are mapped read-only; a concurrent writer truncating them is outside our contract
        // (SageMaker channels are not modified during a job).
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::Config {
            path: dir.to_path_buf(),
            problem: format!("invalid safetensors: {e}"),
        })?;
        Ok(Weights { dir: dir.to_path_buf(), source: Source::Files(st) })
    }

    /// Random weights of `cfg` (see [`super::random`]): nothing is read or written; with `nf4`
    /// the decoder projections look like a bitsandbytes 4-bit checkpoint.
    pub fn random(cfg: &ModelConfig, seed: u64, nf4: Option<Nf4Options>) -> Weights {
        Weights {
            dir: PathBuf::from(format!("<random weights, seed {seed}>")),
            source: Source::Random(RandomWeights::new(cfg, seed, nf4)),
        }
    }

    /// The checkpoint directory (a placeholder for random weights), for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Files(st) => st.get(name).is_ok(),
            Source::Random(r) => r.contains(name),
        }
    }

    pub fn names(&self) -> Vec<String> {
        match &self.source {
            Source::Files(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Source::Random(r) => r.names(),
        }
    }

    /// Load one tensor as stored (no dtype conversion, no shape check), e.g. U8 NF4 codes. (QLoRA)
    pub fn get_raw(&self, name: &str, device: &Device) -> Result<Tensor, ModelError> {
        if !self.contains(name) {
            return Err(ModelError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
                hint: "incomplete bitsandbytes 4-bit checkpoint?".into(),
            });
        }
        match &self.source {
            Source::Files(st) => Ok(st.load(name, device)?),
            Source::Random(r) => match r.get_raw(name, device) {
                Some(t) => Ok(t?),
                None => Err(ModelError::MissingTensor {
                    dir: self.dir.clone(),
                    name: name.to_string(),
                    hint: "not part of these random weights".into(),
                }),
            },
        }
    }

    /// Load one tensor, converted to `dtype`, checking its shape.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let missing = || ModelError::MissingTensor {
            dir: self.dir.clone(),
            name: name.to_string(),
            hint: "is this checkpoint the architecture its config.json says?".into(),
        };
        let found = match &self.source {
            Source::Files(st) => st.get(name).map_err(|_| missing())?.shape().to_vec(),
            Source::Random(r) => r.dense_shape(name).ok_or_else(missing)?.to_vec(),
        };
        if found != shape {
            return Err(ModelError::BadShape {
                dir: self.dir.clone(),
                name: name.to_string(),
                found,
                expected: shape.to_vec(),
            });
        }
        match &self.source {
            Source::Files(st) => Ok(st.load(name, device)?.to_dtype(dtype)?),
            Source::Random(r) => Ok(r.get(name, dtype, device).ok_or_else(missing)??),
        }
    }
}

/// The safetensors files of a model directory.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io { path: index.clone(), source })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: index.clone(), problem: format!("invalid JSON: {e}") })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config { path: index.clone(), problem: "no `weight_map` object".into() })?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(ModelError::Config {
                    path: index.clone(),
                    problem: format!("lists shard {} which does not exist", f.display()),
                });
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && !is_adapter(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::NoWeights { dir: dir.to_path_buf() });
    }
    Ok(files)
}

fn is_adapter(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("adapter_"))
}

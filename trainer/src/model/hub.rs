//! Finding the base model: `base_model` as a local directory, a channel name or a Hugging Face
//! Hub id (downloaded when the build has the `hub` feature), else the job's `model` channel.

use std::path::{Path, PathBuf};

use super::ModelError;
use crate::sagemaker::MlPaths;

/// The base model directory, checked to hold a `config.json` (a channel without one is bad input,
/// not an internal error).
pub fn resolve_base_model(base_model: &str, paths: &MlPaths) -> Result<PathBuf, ModelError> {
    let dir = locate(base_model, paths)?;
    if !dir.join("config.json").is_file() {
        return Err(ModelError::NotFound(format!(
            "{} has no config.json: the base model must be a Hugging Face checkpoint directory (config.json, tokenizer files and *.safetensors){}",
            dir.display(),
            if base_model.is_empty() { "; check what the `model` channel's S3 prefix holds" } else { "" }
        )));
    }
    Ok(dir)
}

fn locate(name: &str, paths: &MlPaths) -> Result<PathBuf, ModelError> {
    if name.is_empty() {
        return paths.optional_channel("model").ok_or_else(|| {
            ModelError::NotFound(format!(
                "no base model: give the job a `model` channel ({}) with config.json, tokenizer files and *.safetensors, or set base_model",
                paths.channel("model").display()
            ))
        });
    }
    let as_path = Path::new(name);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if let Some(ch) = paths.optional_channel(name) {
        return Ok(ch);
    }
    if as_path.is_absolute() || name.starts_with('.') {
        return Err(ModelError::NotFound(format!("base_model `{name}` is not a directory")));
    }
    fetch_from_hub(name)
}

#[cfg(feature = "hub")]
fn fetch_from_hub(id: &str) -> Result<PathBuf, ModelError> {
    use hf_hub::api::sync::ApiBuilder;
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let fail = |e: String| {
        ModelError::NotFound(format!(
            "base_model `{id}` is not a local directory or channel, and downloading it from the Hugging Face Hub failed: {e}. \
             Offline jobs must ship the model in the `model` channel; gated models need HF_TOKEN in the job environment"
        ))
    };
    let api = ApiBuilder::from_env().with_token(token).with_progress(false).build().map_err(|e| fail(e.to_string()))?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json").map_err(|e| fail(e.to_string()))?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let _ = repo.get(f); // optional files
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in super::weights::shard_files(index.parent().unwrap_or(Path::new(".")))?
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            {
                repo.get(&shard).map_err(|e| fail(e.to_string()))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

#[cfg(not(feature = "hub"))]
fn fetch_from_hub(id: &str) -> Result<PathBuf, ModelError> {
    Err(ModelError::NotFound(format!(
        "base_model `{id}` is not a local directory or channel, and this build has no Hub download (feature `hub`)"
    )))
}

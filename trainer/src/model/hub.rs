//! A base model that is not one of the job's channels: a local directory or a Hugging Face Hub id
//! (downloaded when the build has the `hub` feature). Which channel holds the model is the job's
//! business (`job::load_base`), not the model's.

use std::path::{Path, PathBuf};

use super::ModelError;

/// `dir` as a base model directory: it must hold a `config.json` (a channel without one is bad
/// input, not an internal error). `hint` ends the message.
pub fn checked_model_dir(dir: PathBuf, hint: &str) -> Result<PathBuf, ModelError> {
    if !dir.join("config.json").is_file() {
        return Err(ModelError::NotFound(format!(
            "{} has no config.json: the base model must be a Hugging Face checkpoint directory (config.json, tokenizer files and *.safetensors){hint}",
            dir.display(),
        )));
    }
    Ok(dir)
}

/// `name` as a local directory, else as a Hub id (a path that is not a directory is an error).
pub fn local_or_hub(name: &str) -> Result<PathBuf, ModelError> {
    let as_path = Path::new(name);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
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

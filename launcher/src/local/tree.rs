//! The `/opt/ml` tree of a local job: the files SageMaker writes under `input/config/`, the channels
//! (symlinks, copies, or empty mount points for Docker), and the tar.gz packing of its outputs.

use std::path::Path;

use serde_json::json;

use crate::error::Error;
use crate::jobfile::{Job, Source};

/// The `/opt/ml` layout of one job: the trainer's own path type, so both sides agree on it.
pub type MlTree = trainer::sagemaker::MlPaths;

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), Error> {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap_or_default() + "\n").map_err(Error::io(path))
}

/// The files SageMaker writes under `input/config/`.
pub fn config_files(job: &Job) -> Vec<(&'static str, serde_json::Value)> {
    let mut input = serde_json::Map::new();
    for c in &job.channels {
        let mut m = serde_json::Map::new();
        if let Some(ct) = &c.content_type {
            m.insert("ContentType".into(), json!(ct));
        }
        m.insert("TrainingInputMode".into(), json!(c.input_mode.clone().unwrap_or_else(|| job.input_mode.clone())));
        m.insert("S3DistributionType".into(), json!(c.distribution));
        m.insert("RecordWrapperType".into(), json!("None"));
        if let Some(comp) = &c.compression {
            m.insert("CompressionType".into(), json!(comp));
        }
        input.insert(c.name.clone(), serde_json::Value::Object(m));
    }
    // A local run is one host; several GPUs (or CPU ranks: num_gpus) stand in for a multi-instance job.
    let hosts = vec!["algo-1".to_string()];
    let resource = json!({
        "current_host": "algo-1",
        "current_instance_type": job.instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [{ "instance_group_name": "homogeneousCluster", "instance_type": job.instance_type, "hosts": hosts }],
        "network_interface_name": "eth0"
    });
    let mut files = vec![
        ("hyperparameters.json", serde_json::to_value(&job.hyperparameters).unwrap_or_default()),
        ("inputdataconfig.json", serde_json::Value::Object(input)),
        ("resourceconfig.json", resource),
    ];
    if let Some(uri) = job.effective_checkpoint_uri().or_else(|| job.spot.then(|| "s3://local/checkpoints".to_string()))
    {
        files.push(("checkpointconfig.json", json!({ "LocalPath": "/opt/ml/checkpoints/", "S3Uri": uri })));
    }
    files
}

/// Create the tree; channels become symlinks (binary) or copies; Docker mounts them instead.
pub fn synthesise(job: &Job, root: &Path, link_channels: bool, copy: bool, fresh: bool) -> Result<MlTree, Error> {
    let t = MlTree::new(root);
    for d in [t.config_dir(), t.data_dir(), t.checkpoint_dir()] {
        std::fs::create_dir_all(&d).map_err(Error::io(&d))?;
    }
    if fresh {
        let c = t.checkpoint_dir();
        std::fs::remove_dir_all(&c).map_err(Error::io(&c))?;
        std::fs::create_dir_all(&c).map_err(Error::io(&c))?;
    }
    for (name, v) in config_files(job) {
        write_json(&t.config_dir().join(name), &v)?;
    }
    let cp = t.config_dir().join("checkpointconfig.json");
    if !config_files(job).iter().any(|(n, _)| *n == "checkpointconfig.json") && cp.exists() {
        std::fs::remove_file(&cp).map_err(Error::io(&cp))?;
    }
    // Channels: rebuilt every run.
    let data = t.data_dir();
    std::fs::remove_dir_all(&data).map_err(Error::io(&data))?;
    std::fs::create_dir_all(&data).map_err(Error::io(&data))?;
    for c in &job.channels {
        let src = match &c.source {
            Source::Local(p) => p.canonicalize().map_err(|e| Error::Failed(format!("channel `{}`: {}: {e}", c.name, p.display())))?,
            Source::S3(uri) => {
                return Err(Error::Failed(format!(
                    "channel `{}` is {uri}; `oxtune local` needs local data: `aws s3 sync {uri} ./{}` and pass --channel {}=./{}",
                    c.name, c.name, c.name, c.name
                )))
            }
        };
        let dest = data.join(&c.name);
        if !link_channels {
            std::fs::create_dir_all(&dest).map_err(Error::io(&dest))?; // Docker mounts over it
            continue;
        }
        if copy {
            copy_into(&src, &dest)?;
        } else if src.is_dir() {
            std::os::unix::fs::symlink(&src, &dest).map_err(Error::io(&dest))?;
        } else {
            std::fs::create_dir_all(&dest).map_err(Error::io(&dest))?;
            let name = src.file_name().ok_or_else(|| Error::Failed(format!("channel `{}`: bad path", c.name)))?;
            std::os::unix::fs::symlink(&src, dest.join(name)).map_err(Error::io(&dest))?;
        }
    }
    Ok(t)
}

fn copy_into(src: &Path, dest: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dest).map_err(Error::io(dest))?;
    if src.is_file() {
        let to = dest.join(src.file_name().unwrap_or_default());
        std::fs::copy(src, &to).map_err(Error::io(&to))?;
        return Ok(());
    }
    for e in std::fs::read_dir(src).map_err(Error::io(src))? {
        let e = e.map_err(Error::io(src))?;
        let p = e.path();
        if p.is_dir() {
            copy_into(&p, &dest.join(e.file_name()))?;
        } else {
            let to = dest.join(e.file_name());
            std::fs::copy(&p, &to).map_err(Error::io(&to))?;
        }
    }
    Ok(())
}

pub(super) fn list_dir(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub(super) fn reset_dir(d: &Path) -> Result<(), Error> {
    if d.exists() {
        std::fs::remove_dir_all(d).map_err(Error::io(d))?;
    }
    std::fs::create_dir_all(d).map_err(Error::io(d))
}

/// `tar czf out -C dir .` with the tar/flate2 crates.
pub fn pack(dir: &Path, out: &Path) -> Result<(), Error> {
    let f = std::fs::File::create(out).map_err(Error::io(out))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(true);
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(Error::io(dir))?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            tar.append_dir_all(&name, &p).map_err(Error::io(&p))?;
        } else {
            tar.append_path_with_name(&p, &name).map_err(Error::io(&p))?;
        }
    }
    let gz = tar.into_inner().map_err(Error::io(out))?;
    gz.finish().map_err(Error::io(out))?;
    Ok(())
}

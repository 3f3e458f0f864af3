//! Checkpoints in `/opt/ml/checkpoints/checkpoint-<step>/`: adapter, optimizer
//! moments, schedule position, data position and RNG state.
//!
//! Each is written into a temporary directory and renamed into place, so a kill
//! during the write leaves the previous checkpoint intact; a directory without
//! `trainer_state.json` (written last) is never resumed from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::report::MetricRecord;
use crate::rng::Rng;

pub const STATE_FILE: &str = "trainer_state.json";
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is unreadable: {problem}; delete it to start over")]
    Corrupt { path: PathBuf, problem: String },
    #[error("no space left to write a checkpoint in {dir} (about {bytes} bytes needed): the job's volume is full; raise volume_gb in the job file (SageMaker's VolumeSizeInGB) or lower save_total_limit")]
    DiskFull { dir: PathBuf, bytes: u64 },
    #[error("checkpoint {path} was written by a different job ({problem}); resume with the same settings, or delete the checkpoint directory to start over")]
    Mismatch { path: PathBuf, problem: String },
}

impl CheckpointError {
    pub fn is_user_error(&self) -> bool {
        !matches!(self, CheckpointError::Io { .. })
    }
}

/// Whether an error (or one it wraps) is the OS saying the disk is full (ENOSPC).
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return true;
            }
        }
        if err.to_string().contains("No space left on device") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Everything besides tensors needed to continue exactly where training stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Epoch of the next micro-batch.
    pub epoch: u64,
    /// Index of the next micro-batch within that epoch.
    pub batch_in_epoch: usize,
    pub tokens_seen: u64,
    pub dropout_rng: Rng,
    /// GRPO's sampling RNG (absent for SFT).
    #[serde(default)]
    pub generation_rng: Option<Rng>,
    /// Every metric record so far (train and validation), so curves survive restarts.
    pub history: Vec<MetricRecord>,
    pub elapsed_secs: f64,
    /// Settings that must not change across a resume.
    pub fingerprint: BTreeMap<String, String>,
}

/// A checkpoint loaded from disk.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: TrainerState,
    /// m.{i} / v.{i} tensors by parameter index.
    pub moments: (Vec<Tensor>, Vec<Tensor>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Step of a complete checkpoint directory name (`checkpoint-<step>`).
fn step_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_prefix("checkpoint-")?.parse().ok()
}

/// Complete checkpoints, oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(root) else { return vec![] };
    let mut out: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| step_of(&p).map(|s| (s, p)))
        .filter(|(_, p)| p.join(STATE_FILE).exists())
        .collect();
    out.sort();
    out
}

/// The state of the newest complete checkpoint, if one reads (settings only: no tensors).
pub fn latest_state(root: &Path) -> Option<TrainerState> {
    let (_, dir) = list(root).pop()?;
    serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE)).ok()?).ok()
}

/// Remove half-written temporaries left by a kill during a save.
pub fn clean_partial(root: &Path) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if name.starts_with(".tmp-checkpoint-") || name.starts_with(".old-checkpoint-") {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

/// Write a checkpoint atomically and keep at most `keep` complete ones. `write_adapter` writes the adapter file.
pub fn save(
    root: &Path,
    state: &TrainerState,
    moments: (&[Tensor], &[Tensor]),
    write_adapter: impl FnOnce(&Path) -> candle_core::Result<()>,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let tmp = root.join(format!(".tmp-checkpoint-{}-{}", state.step, std::process::id()));
    write_checkpoint(root, &tmp, state, moments, write_adapter, keep).map_err(|e| {
        if !is_disk_full(&e) {
            return e;
        }
        let _ = std::fs::remove_dir_all(&tmp); // free what the partial save took
                                               // Adapter (f32) + its two moments (f32) + the state file.
        let moment_bytes: usize =
            moments.0.iter().chain(moments.1).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
        CheckpointError::DiskFull { dir: root.to_path_buf(), bytes: (moment_bytes * 3 / 2 + (1 << 16)) as u64 }
    })
}

fn write_checkpoint(
    root: &Path,
    tmp: &Path,
    state: &TrainerState,
    moments: (&[Tensor], &[Tensor]),
    write_adapter: impl FnOnce(&Path) -> candle_core::Result<()>,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let final_dir = root.join(format!("checkpoint-{}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(io(tmp))?;
    }
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    let corrupt =
        |p: &Path, e: candle_core::Error| CheckpointError::Corrupt { path: p.to_path_buf(), problem: e.to_string() };

    write_adapter(&tmp.join(ADAPTER_FILE)).map_err(|e| corrupt(tmp, e))?;
    let mut tensors = BTreeMap::new();
    for (i, (m, v)) in moments.0.iter().zip(moments.1).enumerate() {
        tensors.insert(format!("m.{i}"), m.clone());
        tensors.insert(format!("v.{i}"), v.clone());
    }
    crate::lora::save_safetensors(&tmp.join(OPTIMIZER_FILE), &tensors).map_err(|e| corrupt(tmp, e))?;
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| CheckpointError::Corrupt { path: state_path.clone(), problem: e.to_string() })?;
    write_synced(&state_path, &json)?;
    for f in [ADAPTER_FILE, OPTIMIZER_FILE] {
        sync_file(&tmp.join(f))?;
    }
    // Same step saved again (e.g. SIGTERM right after a periodic save): move the old one aside first.
    if final_dir.exists() {
        let old = root.join(format!(".old-checkpoint-{}-{}", state.step, std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
        std::fs::rename(tmp, &final_dir).map_err(io(&final_dir))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, &final_dir).map_err(io(&final_dir))?;
    }
    sync_dir(root);
    let all = list(root);
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(final_dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

fn sync_dir(path: &Path) {
    if let Ok(d) = std::fs::File::open(path) {
        let _ = d.sync_all();
    }
}

/// The newest readable checkpoint, if any; `n_params` moments are expected. A checkpoint that
/// cannot be read (a torn or corrupted file) is skipped with a warning and the next newest one is
/// tried, so a damaged save costs the steps since the one before, not the whole run. A readable
/// checkpoint of a different job is an error, never skipped.
pub fn load_latest(root: &Path, n_params: usize, device: &Device) -> Result<Option<Loaded>, CheckpointError> {
    for (_, dir) in list(root).into_iter().rev() {
        match load_one(dir, n_params, device) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e @ (CheckpointError::Corrupt { .. } | CheckpointError::Io { .. })) => {
                tracing::warn!("{e}; trying the previous checkpoint");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn load_one(dir: PathBuf, n_params: usize, device: &Device) -> Result<Loaded, CheckpointError> {
    let adapter_path = dir.join(ADAPTER_FILE);
    candle_core::safetensors::load(&adapter_path, &Device::Cpu)
        .map_err(|e| CheckpointError::Corrupt { path: adapter_path.clone(), problem: e.to_string() })?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Corrupt { path: state_path.clone(), problem: e.to_string() })?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let tensors = candle_core::safetensors::load(&opt_path, device)
        .map_err(|e| CheckpointError::Corrupt { path: opt_path.clone(), problem: e.to_string() })?;
    let mut m = Vec::with_capacity(n_params);
    let mut v = Vec::with_capacity(n_params);
    for i in 0..n_params {
        let get = |k: String| {
            tensors.get(&k).cloned().ok_or_else(|| CheckpointError::Mismatch {
                path: opt_path.clone(),
                problem: format!("optimizer state has no `{k}` (the adapter has a different number of tensors)"),
            })
        };
        m.push(get(format!("m.{i}"))?);
        v.push(get(format!("v.{i}"))?);
    }
    if tensors.len() != 2 * n_params {
        return Err(CheckpointError::Mismatch {
            path: opt_path,
            problem: format!("optimizer state holds {} tensors, this job trains {}", tensors.len() / 2, n_params),
        });
    }
    Ok(Loaded { dir, state, moments: (m, v) })
}

/// Refuse to resume a checkpoint whose fingerprint differs, naming each differing setting.
pub fn check_fingerprint(loaded: &Loaded, current: &BTreeMap<String, String>) -> Result<(), CheckpointError> {
    let diffs: Vec<String> = current
        .iter()
        .filter_map(|(k, v)| match loaded.state.fingerprint.get(k) {
            Some(old) if old == v => None,
            Some(old) => Some(format!("{k}: checkpoint {old}, now {v}")),
            None => Some(format!("{k}: missing in checkpoint")),
        })
        .collect();
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::Mismatch { path: loaded.dir.clone(), problem: diffs.join("; ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            epoch: 0,
            batch_in_epoch: 3,
            tokens_seen: 10,
            dropout_rng: Rng::new(1),
            generation_rng: None,
            history: vec![],
            elapsed_secs: 1.0,
            fingerprint: [("lora_r".to_string(), "4".to_string())].into(),
        }
    }

    #[test]
    fn save_list_prune_and_ignore_partial() {
        let dir = tempfile::tempdir().unwrap();
        let m = vec![Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()];
        let adapter: std::collections::HashMap<String, Tensor> = [("a".to_string(), m[0].clone())].into();
        let write = |p: &Path| candle_core::safetensors::save(&adapter, p);
        for step in [1, 2, 3] {
            save(dir.path(), &state(step), (&m, &m), write, 2).unwrap();
        }
        let steps: Vec<u64> = list(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![2, 3]);
        // A half-written newer checkpoint (no state file) is not resumed from.
        std::fs::create_dir_all(dir.path().join("checkpoint-9")).unwrap();
        let loaded = load_latest(dir.path(), 1, &Device::Cpu).unwrap().unwrap();
        assert_eq!(loaded.state.step, 3);
        assert_eq!(loaded.moments.0[0].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        let other: BTreeMap<String, String> = [("lora_r".to_string(), "8".to_string())].into();
        let err = check_fingerprint(&loaded, &other).unwrap_err().to_string();
        assert!(err.contains("lora_r: checkpoint 4, now 8"), "{err}");
        // A corrupted newest checkpoint (torn optimizer file) is skipped for the one before it.
        std::fs::write(dir.path().join("checkpoint-3").join(OPTIMIZER_FILE), b"torn").unwrap();
        let loaded = load_latest(dir.path(), 1, &Device::Cpu).unwrap().unwrap();
        assert_eq!(loaded.state.step, 2);
        // So is one whose adapter is unreadable; with none left the job starts fresh.
        std::fs::write(dir.path().join("checkpoint-2").join(ADAPTER_FILE), b"").unwrap();
        assert!(load_latest(dir.path(), 1, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn a_full_disk_names_the_directory_the_size_and_volume_gb() {
        // /dev/full answers every write with ENOSPC, as a full volume does.
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(is_disk_full(&enospc));
        assert!(!is_disk_full(&std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
        if !Path::new("/dev/full").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let m = vec![Tensor::zeros(1024, candle_core::DType::F32, &Device::Cpu).unwrap()];
        let write = |_: &Path| std::fs::write("/dev/full", b"adapter").map_err(candle_core::Error::wrap);
        let err = save(dir.path(), &state(1), (&m, &m), write, 2).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CheckpointError::DiskFull { .. }), "{text}");
        assert!(
            text.contains(&dir.path().display().to_string()) && text.contains("bytes") && text.contains("volume_gb"),
            "{text}"
        );
        assert!(
            list(dir.path()).is_empty() && std::fs::read_dir(dir.path()).unwrap().count() == 0,
            "partial save left behind"
        );
    }
}

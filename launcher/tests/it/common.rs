//! Helpers the launcher's test modules share.

use std::path::Path;

/// The entry names of a `.tar.gz` (as `model.tar.gz` / `output.tar.gz`), sorted.
pub fn tar_names(p: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()));
    let mut v: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    v.sort();
    v
}

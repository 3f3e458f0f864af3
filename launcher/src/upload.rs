//! Upload local channel data to S3 under the job's input prefix, skipping unchanged files.
//!
//! A file is unchanged when the object has the same size and the same MD5: we store the MD5 as
//! object metadata `x-amz-meta-oxtune-md5` on upload; for objects without it, a single-part
//! ETag is the MD5 itself. Objects under the channel prefix that no longer exist locally are
//! deleted, so the channel holds exactly the local data (the prefix belongs to oxtune).

use crate::error::Error;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::{Digest, Md5};

use crate::aws::{explain, ErrorContext};

/// Files above this size go up in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
pub const PART_SIZE: u64 = 16 * 1024 * 1024;
pub const MD5_METADATA: &str = "oxtune-md5";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub key: String,
}

/// Split `s3://bucket/key/prefix` into bucket and key (no leading slash).
pub fn parse_s3_uri(uri: &str) -> Result<S3Location, Error> {
    let rest = uri.strip_prefix("s3://").ok_or_else(|| Error::Failed(format!("`{uri}` is not an s3:// URI")))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Failed(format!("`{uri}` has no bucket")));
    }
    Ok(S3Location { bucket: bucket.to_string(), key: key.to_string() })
}

#[derive(Debug, Clone)]
pub struct LocalFile {
    pub path: PathBuf,
    /// Path relative to the channel root, with `/` separators.
    pub relative: String,
    pub size: u64,
}

/// Every regular file under `path` (or `path` itself), sorted.
pub fn list_local(path: &Path) -> Result<Vec<LocalFile>, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    if meta.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "data".into());
        out.push(LocalFile { path: path.to_path_buf(), relative: name, size: meta.len() });
        return Ok(out);
    }
    fn walk(root: &Path, dir: &Path, out: &mut Vec<LocalFile>) -> Result<(), Error> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::Failed(format!("cannot list {}: {e}", dir.display())))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue; // .DS_Store, .git, editor swap files
            }
            let m = std::fs::metadata(&p).map_err(|e| Error::Failed(format!("cannot read {}: {e}", p.display())))?;
            if m.is_dir() {
                walk(root, &p, out)?;
            } else if m.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(LocalFile { path: p.clone(), relative: rel, size: m.len() });
            }
        }
        Ok(())
    }
    walk(path, path, &mut out)?;
    if out.is_empty() {
        return Err(Error::Invalid(format!("{} contains no files", path.display())));
    }
    Ok(out)
}

pub fn md5_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::Failed(format!("cannot open {}: {e}", path.display())))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub uploaded: Vec<String>,
    pub skipped: Vec<String>,
    pub deleted: Vec<String>,
    pub bytes_uploaded: u64,
}

/// Progress on a terminal; plain lines otherwise.
fn progress(total: u64, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        pb.set_style(
            ProgressStyle::with_template("  {msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
    }
    pb
}

/// Upload `local` (file or directory) to `prefix_uri` (`s3://bucket/prefix/`); returns the report.
pub async fn sync_channel(
    s3: &aws_sdk_s3::Client,
    local: &Path,
    prefix_uri: &str,
    region: &str,
    quiet: bool,
) -> Result<UploadReport, Error> {
    let loc = parse_s3_uri(prefix_uri)?;
    let prefix = if loc.key.is_empty() || loc.key.ends_with('/') { loc.key.clone() } else { format!("{}/", loc.key) };
    let files = list_local(local)?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let pb = progress(total, quiet);
    let ctx = |op: &str| ErrorContext { operation: op.into(), region: region.into(), ..Default::default() };
    let mut report = UploadReport::default();
    let plain = quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr());

    for f in &files {
        let key = format!("{prefix}{}", f.relative);
        pb.set_message(f.relative.clone());
        let md5 = md5_file(&f.path)?;
        let head = s3.head_object().bucket(&loc.bucket).key(&key).send().await;
        let unchanged = match &head {
            Ok(h) => {
                let same_size = h.content_length() == Some(f.size as i64);
                let stored = h.metadata().and_then(|m| m.get(MD5_METADATA)).map(|s| s.to_ascii_lowercase());
                let etag = h.e_tag().map(|e| e.trim_matches('"').to_ascii_lowercase());
                same_size && (stored.as_deref() == Some(md5.as_str()) || etag.as_deref() == Some(md5.as_str()))
            }
            Err(e) => {
                let not_found =
                    matches!(e, aws_sdk_s3::error::SdkError::ServiceError(se) if se.raw().status().as_u16() == 404);
                if !not_found {
                    return Err(explain(e, &ctx("HeadObject")));
                }
                false
            }
        };
        if unchanged {
            report.skipped.push(key.clone());
            pb.inc(f.size);
            if plain && !quiet {
                eprintln!("  unchanged  s3://{}/{key} ({})", loc.bucket, crate::format::fmt_bytes(f.size));
            }
            continue;
        }
        if f.size > MULTIPART_THRESHOLD {
            upload_multipart(s3, &loc.bucket, &key, f, &md5, &pb, region).await?;
        } else {
            let body = ByteStream::from_path(&f.path)
                .await
                .map_err(|e| Error::Failed(format!("cannot read {}: {e}", f.path.display())))?;
            s3.put_object()
                .bucket(&loc.bucket)
                .key(&key)
                .body(body)
                .metadata(MD5_METADATA, &md5)
                .send()
                .await
                .map_err(|e| explain(&e, &ctx("PutObject")))?;
            pb.inc(f.size);
        }
        report.uploaded.push(key.clone());
        report.bytes_uploaded += f.size;
        if plain && !quiet {
            eprintln!("  uploaded   s3://{}/{key} ({})", loc.bucket, crate::format::fmt_bytes(f.size));
        }
    }
    pb.finish_and_clear();

    // Remove objects that are no longer in the local data.
    let wanted: std::collections::BTreeSet<String> = files.iter().map(|f| format!("{prefix}{}", f.relative)).collect();
    let mut token: Option<String> = None;
    let mut stale = Vec::new();
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&loc.bucket)
            .prefix(&prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| explain(&e, &ctx("ListObjectsV2")))?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                if !wanted.contains(k) {
                    stale.push(k.to_string());
                }
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    for k in stale {
        s3.delete_object().bucket(&loc.bucket).key(&k).send().await.map_err(|e| explain(&e, &ctx("DeleteObject")))?;
        if !quiet {
            eprintln!("  removed    s3://{}/{k} (no longer in {})", loc.bucket, local.display());
        }
        report.deleted.push(k);
    }
    Ok(report)
}

async fn upload_multipart(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    f: &LocalFile,
    md5: &str,
    pb: &ProgressBar,
    region: &str,
) -> Result<(), Error> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let ctx = |op: &str| ErrorContext { operation: op.into(), region: region.into(), ..Default::default() };
    // S3 allows at most 10,000 parts.
    let part_size = PART_SIZE.max(f.size.div_ceil(9_000));
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .metadata(MD5_METADATA, md5)
        .send()
        .await
        .map_err(|e| explain(&e, &ctx("CreateMultipartUpload")))?;
    let upload_id =
        created.upload_id().ok_or(Error::Failed("CreateMultipartUpload returned no upload id".into()))?.to_string();
    let result: Result<Vec<CompletedPart>, Error> = async {
        let mut file = std::fs::File::open(&f.path)
            .map_err(|e| Error::Failed(format!("cannot open {}: {e}", f.path.display())))?;
        let mut parts = Vec::new();
        let mut number = 1i32;
        loop {
            let mut buf = Vec::with_capacity(part_size as usize);
            (&mut file)
                .take(part_size)
                .read_to_end(&mut buf)
                .map_err(|e| Error::Failed(format!("cannot read {}: {e}", f.path.display())))?;
            if buf.is_empty() {
                break;
            }
            let len = buf.len() as u64;
            let out = s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| explain(&e, &ctx("UploadPart")))?;
            parts.push(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_string)).build());
            pb.inc(len);
            number += 1;
        }
        Ok(parts)
    }
    .await;
    match result {
        Ok(parts) => {
            s3.complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| explain(&e, &ctx("CompleteMultipartUpload")))?;
            Ok(())
        }
        Err(e) => {
            let _ = s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
            Err(e)
        }
    }
}

/// Channel name → S3 URI after syncing every local channel of the job.
pub async fn upload_job_channels(
    s3: &aws_sdk_s3::Client,
    job: &crate::jobfile::Job,
    region: &str,
    quiet: bool,
) -> Result<BTreeMap<String, String>, Error> {
    let mut uris = BTreeMap::new();
    for c in &job.channels {
        if let crate::jobfile::Source::Local(path) = &c.source {
            let prefix = crate::request::planned_channel_uri(job, &c.name).ok_or(Error::Failed(
                "local channels need an S3 destination: set `output_path` (or `input_prefix`) in [sagemaker]".into(),
            ))?;
            if !quiet {
                eprintln!("channel `{}`: {} → {prefix}", c.name, path.display());
            }
            let r = sync_channel(s3, path, &prefix, region, quiet).await?;
            if !quiet {
                eprintln!(
                    "channel `{}`: {} uploaded ({}), {} unchanged, {} removed",
                    c.name,
                    r.uploaded.len(),
                    crate::format::fmt_bytes(r.bytes_uploaded),
                    r.skipped.len(),
                    r.deleted.len()
                );
            }
            uris.insert(c.name.clone(), prefix);
        }
    }
    Ok(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris() {
        assert_eq!(parse_s3_uri("s3://b/a/b/").unwrap(), S3Location { bucket: "b".into(), key: "a/b/".into() });
        assert_eq!(parse_s3_uri("s3://b").unwrap().key, "");
        assert!(parse_s3_uri("https://x").is_err());
    }

    #[test]
    fn md5_and_listing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("a.jsonl"), b"hello").unwrap();
        std::fs::write(d.path().join("sub/b.jsonl"), b"").unwrap();
        std::fs::write(d.path().join(".hidden"), b"x").unwrap();
        let files = list_local(d.path()).unwrap();
        let rel: Vec<_> = files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(rel, ["a.jsonl", "sub/b.jsonl"]);
        assert_eq!(md5_file(&d.path().join("a.jsonl")).unwrap(), "5d41402abc4b2a76b9719d911017c592");
    }
}

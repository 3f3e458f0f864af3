//! Price tables: the embedded one, and `oxtune prices refresh --region R`, which reads the
//! public AWS bulk price list (no credentials needed) and caches the region's SageMaker
//! Training on-demand rates under the user cache directory.
//!
//! CSV layout (shared/reference/sagemaker.md §6): 5 preamble rows (`Publication Date`, …), then a
//! header. Rows with `Component = Training`, `TermType = OnDemand`, `Unit = Hrs` and a usage type
//! like `USE1-Train:ml.g5.xlarge` carry the hourly rate in `PricePerUnit`.

use crate::error::Error;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::catalogue::{embedded_prices, PriceEntry, PriceTable};

pub const BULK_URL: &str =
    "https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonSageMaker/current/{region}/index.csv";

/// `$OXTUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/oxtune`, else `~/.cache/oxtune` (macOS: `~/Library/Caches/oxtune`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OXTUNE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("oxtune");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    if cfg!(target_os = "macos") {
        home.join("Library/Caches/oxtune")
    } else {
        home.join(".cache/oxtune")
    }
}

pub fn cache_file(region: &str) -> PathBuf {
    cache_dir().join("prices").join(format!("{region}.toml"))
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedTable {
    region: String,
    publication_date: String,
    fetched: String,
    url: String,
    prices: BTreeMap<String, f64>,
}

/// The cached table for a region if any, else the embedded one.
pub fn load(region: &str) -> Result<PriceTable, Error> {
    let path = cache_file(region);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match toml::from_str::<CachedTable>(&text) {
            Ok(c) => return Ok(from_cache(c, &path)),
            Err(e) => eprintln!("warning: ignoring unreadable price cache {}: {e}", path.display()),
        }
    }
    embedded_prices(region).ok_or_else(|| {
        Error::Invalid(format!(
            "no SageMaker prices for region `{region}`: the embedded table covers {}; run `oxtune prices refresh --region {region}`",
            crate::catalogue::EMBEDDED_REGIONS.join(", ")
        ))
    })
}

fn from_cache(c: CachedTable, path: &Path) -> PriceTable {
    let src = "PL".to_string();
    let mut sources = BTreeMap::new();
    sources.insert(
        src.clone(),
        format!("AWS bulk price list published {} ({}), fetched {}", c.publication_date, c.url, c.fetched),
    );
    PriceTable {
        region: c.region.clone(),
        origin: format!("AWS price list of {} (cached {})", c.publication_date, path.display()),
        date: c.publication_date.clone(),
        prices: c.prices.into_iter().map(|(k, usd)| (k, PriceEntry { usd, src: src.clone() })).collect(),
        sources,
    }
}

/// The region's price table, or an empty one (commands that only show costs go on without them).
pub fn load_or_empty(region: &str) -> PriceTable {
    load(region).unwrap_or_else(|_| PriceTable {
        region: region.into(),
        origin: "no price table".into(),
        date: String::new(),
        prices: BTreeMap::new(),
        sources: BTreeMap::new(),
    })
}

/// Parse the bulk CSV: publication date and instance → USD/hour (Training, on-demand) in `region`.
/// Rows of other regions are skipped when the file has a `Region Code` column (the all-region
/// `current/index.csv` mixes them).
pub fn parse_bulk_csv(reader: impl Read, region: &str) -> Result<(String, BTreeMap<String, f64>), Error> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(reader);
    let mut records = rdr.records();
    let mut publication = String::from("unknown");
    let mut header: Option<csv::StringRecord> = None;
    // Preamble: key/value rows until the header (the row that has "SKU").
    for rec in records.by_ref() {
        let rec = rec.map_err(|e| Error::Failed(format!("price list is not CSV: {e}")))?;
        if rec.iter().any(|f| f == "SKU") {
            header = Some(rec);
            break;
        }
        if rec.get(0) == Some("Publication Date") {
            publication = rec.get(1).unwrap_or("unknown").to_string();
        }
    }
    let header = header.ok_or(Error::Failed("price list has no header row (no `SKU` column)".into()))?;
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let term = col("TermType").ok_or(Error::Failed("price list has no TermType column".into()))?;
    let unit = col("Unit").ok_or(Error::Failed("price list has no Unit column".into()))?;
    let price = col("PricePerUnit").ok_or(Error::Failed("price list has no PricePerUnit column".into()))?;
    let usage = col("usageType");
    let component = col("Component");
    let instance_col = col("Instance Name").or_else(|| col("Instance Type"));
    let region_col = col("Region Code");
    let mut other_regions = std::collections::BTreeSet::new();
    let mut prices = BTreeMap::new();
    for rec in records {
        let rec = rec.map_err(|e| Error::Failed(format!("price list row: {e}")))?;
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).unwrap_or("");
        if get(Some(term)) != "OnDemand" || get(Some(unit)) != "Hrs" {
            continue;
        }
        let row_region = get(region_col);
        if !row_region.is_empty() && row_region != region {
            other_regions.insert(row_region.to_string());
            continue;
        }
        let usage_type = get(usage);
        let is_training = match component {
            Some(_) => get(component) == "Training" && !usage_type.contains("TrSpt"),
            None => usage_type.contains("-Train:"),
        };
        if !is_training {
            continue;
        }
        let instance = match get(instance_col) {
            "" => usage_type.split_once("Train:").map(|(_, i)| i).unwrap_or(""),
            i => i,
        };
        if !instance.starts_with("ml.") {
            continue;
        }
        if let Ok(p) = get(Some(price)).parse::<f64>() {
            if p > 0.0 {
                prices.insert(instance.to_string(), p);
            }
        }
    }
    if prices.is_empty() {
        return Err(Error::Invalid(if other_regions.is_empty() {
            "the price list had no SageMaker Training on-demand rows (Component = Training, TermType = OnDemand, Unit = Hrs)".into()
        } else {
            format!(
                "the price list has no SageMaker Training on-demand rows for {region}, only for {}; download the file of {region} or pass --region",
                other_regions.into_iter().collect::<Vec<_>>().join(", ")
            )
        }));
    }
    Ok((publication, prices))
}

/// Download (or read `file`) and cache a region's rates. Returns the new table.
pub fn refresh(region: &str, url: Option<&str>, file: Option<&Path>) -> Result<PriceTable, Error> {
    let url = url.map(str::to_string).unwrap_or_else(|| BULK_URL.replace("{region}", region));
    let (publication, prices) = match file {
        Some(f) => {
            let r = std::fs::File::open(f).map_err(|e| Error::Failed(format!("cannot read {}: {e}", f.display())))?;
            parse_bulk_csv(std::io::BufReader::new(r), region)?
        }
        None => {
            eprintln!("downloading {url} …");
            let resp = ureq::get(&url).timeout(std::time::Duration::from_secs(120)).call().map_err(|e| {
                let offline = matches!(e, ureq::Error::Transport(_));
                Error::Failed(format!(
                    "cannot download the AWS price list from {url}: {e}.{} The embedded price table ({}) stays in use; pass --file to read a downloaded copy.",
                    if offline { " You appear to be offline or behind a proxy." } else { "" },
                    crate::catalogue::embedded_prices(region).map(|t| t.date).unwrap_or_else(|| "none for this region".into())
                ))
            })?;
            parse_bulk_csv(std::io::BufReader::new(resp.into_reader()), region)?
        }
    };
    let cached = CachedTable {
        region: region.to_string(),
        publication_date: publication,
        fetched: crate::clock::utc_datetime(crate::clock::now_epoch()),
        url,
        prices,
    };
    let path = cache_file(region);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    let text = toml::to_string(&cached).map_err(|e| Error::Failed(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok(from_cache(cached, &path))
}

/// `oxtune prices`: the catalogue with rates for one region.
pub fn render(table: &PriceTable, catalogue: &crate::catalogue::Catalogue) -> String {
    let mut rows = vec![vec![
        "instance".to_string(),
        "GPUs".into(),
        "GPU memory".into(),
        "bf16 TFLOP/s".into(),
        "vCPU/RAM".into(),
        "$/hour".into(),
        "source".into(),
    ]];
    for i in &catalogue.instances {
        let g = catalogue.gpu_of(i);
        let price = table.prices.get(&i.instance_type);
        rows.push(vec![
            i.instance_type.clone(),
            format!("{}×{}", i.gpus, i.gpu),
            format!("{} GB", (g.memory_mib as f64 / 1024.0).round()),
            if g.bf16 { format!("{:.0}", g.bf16_tflops) } else { "no bf16 (unsupported)".into() },
            format!("{}/{} GiB", i.vcpu, i.ram_gib),
            price
                .map(|p| format!("{}{:.3}", if table.is_estimate(&i.instance_type) { "~" } else { "" }, p.usd))
                .unwrap_or_else(|| "not offered".into()),
            price.map(|p| p.src.clone()).unwrap_or_default(),
        ]);
    }
    let mut s = format!("SageMaker training, on-demand USD/hour, {} — {}\n\n", table.region, table.origin);
    s.push_str(&crate::format::table(&rows));
    s.push_str("\nsources:\n");
    let used: std::collections::BTreeSet<&String> = table.prices.values().map(|p| &p.src).collect();
    for (k, v) in &table.sources {
        if used.contains(k) {
            s.push_str(&format!("  {k}: {v}\n"));
        }
    }
    for (name, g) in &catalogue.gpus {
        if let Some(why) = &g.unsupported {
            s.push_str(&format!("unsupported {name}: {why}\n"));
        }
    }
    s.push_str("Managed spot: no rate card; AWS bills fewer billable seconds at the on-demand rate (savings shown after the job).\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made sample in the bulk CSV layout; tests/fixtures/prices/README.md lists each row
    /// and whether it must be kept.
    const SAMPLE: &str = include_str!("../tests/fixtures/prices/sagemaker-index-sample.csv");

    #[test]
    fn parses_bulk_csv() {
        let (date, prices) = parse_bulk_csv(SAMPLE.as_bytes(), "us-east-1").unwrap();
        assert_eq!(date, "2026-09-24T12:00:00Z");
        let want: BTreeMap<String, f64> =
            [("ml.g5.xlarge", 1.408), ("ml.g6.xlarge", 1.127), ("ml.p5.48xlarge", 63.296)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(prices, want);
        // The eu-west-1 row only counts for eu-west-1.
        let (_, eu) = parse_bulk_csv(SAMPLE.as_bytes(), "eu-west-1").unwrap();
        assert_eq!(eu.into_iter().collect::<Vec<_>>(), [("ml.g5.xlarge".to_string(), 1.99)]);
        let err = parse_bulk_csv(SAMPLE.as_bytes(), "ap-south-1").unwrap_err().to_string();
        assert!(
            err.contains("no SageMaker Training on-demand rows for ap-south-1, only for eu-west-1, us-east-1"),
            "{err}"
        );
    }

    #[test]
    fn not_a_price_list_is_explained() {
        let err = parse_bulk_csv("a,b\n1,2\n".as_bytes(), "us-east-1").unwrap_err().to_string();
        assert!(err.contains("no header row"), "{err}");
        let header_only = SAMPLE.lines().take(6).collect::<Vec<_>>().join("\n");
        let err = parse_bulk_csv(header_only.as_bytes(), "us-east-1").unwrap_err().to_string();
        assert!(err.contains("no SageMaker Training on-demand rows"), "{err}");
    }

    #[test]
    fn offline_error_is_clear() {
        // (Caching under OXTUNE_CACHE_DIR is tested through the CLI in tests/cli.rs.)
        // An unreachable URL fails with a message that says what to do.
        let err = refresh("us-east-1", Some("http://127.0.0.1:1/index.csv"), None).unwrap_err().to_string();
        assert!(err.contains("cannot download") && err.contains("embedded price table"), "{err}");
    }
}

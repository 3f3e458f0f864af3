//! `oxtune prices [refresh]`: the instance catalogue with its training prices.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{offline_region, prices_for, Cli, Failure, Res, EXIT_OK};
use crate::catalogue::Catalogue;

#[derive(Debug, Args)]
pub struct PricesArgs {
    #[command(subcommand)]
    pub action: Option<PricesAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PricesAction {
    /// Download the public AWS price list for a region and cache its training rates.
    Refresh {
        /// Read this downloaded index.csv instead of downloading.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Price-list URL (default: the AWS bulk offer file of the region).
        #[arg(long)]
        url: Option<String>,
    },
}

pub(super) fn run(cli: &Cli, a: &PricesArgs) -> Res {
    let region = offline_region(&cli.region, None);
    let table = match &a.action {
        Some(PricesAction::Refresh { file, url }) => {
            let t = crate::prices::refresh(&region, url.as_deref(), file.as_deref()).map_err(Failure::error)?;
            eprintln!(
                "cached {} training rates for {region} in {}",
                t.prices.len(),
                crate::prices::cache_file(&region).display()
            );
            t
        }
        None => prices_for(&region)?,
    };
    if a.json {
        let rows: BTreeMap<&String, serde_json::Value> = table
            .prices
            .iter()
            .map(|(k, p)| (k, serde_json::json!({ "usd_per_hour": p.usd, "source": table.sources.get(&p.src).cloned().unwrap_or_else(|| p.src.clone()) })))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "region": table.region, "origin": table.origin, "date": table.date, "prices": rows }))
                .unwrap_or_default()
        );
    } else {
        print!("{}", crate::prices::render(&table, &Catalogue::embedded()));
    }
    Ok(EXIT_OK)
}

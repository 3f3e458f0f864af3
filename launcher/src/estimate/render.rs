//! The estimate as the table `oxtune estimate` prints.

use super::{Estimate, Row};

impl Row {
    /// `ml.g5.12xlarge`, or `2×ml.g5.12xlarge` for several instances.
    pub fn label(&self) -> String {
        match self.instance_count {
            0 | 1 => self.instance_type.clone(),
            n => format!("{n}×{}", self.instance_type),
        }
    }
}

/// The human table.
pub fn render(e: &Estimate) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{} · {} · {:.2}B params ({:.2}B in decoder linears) · LoRA {:.1}M params\n",
        e.model,
        e.method.name(),
        e.facts.params as f64 / 1e9,
        e.facts.linear_params as f64 / 1e9,
        e.facts.lora_params as f64 / 1e6
    ));
    out.push_str(&format!(
        "data: {} tokens/epoch ({}); {:.3e} tokens trained in ~{} optimizer steps; {:.1} GFLOP/token (mean seq {:.0})\n",
        e.tokens_per_epoch,
        e.tokens_source,
        e.tokens_total,
        e.steps,
        e.flops_per_token / 1e9,
        e.seq_for_attention
    ));
    out.push_str(&format!("prices: {} · region {} · calibration: {}\n\n", e.prices_origin, e.region, e.calibration));
    let mut rows = vec![vec![
        "instance".to_string(),
        "GPU".into(),
        "mem need/usable GiB".into(),
        "no-ckpt/ckpt".into(),
        "fits".into(),
        "time".into(),
        "$/h".into(),
        "on-demand".into(),
        "spot (range)".into(),
        "".into(),
    ]];
    for r in &e.rows {
        let need = if r.checkpointing { r.memory.total_checkpointed_gib } else { r.memory.total_gib };
        let gpu = if r.gpus > 1 { format!("{}×{}", r.gpus, r.gpu) } else { r.gpu.clone() };
        let fits = if !r.supported {
            "unsupported".to_string()
        } else if r.fits {
            if r.checkpointing {
                "yes (ckpt)".into()
            } else {
                "yes".into()
            }
        } else {
            "NO".into()
        };
        let (time, od, spot) = if r.supported {
            (
                crate::format::fmt_duration(r.billable_seconds),
                r.cost_on_demand.map(crate::format::fmt_usd).unwrap_or_else(|| "n/a".into()),
                match (r.cost_spot, r.cost_spot_low, r.cost_spot_high) {
                    (Some(s), Some(lo), Some(hi)) => format!(
                        "{} ({}–{})",
                        crate::format::fmt_usd(s),
                        crate::format::fmt_usd(lo),
                        crate::format::fmt_usd(hi)
                    ),
                    _ => "n/a".into(),
                },
            )
        } else {
            ("—".into(), "—".into(), "—".into())
        };
        let rate = match r.usd_per_hour {
            Some(p) => format!("{}{:.3}", if r.price_is_estimate { "~" } else { "" }, p),
            None => "n/a".into(),
        };
        rows.push(vec![
            r.label(),
            gpu,
            format!("{:.1}/{:.1}", need, r.memory.available_gib),
            format!("{:.1}/{:.1}", r.memory.total_gib, r.memory.total_checkpointed_gib),
            fits,
            time,
            rate,
            od,
            spot,
            if r.cheapest { "◀ cheapest that fits".into() } else { String::new() },
        ]);
    }
    out.push_str(&crate::format::table(&rows));
    if let Some(best) = e.rows.iter().find(|r| r.cheapest) {
        let m = &best.memory;
        out.push_str(&format!(
            "\ncheapest: {} — weights {:.2} GiB + adapter/optimizer {:.2} GiB + activations {:.2} GiB{} + CUDA {:.2} GiB; efficiency {:.2} ({}{})\n",
            best.label(),
            m.weights_gib,
            m.adapter_optimizer_gib,
            if best.checkpointing { m.activations_checkpointed_gib } else { m.activations_gib },
            if best.checkpointing { " (checkpointed)" } else { "" },
            m.overhead_gib,
            best.efficiency,
            if best.efficiency_measured { "measured: " } else { "" },
            best.efficiency_source
        ));
    } else {
        out.push_str(
            "\nno catalogued instance fits this job; see the reasons with --json or pick a smaller batch / qlora\n",
        );
    }
    for r in e.rows.iter().filter(|r| r.supported && !r.fits) {
        out.push_str(&format!("  {}: {}\n", r.label(), r.reason));
    }
    for r in e.rows.iter().filter(|r| !r.supported) {
        out.push_str(&format!("  {}: {}\n", r.label(), r.reason));
    }
    out.push_str(&format!(
        "time includes billable start-up/upload; provisioning (~{}) is not billed. Spot prices are a savings range, not a rate card.\n",
        crate::format::fmt_duration(e.provisioning_seconds)
    ));
    for n in &e.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

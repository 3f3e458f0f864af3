//! Small helpers shared by the commands: durations, sizes, money, tables, secret redaction.

use std::fmt::Write as _;
use std::time::Duration;

/// Parse `90`, `90s`, `15m`, `6h`, `2d`, `1h30m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if secs < 0.0 || !secs.is_finite() {
            return Err(format!("`{text}` is negative or not finite"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    let mut total = 0.0f64;
    let mut num = String::new();
    let mut saw_unit = false;
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 6h or 2d"))?;
        let factor = match unit.as_str() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            _ => return Err(format!("unknown unit `{unit}` in `{text}` (use ms, s, m, h or d)")),
        };
        total += value * factor;
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        return Err(format!("`{text}` is not a duration like 90s, 15m, 6h or 2d"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// `3h 05m`, `12m 30s`, `45s`.
pub fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "—".into();
    }
    let s = secs.max(0.0).round() as u64;
    let (d, h, m, sec) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{sec}s")
    }
}

pub fn fmt_usd(x: f64) -> String {
    if !x.is_finite() {
        "—".into()
    } else if x < 10.0 {
        format!("${x:.2}")
    } else {
        format!("${x:.0}")
    }
}

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// A plain text table with aligned columns; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                let _ = write!(line, "{c}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if n == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            out.push_str(&"─".repeat(total.min(160)));
            out.push('\n');
        }
    }
    out
}

/// Environment variable names whose values are secrets: never printed.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "CREDENTIAL"]
        .iter()
        .any(|s| n.contains(s))
}

pub const REDACTED: &str = "***REDACTED***";

/// Replaces known secret values (and anything shaped like a Hugging Face token) in text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Secrets from this process's environment (HF_TOKEN and anything named like a secret).
    pub fn from_env() -> Self {
        let mut r = Redactor::default();
        for (k, v) in std::env::vars() {
            if is_secret_name(&k) {
                r.add(&v);
            }
        }
        r
    }

    pub fn add(&mut self, secret: &str) {
        // Short values ("1", "true") would redact half the log; tokens are long.
        if secret.len() >= 8 && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        redact_hf_tokens(&out)
    }
}

/// `hf_` followed by 30+ alphanumerics is a Hugging Face access token.
fn redact_hf_tokens(text: &str) -> String {
    if !text.contains("hf_") {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("hf_") && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let run = bytes[i + 3..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
            if run >= 30 {
                out.push_str("hf_");
                out.push_str(REDACTED);
                i += 3 + run;
                continue;
            }
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Seconds since the Unix epoch, now.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// UTC `YYYYMMDD-HHMMSS` for job-name suffixes.
pub fn utc_stamp(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(epoch);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc_datetime(epoch: f64) -> String {
    let (y, mo, d, h, mi, s) = civil(epoch.max(0.0) as u64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// Days-from-civil inverse (Howard Hinnant's algorithm) for UTC timestamps without a date crate.
fn civil(epoch: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, (secs / 3600) as u32, ((secs % 3600) / 60) as u32, (secs % 60) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(fmt_duration(3725.0), "1h 02m");
    }

    #[test]
    fn redaction() {
        let mut r = Redactor::default();
        r.add("supersecretvalue123");
        let tok = format!("hf_{}", "a1B2".repeat(9));
        let out = r.redact(&format!("token=supersecretvalue123 other={tok} hf_short"));
        assert!(!out.contains("supersecretvalue123") && !out.contains(&tok), "{out}");
        assert!(out.contains("hf_short"));
        assert!(is_secret_name("HF_TOKEN") && !is_secret_name("HF_HUB_OFFLINE"));
    }

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_700_000_000), "20231114-221320");
        assert_eq!(utc_datetime(951_782_400.0), "2000-02-29 00:00:00Z");
    }
}

//! Secrets never printed: which variable names hold secrets, and redaction of their values (and of
//! anything shaped like a Hugging Face token) in text the launcher shows or writes.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

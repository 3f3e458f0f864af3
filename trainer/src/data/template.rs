//! Chat templates rendered with minijinja, set up to match transformers' Jinja2
//! environment (formats.md §4): pycompat methods, trim/lstrip blocks,
//! `raise_exception`, `strftime_now`, a Python `json.dumps`-style `tojson`, CRLF
//! normalisation, loop controls, and the `{% generation %}` extension rewritten to
//! sentinel characters so assistant spans can be recovered.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use super::Message;

/// Marks the start / end of a `{% generation %}` block in the rendered text.
const GEN_START: char = '\u{1}';
const GEN_END: char = '\u{2}';
const GEN_START_VAR: &str = "__oxtune_generation_start";
const GEN_END_VAR: &str = "__oxtune_generation_end";
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    /// The template had `{% generation %}` blocks (assistant spans come from them).
    pub has_generation: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("has_generation", &self.has_generation).finish()
    }
}

/// Variables passed to every render besides `messages` and `add_generation_prompt`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

/// A rendered chat with the byte spans of its `{% generation %}` blocks.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub text: String,
    pub spans: Vec<(usize, usize)>,
}

fn generation_regexes() -> &'static (regex::Regex, regex::Regex) {
    static RE: OnceLock<(regex::Regex, regex::Regex)> = OnceLock::new();
    RE.get_or_init(|| {
        (
            regex::Regex::new(r"\{%([-+]?)\s*generation\s*([-+]?)%\}").expect("valid regex"),
            regex::Regex::new(r"\{%([-+]?)\s*endgeneration\s*([-+]?)%\}").expect("valid regex"),
        )
    })
}

/// Rewrite `{% generation %}` / `{% endgeneration %}` to tags that print the
/// sentinels, keeping the whitespace-control flags on the outer sides.
fn rewrite_generation(source: &str) -> (String, bool) {
    let (start, end) = generation_regexes();
    if !start.is_match(source) {
        return (source.to_string(), false);
    }
    let s = start.replace_all(source, |c: &regex::Captures| {
        format!("{{%{} if true %}}{{{{ {GEN_START_VAR} }}}}{{% endif {}%}}", &c[1], &c[2])
    });
    let s = end.replace_all(&s, |c: &regex::Captures| {
        format!("{{%{} if true %}}{{{{ {GEN_END_VAR} }}}}{{% endif {}%}}", &c[1], &c[2])
    });
    (s.into_owned(), true)
}

impl ChatTemplate {
    pub fn compile(source: &str) -> Result<ChatTemplate, String> {
        // Jinja2 normalises newlines in the template source; minijinja does not.
        let source = source.replace("\r\n", "\n").replace('\r', "\n");
        let (source, has_generation) = rewrite_generation(&source);
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        // Jinja2: `none is iterable` is false (minijinja iterates none as empty); Nemotron templates test `tools is iterable`.
        env.add_test("iterable", |v: &Value| !v.is_none() && v.try_iter().is_ok());
        env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| format!("the template does not compile: {e}"))?;
        Ok(ChatTemplate { env, has_generation })
    }

    /// Render `messages`; generation sentinels are removed from the text and returned as spans.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tokens: &SpecialTokens,
    ) -> Result<Rendered, String> {
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| e.to_string())?;
        // Sentinel characters inside the data would corrupt the spans.
        let clean: Vec<Message>;
        let messages = if self.has_generation && messages.iter().any(|m| m.content.contains([GEN_START, GEN_END])) {
            clean = messages
                .iter()
                .map(|m| Message { role: m.role.clone(), content: m.content.replace([GEN_START, GEN_END], "") })
                .collect();
            &clean[..]
        } else {
            messages
        };
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => tokens.bos_token.clone().unwrap_or_default(),
            eos_token => tokens.eos_token.clone().unwrap_or_default(),
            pad_token => tokens.pad_token.clone(),
            unk_token => tokens.unk_token.clone(),
            tools => Value::from(()),
            documents => Value::from(()),
            __oxtune_generation_start => GEN_START.to_string(),
            __oxtune_generation_end => GEN_END.to_string(),
        };
        let raw = tmpl.render(ctx).map_err(|e| render_error(&e))?;
        if !self.has_generation {
            return Ok(Rendered { text: raw, spans: vec![] });
        }
        let mut text = String::with_capacity(raw.len());
        let mut spans = Vec::new();
        let mut open: Option<usize> = None;
        for ch in raw.chars() {
            match ch {
                GEN_START => open = Some(open.unwrap_or(text.len())),
                GEN_END => {
                    if let Some(s) = open.take() {
                        if text.len() > s {
                            spans.push((s, text.len()));
                        }
                    }
                }
                c => text.push(c),
            }
        }
        if let Some(s) = open {
            if text.len() > s {
                spans.push((s, text.len()));
            }
        }
        Ok(Rendered { text, spans })
    }
}

fn render_error(e: &Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) if d.starts_with("raise_exception: ") => {
            format!("the template raised: {}", &d["raise_exception: ".len()..])
        }
        _ => format!("rendering failed: {e}"),
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {msg}")))
}

/// `strftime_now(fmt)` in UTC (transformers uses local time; containers run in UTC).
fn strftime_now(fmt: String) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(secs, &fmt)
}

/// A subset of C strftime for a UTC timestamp: %Y %y %m %d %e %H %I %M %S %p %b %B %h %a %A %j %w %u %F %T %D %R %Z %z %n %t %%.
pub(crate) fn strftime(unix_secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7); // 1970-01-01 was a Thursday; 0 = Monday
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
        match d {
            'Y' => out.push_str(&year.to_string()),
            'y' => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            'm' => out.push_str(&format!("{month:02}")),
            'd' => out.push_str(&format!("{day:02}")),
            'e' => out.push_str(&format!("{day:>2}")),
            'H' => out.push_str(&format!("{hour:02}")),
            'I' => out.push_str(&format!("{hour12:02}")),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'b' | 'h' => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            'B' => out.push_str(MONTHS[(month - 1) as usize]),
            'a' => out.push_str(&DAYS[weekday as usize][..3]),
            'A' => out.push_str(DAYS[weekday as usize]),
            'j' => out.push_str(&format!("{yday:03}")),
            'w' => out.push_str(&((weekday + 1) % 7).to_string()),
            'u' => out.push_str(&(weekday + 1).to_string()),
            'F' => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            'T' => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            'R' => out.push_str(&format!("{hour:02}:{minute:02}")),
            'D' => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, i.e. no HTML escaping, Python separators and
/// float formatting. Positional arguments follow that Python signature.
fn tojson(value: &Value, positional: &[Value], kwargs: Kwargs) -> Result<Value, Error> {
    let arg = |i: usize, name: &str| -> Result<Option<Value>, Error> {
        if let Some(v) = positional.get(i) {
            return Ok(Some(v.clone()));
        }
        kwargs.get::<Option<Value>>(name)
    };
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let separators = match arg(2, "separators")? {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<String> = v
                .try_iter()
                .map_err(|_| Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair of strings"))?
                .map(|s| s.as_str().map(str::to_string).unwrap_or_else(|| s.to_string()))
                .collect();
            if parts.len() != 2 {
                return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair of strings"));
            }
            Some((parts[0].clone(), parts[1].clone()))
        }
        _ => None,
    };
    let sort_keys = arg(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = separators.unwrap_or_else(|| {
        if indent.is_some() {
            (",".into(), ": ".into())
        } else {
            (", ".into(), ": ".into())
        }
    });
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialize: {e}")))?;
    let mut out = String::new();
    let opts = JsonOpts { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    write_json(&mut out, &json, &opts, 0);
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn newline_indent(out: &mut String, opts: &JsonOpts, level: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &serde_json::Value, opts: &JsonOpts, level: usize) {
    use serde_json::Value as J;
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        J::String(s) => write_json_str(out, s, opts.ensure_ascii),
        J::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_json(out, item, opts, level + 1);
            }
            newline_indent(out, opts, level);
            out.push(']');
        }
        J::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_json_str(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, val, opts, level + 1);
            }
            newline_indent(out, opts, level);
            out.push('}');
        }
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside [1e-4, 1e16).
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{sign}{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                format!("{sign}{}.{}", &digits[..int_len as usize], &digits[int_len as usize..])
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (12345678.0, "12345678.0"),
        ] {
            assert_eq!(python_float(f), s, "{f}");
        }
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 13:25:09 UTC, a Friday.
        let t = 1_722_000_309;
        assert_eq!(strftime(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(strftime(t, "%A %B %j %H:%M:%S %p %I %%"), "Friday July 208 13:25:09 PM 01 %");
        assert_eq!(strftime(0, "%F %T %a"), "1970-01-01 00:00:00 Thu");
        assert_eq!(strftime(951_782_400, "%F %j"), "2000-02-29 060");
    }

    #[test]
    fn generation_rewrite_keeps_whitespace_flags() {
        let (s, has) = rewrite_generation("a{%- generation %}b{% endgeneration -%}c");
        assert!(has);
        assert_eq!(
            s,
            format!("a{{%- if true %}}{{{{ {GEN_START_VAR} }}}}{{% endif %}}b{{% if true %}}{{{{ {GEN_END_VAR} }}}}{{% endif -%}}c")
        );
        assert!(!rewrite_generation("{% if x %}generation{% endif %}").1);
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::compile(
            "{{ messages[0].content | tojson }}|{{ {'a': [1, 2.5, 1e-05], 'b': none} | tojson }}|{{ {'b': 1, 'a': {}} | tojson(indent=2, sort_keys=true) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
        )
        .unwrap();
        let r = t.render(&[Message::new("user", "<a & 'b'>\n\"q\"")], false, &SpecialTokens::default()).unwrap();
        assert_eq!(
            r.text,
            "\"<a & 'b'>\\n\\\"q\\\"\"|{\"a\": [1, 2.5, 1e-05], \"b\": null}|{\n  \"a\": {},\n  \"b\": 1\n}|\"\\u00e9\""
        );
    }

    #[test]
    fn raise_exception_message_reaches_the_error() {
        let t = ChatTemplate::compile("{{ raise_exception('roles must alternate') }}").unwrap();
        let e = t.render(&[], false, &SpecialTokens::default()).unwrap_err();
        assert!(e.contains("roles must alternate"), "{e}");
    }

    #[test]
    fn pycompat_methods_and_crlf() {
        let t = ChatTemplate::compile(
            "{% for m in messages %}\r\n{{ m.content.strip().upper() }}|{{ m.get('role') }}\r\n{% endfor %}",
        )
        .unwrap();
        let r = t.render(&[Message::new("user", "  hi ")], false, &SpecialTokens::default()).unwrap();
        assert_eq!(r.text, "HI|user\n");
    }
}

//! The build step of the host emulation of CUDA: turns `kernels/cuda/*.cu` into host objects.
//!
//! Used by `kernels/build.rs` (every build) and by the emulator's mutation tests (a mutated copy
//! of one kernel file, linked into a shared library beside the unchanged objects). std only.
//!
//! Per source file: the `__shared__` declarations are rewritten into arena lookups of the
//! runtime (same line, so `__LINE__` and messages stay true), the `extern "C" __global__` entry
//! points are found with their `__launch_bounds__` and parameter names, and a wrapper appends a
//! registration function. Kernel code is compiled with `-fsanitize=thread` so that every memory
//! access calls the runtime's hooks; the runtime itself is not.

#![allow(dead_code)] // build.rs and the tests each use part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// One `extern "C" __global__` entry point.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryPoint {
    pub name: String,
    /// The first `__launch_bounds__` argument (a C++ expression), if any.
    pub max_threads: Option<String>,
    /// Parameter names, in order.
    pub params: Vec<String>,
}

/// Byte ranges of `src` that are code (not comments, strings or character literals).
fn code_mask(src: &str) -> Vec<bool> {
    let b = src.as_bytes();
    let mut mask = vec![true; b.len()];
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else if b[i] == b'"' || b[i] == b'\'' {
            let q = b[i];
            i += 1;
            while i < b.len() && b[i] != q {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
        } else {
            i += 1;
            continue;
        }
        mask[start..i].iter_mut().for_each(|m| *m = false);
    }
    mask
}

/// Positions of `word` as a whole identifier in code.
fn find_word(src: &str, word: &str, mask: &[bool]) -> Vec<usize> {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = src.as_bytes();
    src.match_indices(word)
        .map(|(i, _)| i)
        .filter(|&i| mask[i])
        .filter(|&i| (i == 0 || !is_ident(b[i - 1])) && b.get(i + word.len()).is_none_or(|&c| !is_ident(c)))
        .collect()
}

/// Splits at commas that are not inside (), [], <> or {}.
fn split_top(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' | '[' | '<' | '{' => depth += 1,
            ')' | ']' | '>' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut().expect("non-empty").push(c);
    }
    out.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

/// `name[dims]` → (name, "[dims]").
fn declarator(d: &str) -> Option<(String, String)> {
    let d = d.trim();
    let name_end = d.find('[').unwrap_or(d.len());
    let name = d[..name_end].trim();
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| (name.to_string(), d[name_end..].chars().filter(|c| !c.is_whitespace()).collect()))
}

/// Rewrites the `__shared__` declarations of one file. `id_base` keeps ids unique across the
/// files of one translation unit.
pub fn rewrite_shared(src: &str, id_base: u32) -> Result<String, String> {
    let mask = code_mask(src);
    let mut out = String::with_capacity(src.len() + 256);
    let mut last = 0;
    for (n, at) in find_word(src, "__shared__", &mask).into_iter().enumerate() {
        let line = src[..at].matches('\n').count() + 1;
        let end = src[at..].find(';').map(|e| at + e).ok_or(format!("line {line}: `__shared__` without `;`"))?;
        let decl = src[at + "__shared__".len()..end].trim();
        let before = src[last..at].trim_end();
        let is_extern = before.ends_with("extern");
        let start = if is_extern { last + before.len() - "extern".len() } else { at };
        let id = id_base + n as u32;
        let replacement = if is_extern {
            // extern __shared__ T name[];
            let (ty, d) = decl.rsplit_once(char::is_whitespace).ok_or(format!("line {line}: cannot read `{decl}`"))?;
            let (name, dims) = declarator(d).ok_or(format!("line {line}: cannot read `{decl}`"))?;
            if dims != "[]" {
                return Err(format!("line {line}: dynamic shared `{decl}` must be an unsized array"));
            }
            format!("{ty}* const {name} = static_cast<{ty}*>(::oxemu::shared_dynamic(alignof({ty}) < 16 ? 16 : alignof({ty})));")
        } else {
            let parts = split_top(decl);
            let first = parts.first().ok_or(format!("line {line}: empty `__shared__` declaration"))?;
            // The type is everything before the first declarator's name (`T name[dims]`).
            let head = first.find('[').map_or(first.as_str(), |i| &first[..i]).trim_end();
            let name_len = head.chars().rev().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').count();
            let name_start = head.len() - name_len;
            if name_len == 0 || head[..name_start].trim().is_empty() {
                return Err(format!("line {line}: cannot read `__shared__ {decl}`"));
            }
            let ty = first[..name_start].trim();
            let mut text = String::new();
            for (k, part) in parts.iter().enumerate() {
                let d = if k == 0 { &first[name_start..] } else { part.as_str() };
                let (name, dims) = declarator(d).ok_or(format!("line {line}: cannot read `__shared__ {decl}`"))?;
                if k > 0 {
                    text.push(' ');
                }
                text.push_str(&format!(
                    "auto& {name} = ::oxemu::shared_var<{ty}{dims}, {}>(\"{name}\");",
                    id * 16 + k as u32
                ));
            }
            text
        };
        out.push_str(&src[last..start]);
        out.push_str(&replacement);
        last = end + 1;
    }
    out.push_str(&src[last..]);
    Ok(out)
}

/// Balanced-parenthesis text starting at `open` (which must be `(`): (inner, index after `)`).
fn parens(src: &str, open: usize) -> Option<(&str, usize)> {
    let mut depth = 0;
    for (i, c) in src[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&src[open + 1..open + i], open + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// The `extern "C" __global__` entry points of one file.
pub fn entry_points(src: &str) -> Result<Vec<EntryPoint>, String> {
    let mask = code_mask(src);
    let mut out = Vec::new();
    for at in find_word(src, "__global__", &mask) {
        if !src[..at].trim_end().ends_with("extern \"C\"") {
            continue; // a template or internal __global__ (none today) is not launchable by name
        }
        let line = src[..at].matches('\n').count() + 1;
        let mut rest = at + "__global__".len();
        let mut max_threads = None;
        let name;
        loop {
            let s = &src[rest..];
            let skip = s.len() - s.trim_start().len();
            rest += skip;
            let word_len = src[rest..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(0);
            let word = &src[rest..rest + word_len];
            if word.is_empty() {
                return Err(format!("line {line}: cannot read the entry point after `__global__`"));
            }
            rest += word_len;
            let s = &src[rest..];
            let next = rest + (s.len() - s.trim_start().len());
            if word == "__launch_bounds__" {
                let (inner, after) = parens(src, next).ok_or(format!("line {line}: unbalanced __launch_bounds__"))?;
                max_threads = split_top(inner).into_iter().next();
                rest = after;
            } else if src[next..].starts_with('(') && word != "void" {
                name = word.to_string();
                rest = next;
                break;
            }
        }
        let (inner, _) = parens(src, rest).ok_or(format!("line {line}: unbalanced parameter list of {name}"))?;
        let params = split_top(inner)
            .iter()
            .map(|p| {
                p.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .ok_or(format!("line {line}: cannot name parameter `{p}` of {name}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(EntryPoint { name, max_threads, params });
    }
    Ok(out)
}

/// File-scope `constexpr int NAME = EXPR;` of a `.cu` source, evaluated (integers, names defined
/// above, `+ - * /` and parentheses): the numbers its launch contract shares with the Rust glue.
pub fn int_constants(src: &str) -> Result<Vec<(String, i64)>, String> {
    let mut out: Vec<(String, i64)> = Vec::new();
    // Braces of functions, structs and initialisers; a namespace is still file scope.
    let (mut depth, mut namespaces) = (0i32, 0i32);
    for (n, raw) in src.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or("");
        if line.trim_start().starts_with("namespace") && line.trim_end().ends_with('{') {
            namespaces += 1;
            continue;
        }
        if depth == 0 {
            if let Some(rest) = line.trim_start().strip_prefix("constexpr int ") {
                let (name, expr) = rest.split_once('=').ok_or(format!("line {}: constexpr without a value", n + 1))?;
                let expr = expr.trim().strip_suffix(';').ok_or(format!("line {}: one constexpr per line", n + 1))?;
                let value = eval_int(expr, &out).map_err(|e| format!("line {}: {e}", n + 1))?;
                out.push((name.trim().to_string(), value));
            }
        }
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 && namespaces > 0 => namespaces -= 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// An integer expression over earlier constants: `a * (b + 2) / c`.
fn eval_int(expr: &str, known: &[(String, i64)]) -> Result<i64, String> {
    fn tokens(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in s.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                if !c.is_whitespace() {
                    out.push(c.to_string());
                }
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }
    struct P<'a> {
        t: Vec<String>,
        i: usize,
        known: &'a [(String, i64)],
    }
    impl P<'_> {
        fn sum(&mut self) -> Result<i64, String> {
            let mut v = self.product()?;
            while let Some(op) = self.t.get(self.i).filter(|t| *t == "+" || *t == "-").cloned() {
                self.i += 1;
                let r = self.product()?;
                v = if op == "+" { v + r } else { v - r };
            }
            Ok(v)
        }
        fn product(&mut self) -> Result<i64, String> {
            let mut v = self.atom()?;
            while let Some(op) = self.t.get(self.i).filter(|t| *t == "*" || *t == "/").cloned() {
                self.i += 1;
                let r = self.atom()?;
                v = if op == "*" { v * r } else { v.checked_div(r).ok_or("division by zero")? };
            }
            Ok(v)
        }
        fn atom(&mut self) -> Result<i64, String> {
            let t = self.t.get(self.i).cloned().ok_or("unexpected end")?;
            self.i += 1;
            if t == "(" {
                let v = self.sum()?;
                if self.t.get(self.i).map(String::as_str) != Some(")") {
                    return Err("missing )".into());
                }
                self.i += 1;
                return Ok(v);
            }
            if let Some(hex) = t.strip_prefix("0x") {
                return i64::from_str_radix(hex, 16).map_err(|e| format!("{t}: {e}"));
            }
            if let Ok(v) = t.parse() {
                return Ok(v);
            }
            self.known.iter().find(|(n, _)| *n == t).map(|(_, v)| *v).ok_or(format!("unknown name `{t}`"))
        }
    }
    let mut p = P { t: tokens(expr), i: 0, known };
    let v = p.sum().map_err(|e| format!("`{expr}`: {e}"))?;
    if p.i != p.t.len() {
        return Err(format!("`{expr}`: cannot read past `{}`", p.t[p.i]));
    }
    Ok(v)
}

/// `kFwdBQ` → `K_FWD_BQ`, `oxt_rms_norm_fwd_bf16` → `OXT_RMS_NORM_FWD_BF16`.
fn rust_const_name(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let boundary = i > 0
            && c.is_ascii_uppercase()
            && (chars[i - 1].is_ascii_lowercase() || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()))
            && chars[i - 1] != '_';
        if boundary {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The Rust side of every launch contract, generated from the `.cu` sources so that kernel names,
/// block sizes and shared tile sizes live in one place (the `.cu` file): per module, a `Kernel`
/// constant per entry point (its `__launch_bounds__` threads, required) and its file-scope
/// `constexpr int`s as `usize` constants. Included by `kernels/src/launch/mod.rs`.
pub fn launch_table(cuda_dir: &Path) -> Result<String, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cuda_dir)
        .map_err(|e| format!("{}: {e}", cuda_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    let mut s = String::from("// Generated by kernels/emu/prepare.rs (launch_table) from kernels/cuda/*.cu.\n");
    for f in &files {
        let module = f.file_stem().and_then(|s| s.to_str()).ok_or("file stem")?.to_string();
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let consts = int_constants(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        s.push_str(&format!(
            "\n/// `{module}.cu`: its entry points and launch constants.\n#[allow(dead_code)]\npub(crate) mod {module} {{\n    use super::{{Kernel, {}}};\n",
            module.to_uppercase()
        ));
        for (name, value) in &consts {
            s.push_str(&format!("    pub(crate) const {}: usize = {value};\n", rust_const_name(name)));
        }
        for e in entry_points(&text).map_err(|e| format!("{}: {e}", f.display()))? {
            let bound = e.max_threads.as_deref().ok_or(format!(
                "{}: {} has no __launch_bounds__: give it the block size of its launch contract",
                f.display(),
                e.name
            ))?;
            let threads = eval_int(bound, &consts).map_err(|err| format!("{}: {}: {err}", f.display(), e.name))?;
            s.push_str(&format!(
                "    pub(crate) const {}: Kernel = Kernel {{ module: &{}, name: \"{}\", threads: {threads} }};\n",
                rust_const_name(&e.name),
                module.to_uppercase(),
                e.name
            ));
        }
        s.push_str("}\n");
    }
    Ok(s)
}

/// A stable id base per file name (FNV-1a), so that ids of a .cu and its headers never meet.
fn id_base(name: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in name.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    (h % 100_000) * 1000
}

/// The registration function of one module, appended to its source.
pub fn module_wrapper(module: &str, rewritten: &Path, entries: &[EntryPoint]) -> String {
    let mut s = format!(
        "// Generated by kernels/emu/prepare.rs: {module}.cu for the host emulation.\n#include \"{}\"\n#include \"oxemu_register.h\"\n\nvoid oxemu_module_{module}(::oxemu::Registry& r) {{\n",
        rewritten.display()
    );
    for e in entries {
        s.push_str(&format!(
            "    ::oxemu::add_kernel(r, \"{0}\", {0}, {1}, \"{2}\");\n",
            e.name,
            e.max_threads.as_deref().map(|m| format!("(int)({m})")).unwrap_or_else(|| "0".into()),
            e.params.join(", ")
        ));
    }
    s.push_str("}\n");
    s
}

/// The function the runtime calls to register every module.
pub fn registry(modules: &[String]) -> String {
    let mut s = String::from("// Generated by kernels/emu/prepare.rs.\n#include \"oxemu_register.h\"\n\n");
    for m in modules {
        s.push_str(&format!("void oxemu_module_{m}(::oxemu::Registry& r);\n"));
    }
    s.push_str("\nvoid oxemu_register_all(::oxemu::Registry& r) {\n");
    for m in modules {
        s.push_str(&format!("    oxemu_module_{m}(r);\n"));
    }
    s.push_str("}\n");
    s
}

/// Where the emulator's sources live and where its build goes.
pub struct Paths {
    /// `kernels/emu` (the shim, runtime and this file).
    pub emu: PathBuf,
    /// Output folder for rewritten sources and objects.
    pub out: PathBuf,
}

impl Paths {
    fn compiler() -> String {
        std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "g++".into())
    }

    /// The compile command for one translation unit. Float semantics stay the GPU's: no
    /// contraction into FMAs, no fast-math.
    pub fn compile(&self, src: &Path, obj: &Path, kernel_code: bool) -> Command {
        let mut c = Command::new(Self::compiler());
        c.args([
            "-std=c++20",
            "-O2",
            "-fPIC",
            "-g0",
            "-ffp-contract=off",
            "-fno-fast-math",
            "-fno-strict-aliasing",
            "-fvisibility=hidden",
        ])
        .args(["-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Werror"])
        .arg("-I")
        .arg(self.emu.join("include"))
        .arg("-I")
        .arg(&self.emu);
        if kernel_code {
            c.args(["-fsanitize=thread", "-fno-exceptions", "-include"]).arg(self.emu.join("oxemu.h"));
        }
        c.arg("-c").arg(src).arg("-o").arg(obj);
        c
    }

    /// Rewrites every `.cu`/`.cuh` of `cuda_dir` into `out/src` and writes each module's wrapper
    /// into `out`; returns the module names (file stems of the .cu files), sorted.
    pub fn prepare_sources(&self, cuda_dir: &Path) -> Result<Vec<String>, String> {
        let src_out = self.out.join("src");
        std::fs::create_dir_all(&src_out).map_err(|e| format!("{}: {e}", src_out.display()))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(cuda_dir)
            .map_err(|e| format!("{}: {e}", cuda_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
            .collect();
        files.sort();
        let mut modules = Vec::new();
        for f in &files {
            let name = f.file_name().and_then(|n| n.to_str()).ok_or("file name")?.to_string();
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let rewritten = rewrite_shared(&text, id_base(&name)).map_err(|e| format!("{}: {e}", f.display()))?;
            let dst = src_out.join(&name);
            std::fs::write(&dst, rewritten).map_err(|e| format!("{}: {e}", dst.display()))?;
            if f.extension().is_some_and(|x| x == "cu") {
                let module = f.file_stem().and_then(|s| s.to_str()).ok_or("file stem")?.to_string();
                let entries = entry_points(&text).map_err(|e| format!("{}: {e}", f.display()))?;
                let wrapper = self.out.join(format!("{module}.cpp"));
                std::fs::write(&wrapper, module_wrapper(&module, &dst, &entries))
                    .map_err(|e| format!("{}: {e}", wrapper.display()))?;
                modules.push(module);
            }
        }
        Ok(modules)
    }

    /// Runs commands two at a time (the compiles are independent).
    pub fn run_all(cmds: Vec<(String, Command)>) -> Result<(), String> {
        let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
        let mut pending = cmds.into_iter();
        loop {
            let batch: Vec<_> = pending.by_ref().take(jobs).collect();
            if batch.is_empty() {
                return Ok(());
            }
            let mut children = Vec::new();
            for (what, mut cmd) in batch {
                let child = cmd.stderr(std::process::Stdio::piped()).spawn().map_err(|e| {
                    format!("cannot run {:?} for {what} ({e}): the emulator needs g++", cmd.get_program())
                })?;
                children.push((what, child));
            }
            for (what, child) in children {
                let out = child.wait_with_output().map_err(|e| format!("{what}: {e}"))?;
                if !out.status.success() {
                    return Err(format!("compiling {what} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
                }
            }
        }
    }

    /// Builds every object: runtime, registry and one per module. Returns the object paths.
    pub fn build_objects(&self, cuda_dir: &Path) -> Result<Vec<PathBuf>, String> {
        let modules = self.prepare_sources(cuda_dir)?;
        let reg = self.out.join("registry.cpp");
        std::fs::write(&reg, registry(&modules)).map_err(|e| format!("{}: {e}", reg.display()))?;
        let mut cmds = Vec::new();
        let mut objs = Vec::new();
        for m in &modules {
            let obj = self.out.join(format!("{m}.o"));
            cmds.push((format!("{m}.cu"), self.compile(&self.out.join(format!("{m}.cpp")), &obj, true)));
            objs.push(obj);
        }
        for (name, src) in [("runtime", self.emu.join("runtime.cpp")), ("registry", reg)] {
            let obj = self.out.join(format!("{name}.o"));
            cmds.push((format!("{name}.cpp"), self.compile(&src, &obj, false)));
            objs.push(obj);
        }
        Self::run_all(cmds)?;
        Ok(objs)
    }
}

/// Links objects into a shared library (the mutation tests load one with dlopen).
pub fn link_shared(objs: &[PathBuf], out: &Path) -> Result<(), String> {
    let mut c = Command::new(Paths::compiler());
    c.args(["-shared", "-o"]).arg(out).args(objs).arg("-lpthread");
    let o = c.output().map_err(|e| format!("cannot run {:?}: {e}", c.get_program()))?;
    if !o.status.success() {
        return Err(format!("linking {} failed:\n{}", out.display(), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

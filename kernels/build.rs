//! Always: compiles every `cuda/*.cu` for the host emulation of CUDA with the system C++
//! compiler (`emu/prepare.rs`; g++, no CUDA toolkit) into a static library linked into the crate.
//!
//! With feature `cuda`: also compiles every `cuda/*.cu` to PTX with nvcc and validates the PTX with
//! ptxas for each target GPU family, so CUDA code that does not build fails `cargo check`.
//!
//! PTX for compute_80 is embedded (any 8.0+ GPU — A10G, L4, L40S, A100, H100 — JIT-compiles it at
//! load); ptxas checks it for sm_80 and sm_90. Without the feature nothing happens, so the default
//! build needs no CUDA toolkit. The toolkit comes from `kernels/scripts/cuda-toolchain.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "emu/prepare.rs"]
mod prepare;

/// Virtual architecture the embedded PTX targets.
const PTX_ARCH: &str = "compute_80";
/// Real architectures the PTX is validated for.
const CHECK_ARCHS: &[&str] = &["sm_80", "sm_90"];

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CXX");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The launch contracts' names and sizes, for the Rust glue (kernels/src/launch/mod.rs).
    let table = prepare::launch_table(Path::new("cuda")).unwrap_or_else(|e| panic!("launch table: {e}"));
    std::fs::write(out.join("launch_table.rs"), table).expect("write OUT_DIR/launch_table.rs");
    build_emulator(&out);
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let mut sources: Vec<PathBuf> = std::fs::read_dir("cuda")
        .expect("kernels/cuda exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let ptx = out.join(src.with_extension("ptx").file_name().expect("file name"));
        run(
            Command::new(tool("nvcc"))
                .args(["-ptx", "-std=c++17", "-O3", "-lineinfo", "--Werror", "all-warnings"])
                .arg(format!("-arch={PTX_ARCH}"))
                .arg("-o")
                .arg(&ptx)
                .arg(src),
            src,
        );
        for arch in CHECK_ARCHS {
            run(Command::new(tool("ptxas")).arg(format!("-arch={arch}")).arg(&ptx).arg("-o").arg("/dev/null"), &ptx);
        }
    }
}

/// The host emulation: objects for every kernel file, the runtime and the registry, archived
/// into `liboxemu.a`. The objects stay in OUT_DIR/emu for the mutation tests.
fn build_emulator(out: &Path) {
    let emu = out.join("emu");
    std::fs::create_dir_all(&emu).expect("create OUT_DIR/emu");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let paths = prepare::Paths { emu: manifest.join("emu"), out: emu.clone() };
    let objs = paths.build_objects(&manifest.join("cuda")).unwrap_or_else(|e| panic!("host emulation of CUDA: {e}"));
    let lib = emu.join("liboxemu.a");
    let _ = std::fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).args(&objs), &lib);
    println!("cargo:rustc-link-search=native={}", emu.display());
    println!("cargo:rustc-link-lib=static=oxemu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-env=OXEMU_BUILD_DIR={}", emu.display());
}

/// `$CUDA_HOME/bin/<name>` when CUDA_HOME is set, else `<name>` from PATH.
fn tool(name: &str) -> PathBuf {
    match std::env::var_os("CUDA_HOME") {
        Some(home) => Path::new(&home).join("bin").join(name),
        None => PathBuf::from(name),
    }
}

fn run(cmd: &mut Command, what: &Path) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}) for {}: install the CUDA toolchain with kernels/scripts/cuda-toolchain.sh \
             and `source <(kernels/scripts/cuda-toolchain.sh --env)` before building with --features cuda",
            cmd.get_program(),
            what.display()
        )
    });
    assert!(status.success(), "{:?} failed for {} ({status})", cmd.get_program(), what.display());
}

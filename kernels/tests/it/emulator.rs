//! The host emulation of CUDA itself: CUDA semantics on probe kernels (shuffles, barrier
//! reductions, atomics, bf16/f16 rounding, wmma), the errors it must report (races, divergence,
//! bounds, early cp.async reads, launch limits, argument lists), and — the proof that the
//! checker finds bugs — deliberate mutations of copies of the real kernels that the device suite
//! must catch. Also the launch-coverage report of the test command (`launch_coverage`).

#[path = "../../emu/prepare.rs"]
mod prepare;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::DType;
use kernels::launch::emulated::{self, Library};
use kernels::launch::{Arg, Buf};

use crate::common::device::TestDevice;
use crate::common::Rng;
use crate::devices::{attention_case, nf4_case, rms_norm_case, swiglu_case, AttnShape};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn paths(out: &Path) -> prepare::Paths {
    prepare::Paths { emu: manifest().join("emu"), out: out.to_path_buf() }
}

/// Compiles `modules` of (prepared) `src_dir` and links them with `extra` objects into a library.
fn build_library(
    src_dir: &Path,
    out: &Path,
    compile: &[&str],
    registry: Option<&[String]>,
    extra: &[PathBuf],
) -> Library {
    let p = paths(out);
    p.prepare_sources(src_dir).unwrap();
    let mut objs = Vec::new();
    let mut cmds = Vec::new();
    for m in compile {
        let obj = out.join(format!("{m}.o"));
        cmds.push((format!("{m}.cu"), p.compile(&out.join(format!("{m}.cpp")), &obj, true)));
        objs.push(obj);
    }
    objs.extend_from_slice(extra);
    if let Some(mods) = registry {
        let reg = out.join("registry.cpp");
        std::fs::write(&reg, prepare::registry(mods)).unwrap();
        cmds.push(("registry.cpp".into(), p.compile(&reg, &out.join("registry.o"), false)));
        objs.push(out.join("registry.o"));
    }
    prepare::Paths::run_all(cmds).unwrap();
    let lib = out.join("libkernels_emu.so");
    prepare::link_shared(&objs, &lib).unwrap();
    Library::load(&lib).unwrap()
}

/// The probe kernels with the runtime, built once per test run.
fn probes() -> Library {
    static LIB: OnceLock<(tempfile::TempDir, Library)> = OnceLock::new();
    let (_, lib) = LIB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let runtime = PathBuf::from(emulated::BUILD_DIR).join("runtime.o");
        let src = manifest().join("tests/it/emu_probe");
        let lib = build_library(&src, dir.path(), &["probe"], Some(&["probe".to_string()]), &[runtime]);
        (dir, lib)
    });
    *lib
}

fn buf<T>(v: &mut [T]) -> Arg {
    Arg::Buf(Buf { addr: v.as_mut_ptr() as u64, len: std::mem::size_of_val(v) as u64, offset: 0 })
}

/// Launches a probe kernel (grid and block 1-D) with seed `seed`.
fn probe(func: &str, grid: u32, block: u32, args: &[Arg], seed: u64) -> candle_core::Result<()> {
    emulated::use_library(Some(probes()));
    emulated::set_seed(seed);
    let r = emulated::launch(func, (grid, 1, 1), (block, 1, 1), 0, args);
    emulated::use_library(None);
    r
}

fn error_of(r: candle_core::Result<()>) -> String {
    match r {
        Ok(()) => panic!("the emulator accepted a launch it must refuse"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shuffles_exchange_as_on_a_gpu() {
    for width in [32, 8] {
        let mut out = vec![0i32; 64 * 5];
        probe("probe_shuffle", 1, 64, &[buf(&mut out), Arg::I32(width)], 1).unwrap();
        for t in 0..64usize {
            let (lane, w) = (t % 32, width as usize);
            let seg = lane - lane % w;
            let v = |l: usize| ((t - lane + l) * 10) as i32;
            let o = &out[t * 5..t * 5 + 5];
            assert_eq!(o[0], v(seg + 3 % w), "idx, thread {t} width {w}");
            assert_eq!(o[1], v(lane ^ 1), "xor, thread {t} width {w}");
            assert_eq!(o[2], if lane + 2 < seg + w { v(lane + 2) } else { v(lane) }, "down, thread {t} width {w}");
            assert_eq!(o[3], if lane >= seg + 2 { v(lane - 2) } else { v(lane) }, "up, thread {t} width {w}");
            assert_eq!(o[4], 1000 - (t - lane + 31) as i32, "reduce_min, thread {t}");
        }
    }
}

#[test]
fn barrier_reductions_and_atomics() {
    let mut out = vec![0i32; 3];
    probe("probe_barrier_reductions", 1, 96, &[buf(&mut out)], 2).unwrap();
    assert_eq!(out, [32, 1, 0]);
    let (mut f, mut i, mut u) = (vec![0f32], vec![0i32, -1, 0], vec![u32::MAX]);
    probe("probe_atomics", 40, 128, &[buf(&mut f), buf(&mut i), buf(&mut u)], 3).unwrap();
    assert_eq!(f[0], 0.5 * 40.0 * 128.0);
    assert_eq!(i, [40 * 128, 40 * 128 - 1, 40 * 128 * 2]);
    assert_eq!(u[0], 1000);
}

#[test]
fn bf16_and_f16_rounding_is_bit_exact() {
    // Ties (both parities), subnormals, overflow, infinities, NaN, and a sweep of ordinary values.
    let mut vals: Vec<f32> = vec![0.0, -0.0, 1.0, f32::MIN_POSITIVE, 1e-40, -1e-45, 65504.0, 65520.0, 1e6, 3.4e38];
    vals.extend([f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000)]);
    vals.extend([f32::from_bits(0x3f80_7fff), f32::from_bits(0x7f7f_ffff), f32::from_bits(0x3380_0000)]);
    let mut rng = Rng::new(9);
    vals.extend((0..20000).map(|_| f32::from_bits(rng.next_u64() as u32)).filter(|v| !v.is_nan()));
    let n = vals.len();
    let (mut bf, mut hf) = (vec![0u16; n], vec![0u16; n]);
    probe("probe_round", 8, 128, &[buf(&mut vals), buf(&mut bf), buf(&mut hf), Arg::I32(n as i32)], 4).unwrap();
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(bf[i], half::bf16::from_f32(*v).to_bits(), "bf16 of {v:e} ({:#x})", v.to_bits());
        assert_eq!(hf[i], half::f16::from_f32(*v).to_bits(), "f16 of {v:e} ({:#x})", v.to_bits());
    }
    // NaN becomes the canonical bf16 NaN, as cvt.rn.bf16.f32 gives.
    let (mut nan, mut b1, mut h1) = (vec![f32::NAN], vec![0u16], vec![0u16]);
    probe("probe_round", 1, 32, &[buf(&mut nan), buf(&mut b1), buf(&mut h1), Arg::I32(1)], 4).unwrap();
    assert_eq!(b1[0], 0x7fff);
}

#[test]
fn wmma_layout_is_a_random_permutation_and_mma_is_a_matmul() {
    let layout = |seed| {
        let mut out = vec![0f32; 256];
        probe("probe_wmma_layout", 1, 32, &[buf(&mut out)], seed).unwrap();
        out.iter().map(|v| *v as usize).collect::<Vec<_>>()
    };
    let (a, b) = (layout(5), layout(6));
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..256).collect::<Vec<_>>(), "a fragment holds every element once");
    assert_ne!(a, b, "two seeds give two layouts");
    assert_eq!(a, layout(5), "a seed repeats its layout");

    let mut rng = Rng::new(10);
    let av: Vec<f32> = (0..256).map(|_| rng.normal() as f32).collect();
    let bv: Vec<f32> = (0..256).map(|_| rng.normal() as f32).collect();
    let mut a16: Vec<half::bf16> = av.iter().map(|v| half::bf16::from_f32(*v)).collect();
    let mut bt16: Vec<half::bf16> = (0..256).map(|i| half::bf16::from_f32(bv[(i % 16) * 16 + i / 16])).collect();
    let cin: Vec<f32> = (0..256).map(|i| i as f32 * 0.01).collect();
    let mut c = cin.clone();
    probe("probe_mma", 1, 32, &[buf(&mut a16), buf(&mut bt16), buf(&mut c)], 7).unwrap();
    for r in 0..16 {
        for col in 0..16 {
            let want: f64 = cin[r * 16 + col] as f64
                + (0..16)
                    .map(|k| a16[r * 16 + k].to_f64() * half::bf16::from_f32(bv[k * 16 + col]).to_f64())
                    .sum::<f64>();
            assert!((c[r * 16 + col] as f64 - want).abs() < 1e-4, "c[{r}][{col}] = {} want {want}", c[r * 16 + col]);
        }
    }
}

#[test]
fn races_are_reported_and_synchronised_exchanges_are_not() {
    let mut out = vec![0f32; 64];
    probe("probe_block_exchange", 1, 64, &[buf(&mut out), Arg::I32(1)], 11).unwrap();
    assert_eq!(out[0], 32.0);
    let e = error_of(probe("probe_block_exchange", 1, 64, &[buf(&mut out), Arg::I32(0)], 11));
    assert!(e.contains("shared-memory race on `s`") && e.contains("seed"), "{e}");
    probe("probe_warp_exchange", 1, 32, &[buf(&mut out), Arg::I32(1)], 12).unwrap();
    assert_eq!(out[31], 0.0);
    let e = error_of(probe("probe_warp_exchange", 1, 32, &[buf(&mut out), Arg::I32(0)], 12));
    assert!(e.contains("shared-memory race on `s`"), "{e}");
}

#[test]
fn divergence_and_bounds_are_reported() {
    let mut out = vec![0i32; 64];
    let e = error_of(probe("probe_divergent_barrier", 1, 32, &[buf(&mut out)], 13));
    assert!(e.contains("divergent barrier"), "{e}");
    let e = error_of(probe("probe_exit_before_barrier", 1, 32, &[buf(&mut out)], 13));
    assert!(e.contains("exit") && e.contains("__syncthreads"), "{e}");
    let mut f = vec![0f32; 8];
    probe("probe_shared_bounds", 1, 9, &[buf(&mut f), Arg::I32(8)], 14).unwrap();
    let e = error_of(probe("probe_shared_bounds", 1, 9, &[buf(&mut f), Arg::I32(9)], 14));
    assert!(e.contains("out of bounds") && e.contains("past the end of `a`"), "{e}");
    let (mut input, mut o) = (vec![1f32; 32], vec![0f32; 32]);
    probe("probe_global_read", 1, 32, &[buf(&mut input), buf(&mut o), Arg::I32(0)], 15).unwrap();
    let e = error_of(probe("probe_global_read", 1, 32, &[buf(&mut input), buf(&mut o), Arg::I32(1)], 15));
    assert!(e.contains("global-memory read of 4 byte(s) out of bounds") && e.contains("argument 0 `in`"), "{e}");
    let e = error_of(probe("probe_global_read", 1, 32, &[buf(&mut input), buf(&mut o), Arg::I32(-1)], 15));
    assert!(e.contains("before the start of argument 0 `in`"), "{e}");
}

#[test]
fn cp_async_lands_only_at_the_wait() {
    let (mut input, mut out) = ((0..32).map(|i| i as f32).collect::<Vec<_>>(), vec![0f32; 32]);
    probe("probe_cp_async", 1, 32, &[buf(&mut input), buf(&mut out), Arg::I32(1)], 16).unwrap();
    assert_eq!(out, input);
    probe("probe_cp_async", 1, 32, &[buf(&mut input), buf(&mut out), Arg::I32(0)], 16).unwrap();
    assert!(out.iter().all(|v| v.is_nan()), "a read before the wait sees the shared-memory poison: {out:?}");
}

#[test]
fn launch_limits_and_argument_lists_are_enforced() {
    let mut out = vec![0i32; 2048];
    probe("probe_bounded", 1, 64, &[buf(&mut out)], 17).unwrap();
    let e = error_of(probe("probe_bounded", 1, 128, &[buf(&mut out)], 17));
    assert!(e.contains("__launch_bounds__ (64)"), "{e}");
    let e = error_of(probe("probe_shuffle", 1, 2048, &[buf(&mut out), Arg::I32(32)], 17));
    assert!(e.contains("exceeds 1024 threads"), "{e}");
    emulated::use_library(Some(probes()));
    let e = error_of(emulated::launch("probe_bounded", (1, 70000, 1), (32, 1, 1), 0, &[buf(&mut out)]));
    assert!(e.contains("exceeds the limits"), "{e}");
    let e = error_of(emulated::launch("probe_bounded", (1, 1, 1), (32, 1, 1), 64 * 1024, &[buf(&mut out)]));
    assert!(e.contains("dynamic shared memory") && e.contains("attribute"), "{e}");
    let e = error_of(emulated::launch("probe_nonexistent", (1, 1, 1), (32, 1, 1), 0, &[]));
    assert!(e.contains("no kernel `probe_nonexistent`"), "{e}");
    emulated::use_library(None);
    let mut f = vec![0f32; 32];
    let e = error_of(probe("probe_big_static", 1, 32, &[buf(&mut f)], 17));
    assert!(e.contains("48 KiB"), "{e}");
    let good = [buf(&mut f), Arg::I32(1), Arg::I64(2), Arg::F32(3.0)];
    probe("probe_takes", 1, 1, &good, 18).unwrap();
    let e = error_of(probe("probe_takes", 1, 1, &[buf(&mut f), Arg::I64(1), Arg::I64(2), Arg::F32(3.0)], 18));
    assert!(e.contains("argument 1 `i` is a long long, the kernel takes an int"), "{e}");
    let e = error_of(probe("probe_takes", 1, 1, &good[..3], 18));
    assert!(e.contains("3 argument(s) given, the kernel takes 4 (p, i, l, f)"), "{e}");
}

// ---------------------------------------------------------------- mutations

/// A deliberate bug in a copy of `kernels/cuda/<file>`: `from` (exactly once) becomes `to`.
struct Mutation {
    file: &'static str,
    from: &'static str,
    to: &'static str,
}

/// The kernels with one mutation, every other module as built: a library for this thread.
fn mutant(m: &Mutation) -> (tempfile::TempDir, Library) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cuda");
    std::fs::create_dir_all(&src).unwrap();
    for e in std::fs::read_dir(manifest().join("cuda")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
    }
    let target = src.join(m.file);
    let text = std::fs::read_to_string(&target).unwrap();
    assert_eq!(text.matches(m.from).count(), 1, "mutation site in {} must be unique: {:?}", m.file, m.from);
    std::fs::write(&target, text.replacen(m.from, m.to, 1)).unwrap();
    // Recompile the file, or every module that includes the mutated header (inline helpers are
    // shared between objects: an unchanged one would stand in for the mutated one at link time).
    let built = PathBuf::from(emulated::BUILD_DIR);
    let mut extra = vec![built.join("runtime.o"), built.join("registry.o")];
    let mut compile = vec![];
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        if p.extension().is_some_and(|x| x == "cu") {
            let includes = std::fs::read_to_string(&p).unwrap().contains(&format!("#include \"{}\"", m.file));
            if p.file_name().is_some_and(|n| n == m.file) || includes {
                compile.push(stem);
            } else {
                extra.push(built.join(format!("{stem}.o")));
            }
        }
    }
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let compile: Vec<&str> = compile.iter().map(String::as_str).collect();
    let lib = build_library(&src, &out, &compile, None, &extra);
    (dir, lib)
}

/// `case` passes with the kernels as built and fails (panics) with the mutation; returns why.
fn caught(m: Mutation, case: impl Fn(&TestDevice)) -> String {
    crate::common::device::run_emulated("mutation baseline", &case);
    let (_dir, lib) = mutant(&m);
    emulated::use_library(Some(lib));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        TestDevice::Emulated.run(|| case(&TestDevice::Emulated))
    }));
    emulated::use_library(None);
    let msg = match r {
        Ok(()) => panic!("the device suite did not catch the mutation of {}: {:?} -> {:?}", m.file, m.from, m.to),
        Err(p) => {
            p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        }
    };
    eprintln!("caught mutation of {} ({:?} -> {:?}): {msg}", m.file, m.from, m.to);
    msg
}

fn small_attention(dev: &TestDevice) {
    let mut rng = Rng::new(40);
    attention_case(dev, &mut rng, AttnShape { b: 1, d: 64, hq: 2, hkv: 1, tq: 70, tk: 70, packed: false });
}

#[test]
fn mutation_missing_syncthreads_is_caught() {
    let m = Mutation {
        file: "common.cuh",
        from: "    if (lane == 0) partial[warp] = v;\n    __syncthreads();",
        to: "    if (lane == 0) partial[warp] = v;",
    };
    let msg = caught(m, |dev| rms_norm_case(dev, &mut Rng::new(41), 3, 256));
    assert!(msg.contains("race"), "{msg}");
}

#[test]
fn mutation_wrong_shuffle_offset_is_caught() {
    let m = Mutation {
        file: "attention.cu",
        from: "rs += __shfl_xor_sync(0xffffffffu, rs, 1);",
        to: "rs += __shfl_xor_sync(0xffffffffu, rs, 2);",
    };
    caught(m, small_attention);
}

#[test]
fn mutation_off_by_one_bound_is_caught() {
    let m = Mutation {
        file: "swiglu.cu",
        from: "i < n; i += stride) {\n        const float gf = __bfloat162float(g[i]);\n        const float s = sigmoid_f32(gf);",
        to: "i <= n; i += stride) {\n        const float gf = __bfloat162float(g[i]);\n        const float s = sigmoid_f32(gf);",
    };
    let msg = caught(m, |dev| swiglu_case(dev, &mut Rng::new(42), 256));
    assert!(msg.contains("out of bounds"), "{msg}");
}

#[test]
fn mutation_wmma_layout_assumption_is_caught() {
    // The accumulator layout sm_80 is reported to use; CUDA does not specify it.
    let m = Mutation {
        file: "attention.cu",
        from: "for (int i = 0; i < 8; ++i) f[i] = factor[map.row(i)];",
        to: "for (int i = 0; i < 8; ++i) f[i] = factor[(threadIdx.x & 31) / 4 + 8 * ((i >> 1) & 1)];",
    };
    caught(m, small_attention);
}

#[test]
fn mutation_cp_async_read_before_wait_is_caught() {
    let m =
        Mutation { file: "attention.cu", from: "cp_async_wait<1>();  // v(kt)", to: "cp_async_wait<2>();  // v(kt)" };
    caught(m, small_attention);
}

#[test]
fn mutation_shared_buffer_one_short_is_caught() {
    let m =
        Mutation { file: "nf4_linear.cu", from: "__shared__ float s_code[16];", to: "__shared__ float s_code[15];" };
    let msg = caught(m, |dev| nf4_case(dev, &mut Rng::new(43), (8, 64), false, DType::BF16));
    assert!(msg.contains("out of bounds") && msg.contains("s_code"), "{msg}");
}

#[test]
fn mutation_missing_barrier_before_prefetch_is_caught() {
    let m = Mutation {
        file: "attention.cu",
        from: "        __syncthreads();  // q, dout, lse, delta, seg_q are free: prefetch the next step\n",
        to: "",
    };
    let msg = caught(m, small_attention);
    assert!(msg.contains("race"), "{msg}");
}

// ---------------------------------------------------------------- coverage

/// Run by the test command after the suite (`--ignored`): per entry point, the launches that ran
/// in passing tests (from `$OXTUNE_EMU_LAUNCH_LOG`); fails if any entry point has none.
#[test]
#[ignore = "reads the launch log of a finished test run; tests/run.sh runs it"]
fn launch_coverage() {
    let path = std::env::var("OXTUNE_EMU_LAUNCH_LOG").expect("set OXTUNE_EMU_LAUNCH_LOG to the log of a test run");
    let log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut per: BTreeMap<String, (u64, BTreeMap<String, ()>)> = BTreeMap::new();
    for line in log.lines() {
        let mut f = line.split('\t');
        let (Some(test), Some(kernel), Some(n)) = (f.next(), f.next(), f.next()) else { continue };
        let e = per.entry(kernel.to_string()).or_default();
        e.0 += n.parse::<u64>().unwrap_or(0);
        e.1.insert(test.to_string(), ());
    }
    let names = Library::builtin().kernel_names();
    println!("emulated launches that ran and passed, per kernel:");
    let mut missing = vec![];
    for k in &names {
        let (n, tests) = per.get(k).map(|(n, t)| (*n, t.len())).unwrap_or((0, 0));
        println!("  {k:<28} {n:>7} launches in {tests} passing test(s)");
        if n == 0 {
            missing.push(k.clone());
        }
    }
    assert!(missing.is_empty(), "no passing test launched: {missing:?}");
}

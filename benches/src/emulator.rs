//! Cost of the host emulation of CUDA: each fused op's forward and backward on fixed shapes
//! through the emulated kernels, as launches per second (so a change to the emulator or to a
//! kernel shows what it costs the test command). Not a test: nothing here asserts a speed.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use kernels::launch::{emulate_on_this_thread, emulated};
use serde_json::{json, Value};

/// N(0, scale²)-ish values from a fixed sequence (the values do not matter, only the work).
fn tensor(dims: &[usize], scale: f64, dtype: DType, seed: u64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut s = seed;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32 * scale as f32
        })
        .collect();
    Tensor::from_vec(data, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// Forward and backward of `f` on fresh variables of `inputs`.
fn fwd_bwd(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    f(&xs)?.to_dtype(DType::F32)?.sum_all()?.backward()?;
    Ok(())
}

type Case = (&'static str, Box<dyn Fn() -> Result<()>>);

fn cases() -> Result<Vec<Case>> {
    use kernels::{attention, cross_entropy, lora_linear, rms_norm, rope, swiglu};
    let bf = DType::BF16;
    let x = tensor(&[512, 1024], 1.0, bf, 1)?;
    let w = tensor(&[1024], 0.5, bf, 2)?;
    let g = tensor(&[1 << 20], 2.0, bf, 3)?;
    let u = tensor(&[1 << 20], 1.0, bf, 4)?;
    let inv: Vec<f32> = (0..32).map(|i| 1.0 / 10000f32.powf(i as f32 / 32.0)).collect();
    let pos = Tensor::arange(0u32, 256, &Device::Cpu)?.reshape((1, 256))?;
    let (cos, sin) = rope::rope_tables(&inv, &pos, bf)?;
    let xr = tensor(&[1, 8, 256, 64], 1.0, bf, 5)?;
    let q = tensor(&[1, 4, 256, 64], 1.0, bf, 6)?;
    let k = tensor(&[1, 2, 256, 64], 1.0, bf, 7)?;
    let v = tensor(&[1, 2, 256, 64], 1.0, bf, 8)?;
    let h = tensor(&[256, 64], 1.0, bf, 9)?;
    let wl = tensor(&[8000, 64], 0.05, bf, 10)?;
    let t = Tensor::from_vec((0..256u32).map(|i| i * 31 % 8000).collect::<Vec<_>>(), 256, &Device::Cpu)?;
    let xl = tensor(&[256, 1024], 1.0, bf, 11)?;
    let a = tensor(&[16, 1024], 0.05, DType::F32, 12)?;
    let b = tensor(&[1024, 16], 0.05, DType::F32, 13)?;
    let drop = Some(lora_linear::Dropout { keep: 0.9, seed: 5 });
    Ok(vec![
        (
            "rms_norm 512x1024",
            Box::new(move || fwd_bwd(std::slice::from_ref(&x), &|i| rms_norm::rms_norm(&i[0], &w, 1e-5))),
        ),
        ("swiglu 1M", Box::new(move || fwd_bwd(&[g.clone(), u.clone()], &|i| swiglu::swiglu(&i[0], &i[1])))),
        ("rope 8x256x64", Box::new(move || fwd_bwd(std::slice::from_ref(&xr), &|i| rope::rope(&i[0], &cos, &sin)))),
        (
            "attention 4:2 heads t=256 d=64",
            Box::new(move || {
                fwd_bwd(&[q.clone(), k.clone(), v.clone()], &|i| {
                    attention::causal_attention(&i[0], &i[1], &i[2], None, 0.125)
                })
            }),
        ),
        (
            "cross entropy 256 rows v=8000",
            Box::new(move || {
                fwd_bwd(std::slice::from_ref(&h), &|i| cross_entropy::linear_log_probs(&i[0], &wl, &t, 64))
            }),
        ),
        (
            "lora 256x1024 r=16 dropout",
            Box::new(move || {
                fwd_bwd(&[xl.clone(), a.clone(), b.clone()], &|i| {
                    lora_linear::lora_delta(&i[0], &i[1], &i[2], 2.0, drop)
                })
            }),
        ),
    ])
}

/// Runs every case `iters` times under emulation; one JSON object with a row per case.
pub fn run(iters: usize) -> anyhow::Result<Value> {
    emulate_on_this_thread(true);
    let mut rows = vec![];
    for (name, case) in cases()? {
        case()?; // warm-up: first-launch setup (stacks, arenas)
        emulated::take_launch_counts();
        let start = Instant::now();
        for _ in 0..iters {
            case()?;
        }
        let secs = start.elapsed().as_secs_f64();
        let launches: u64 = emulated::take_launch_counts().values().sum();
        println!(
            "{name:<32} {launches:>5} launches in {secs:>7.3} s: {:>8.1} launches/s, {:>8.2} ms per launch",
            launches as f64 / secs,
            1e3 * secs / launches.max(1) as f64
        );
        rows.push(
            json!({"case": name, "launches": launches, "seconds": secs, "launches_per_sec": launches as f64 / secs}),
        );
    }
    emulate_on_this_thread(false);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Ok(json!({"bench": "emulator", "iters": iters, "cpu_threads": threads, "cases": rows}))
}

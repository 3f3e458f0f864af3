//! Row loops for the fused CPU ops, written so the compiler vectorises them, and compiled three
//! times: for the baseline target, AVX2 and AVX-512F (the widest the CPU has is picked at run time). Reductions keep 16 independent
//! partial results, combined in a fixed order, so they vectorise without reordering by the compiler
//! and give the same bits on every run.
//!
//! `exp` is a polynomial (Cephes' expf: n = round(x·log₂e), r = x − n·ln 2 in two parts,
//! e^r ≈ 1 + r + r²·P(r) with a degree-5 P, times 2ⁿ built in the exponent bits): about 2 ulp on
//! [−87.3, 88], 0 below (as expf underflows), clamped at 88 above. libm's expf is a call per
//! element that the compiler cannot vectorise.

const LANES: usize = 16;

/// Defines `pub fn $name` that runs `$imp` compiled for AVX-512F or AVX2 when the CPU has them.
macro_rules! vectorised {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? => $imp:ident) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f")]
                unsafe fn wider($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                // SAFETY: the CPU has AVX-512F (checked just above); `wider` is `$imp` compiled for it.
                return unsafe { wider($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                // SAFETY: the CPU has AVX2 (checked just above); `wide` is `$imp` compiled for it.
                return unsafe { wide($($a),*) };
            }
            $imp($($a),*)
        }
    };
}

const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -87.3;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// e^x (see the module comment for the accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = (((((P[0] * r + P[1]) * r + P[2]) * r + P[3]) * r + P[4]) * r + P[5]) * z + r + 1.0;
    let two_n = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < EXP_LO {
        0.0
    } else {
        p * two_n
    }
}

/// 1 / (1 + e^−x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn max_imp(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for &v in chunks.remainder() {
        m = if v > m { v } else { m };
    }
    m
}

#[inline(always)]
fn exp_shifted_imp(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp(c[l] - shift);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        sum += *v;
    }
    acc.iter().sum::<f32>() + sum
}

#[inline(always)]
fn scale_imp(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// Partial sums of `dot`: four vectors' worth at AVX-512 width, so four multiply-add chains run at
/// once instead of one waiting on the previous (dot products here are short: a head or hidden size).
const DOT_LANES: usize = 64;

#[inline(always)]
fn dot_imp(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; DOT_LANES];
    let (ca, cb) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..DOT_LANES {
            acc[l] += x[l] * y[l];
        }
    }
    // Halve in a fixed order (vectorised, same bits every run).
    let mut width = DOT_LANES / 2;
    while width >= 1 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

#[inline(always)]
fn swiglu_imp(g: &[f32], u: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g * sigmoid(g) * u;
    }
}

#[inline(always)]
fn swiglu_grad_imp(g: &[f32], u: &[f32], dy_dg: &mut [f32], du: &mut [f32]) {
    for (((d, du), &g), &u) in dy_dg.iter_mut().zip(du).zip(g).zip(u) {
        let s = sigmoid(g);
        let dy = *d;
        *du = dy * g * s;
        *d = dy * u * s * (1.0 + g * (1.0 - s));
    }
}

vectorised! {
    /// y = g·sigmoid(g)·u element-wise.
    pub fn swiglu(g: &[f32], u: &[f32], y: &mut [f32]) => swiglu_imp
}

vectorised! {
    /// SwiGLU's backward: `dy_dg` holds dy and becomes dgate = dy·u·s·(1 + g(1 − s)); du = dy·g·s.
    pub fn swiglu_grad(g: &[f32], u: &[f32], dy_dg: &mut [f32], du: &mut [f32]) => swiglu_grad_imp
}

vectorised! {
    /// max of `x` (−∞ for an empty slice).
    pub fn max(x: &[f32]) -> f32 => max_imp
}

vectorised! {
    /// x ← e^(x − shift) element-wise; returns Σ of the new x.
    pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 => exp_shifted_imp
}

vectorised! {
    /// x ← s·x.
    pub fn scale(x: &mut [f32], s: f32) => scale_imp
}

#[inline(always)]
fn axpy_imp(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

vectorised! {
    /// y ← y + alpha·x over the shorter length.
    pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) => axpy_imp
}

/// Sum of a partial-sum vector, halving in a fixed order.
#[inline(always)]
fn halve<const L: usize>(mut acc: [f32; L]) -> f32 {
    let mut width = L / 2;
    while width >= 1 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

#[inline(always)]
fn dot4_imp(r0: &[f32], r1: &[f32], r2: &[f32], r3: &[f32], w: &[f32], out: &mut [f32]) {
    const L: usize = 16;
    let k = w.len();
    let (r0, r1, r2, r3) = (&r0[..k], &r1[..k], &r2[..k], &r3[..k]);
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
    let chunks = r0.chunks_exact(L).zip(r1.chunks_exact(L)).zip(r2.chunks_exact(L)).zip(r3.chunks_exact(L));
    for ((((c0, c1), c2), c3), cw) in chunks.zip(w.chunks_exact(L)) {
        for l in 0..L {
            a0[l] += c0[l] * cw[l];
            a1[l] += c1[l] * cw[l];
            a2[l] += c2[l] * cw[l];
            a3[l] += c3[l] * cw[l];
        }
    }
    let t = k / L * L;
    let tail = |r: &[f32]| -> f32 { r[t..].iter().zip(&w[t..]).map(|(x, y)| x * y).sum() };
    out[0] = halve(a0) + tail(r0);
    out[1] = halve(a1) + tail(r1);
    out[2] = halve(a2) + tail(r2);
    out[3] = halve(a3) + tail(r3);
}

vectorised! {
    /// out[0..4] = r0·w, r1·w, r2·w, r3·w, with w read once (rows at least w's length).
    pub fn dot4(r0: &[f32], r1: &[f32], r2: &[f32], r3: &[f32], w: &[f32], out: &mut [f32]) => dot4_imp
}

vectorised! {
    /// Σ aᵢ·bᵢ over the shorter length.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 => dot_imp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_and_saturates() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7 && sigmoid(-200.0) < 1e-37 && sigmoid(200.0) == 1.0);
    }

    #[test]
    fn row_loops_match_plain_sums() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.25 - 3.0).collect();
        assert_eq!(max(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut e = x.clone();
        let s = exp_shifted(&mut e, 1.5);
        let want: f64 = x.iter().map(|v| ((*v - 1.5) as f64).exp()).sum();
        assert!(((s as f64) - want).abs() < 1e-5 * want);
        assert!((e[3] as f64 - ((x[3] - 1.5) as f64).exp()).abs() < 1e-6);
        let d = dot(&x, &e) as f64;
        let want: f64 = x.iter().zip(&e).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
        assert!((d - want).abs() < 1e-5 * want.abs().max(1.0));
        scale(&mut e, 2.0);
        assert!((e.iter().map(|v| *v as f64).sum::<f64>() - 2.0 * s as f64).abs() < 1e-4);
    }
}

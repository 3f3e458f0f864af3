//! Random NF4 weights for the nf4 tests (CPU and GPU).

use candle_core::{DType, Device, Tensor};
use kernels::nf4_linear::{Nf4Absmax, Nf4Packed};

/// bitsandbytes' NF4 code values.
pub const CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_04,
    0.0,
    0.079_580_29,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn unit(&mut self) -> f32 {
        (self.next() % 1_000_000) as f32 / 1_000_000.0
    }
}

/// A random NF4 weight [out, in] (odd element count when out·in is odd).
pub fn weight(out_f: usize, in_f: usize, double: bool, store: DType, seed: u64) -> Nf4Packed {
    let mut r = Lcg(seed);
    let n = out_f * in_f;
    let bs = 64;
    let nb = n.div_ceil(bs);
    let packed: Vec<u8> = (0..n.div_ceil(2)).map(|_| r.next() as u8).collect();
    let d = Device::Cpu;
    let absmax = if double {
        let q: Vec<u8> = (0..nb).map(|_| r.next() as u8).collect();
        let map: Vec<f32> = (0..256).map(|i| (i as f32 - 127.5) / 128.0).collect();
        let nested: Vec<f32> = (0..nb.div_ceil(4)).map(|_| 0.2 + r.unit()).collect();
        Nf4Absmax::Double {
            q: Tensor::new(q, &d).unwrap(),
            nested: Tensor::new(nested, &d).unwrap(),
            map: Tensor::new(map, &d).unwrap(),
            offset: 1.5,
            nested_blocksize: 4,
        }
    } else {
        Nf4Absmax::F32(Tensor::new((0..nb).map(|_| 0.1 + r.unit()).collect::<Vec<f32>>(), &d).unwrap())
    };
    let w = Nf4Packed {
        packed: Tensor::new(packed, &d).unwrap(),
        absmax,
        code: Tensor::new(&CODE, &d).unwrap(),
        blocksize: bs,
        shape: (out_f, in_f),
        store_dtype: store,
    };
    w.validate().unwrap();
    w
}

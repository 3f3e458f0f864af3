//! NF4 (4-bit NormalFloat) codec, bit-compatible with bitsandbytes 0.50 (`quantize_4bit` /
//! `dequantize_4bit`, quant_type "nf4"), including double quantisation of the absmax.
//! Recipe: shared/reference/formats.md §2; checked against tests/fixtures/nf4 (trainer/tests/qlora.rs).

use candle_core::{DType, Device, Result, Tensor};
use kernels::nf4_linear::{Nf4Absmax, Nf4Packed};

/// The 16 NF4 code values (`get_4bit_type("nf4")`), index = nibble. All exact in f32.
// Written as bitsandbytes prints them (f64 digits of exact f32 values); each rounds to the same f32.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// QLoRA's block size.
pub const BLOCKSIZE: usize = 64;
/// Block size of the double quantisation of the absmax.
pub const NESTED_BLOCKSIZE: usize = 256;

/// bitsandbytes' 8-bit signed dynamic map (`create_dynamic_map(signed=True, max_exponent_bits=7,
/// total_bits=8)`, sorted, 256 f32 values) as f32 bit patterns. Generated once from
/// tests/fixtures/nf4/nf4_golden.safetensors `dynamic_map_signed` (bitsandbytes 0.50.2), which
/// equals every case's `dq.nested_quant_map`; its torch.linspace arithmetic is not recomputed here.
const DYNAMIC_MAP_SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000, 0xbf616666,
    0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000,
    0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666, 0xbf27cccd, 0xbf243334, 0xbf20999a,
    0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333,
    0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a,
    0xbeb86666, 0xbeb13333, 0xbeaa0000, 0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999,
    0xbe6f3333, 0xbe60cccd, 0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000,
    0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f,
    0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148, 0xbcfeb852, 0xbce7ae15,
    0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418, 0xbc0ccccd,
    0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a,
    0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d, 0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01,
    0xb9c7e283, 0xb98ce705, 0xb923d70b, 0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94,
    0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b,
    0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b,
    0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f,
    0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3,
    0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d,
    0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667,
    0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000,
    0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc,
    0x3eaa0000, 0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334,
    0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666, 0x3f2f0000, 0x3f32999a,
    0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000,
    0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
    0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The signed dynamic map as f32.
pub fn dynamic_map_signed() -> [f32; 256] {
    DYNAMIC_MAP_SIGNED_BITS.map(f32::from_bits)
}

/// f32 midpoints `(c[k-1] + c[k]) / 2` of a sorted code table.
fn midpoints(code: &[f32]) -> Vec<f32> {
    code.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
}

/// Index of `s` in a sorted code table: the number of midpoints strictly below `s` (ties go to
/// the lower index, as CUDA's `x > t` and torch.bucketize(right=False)).
fn bucket(s: f32, mids: &[f32]) -> u8 {
    mids.partition_point(|&t| s > t) as u8
}

/// NF4-quantise `values` (row-major) in blocks of `blocksize`: packed codes (two per byte, the first
/// element in the high nibble; an odd count is padded with the code of 0.0, i.e. 7, as the
/// bitsandbytes CPU backend does) and the f32 absmax of each block (the tail block takes its own).
/// Scaling is `x * (1/absmax)` (reciprocal first); an all-zero block gets code 7 everywhere.
pub fn quantize(values: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(blocksize > 0 && blocksize.is_multiple_of(2), "blocksize must be even");
    let mids = midpoints(&NF4_CODE);
    let mut codes = Vec::with_capacity(values.len() + 1);
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let m = block.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        absmax.push(m);
        let inv = 1.0f32 / m.max(1e-38);
        codes.extend(block.iter().map(|&x| bucket((x * inv).clamp(-1.0, 1.0), &mids)));
    }
    if codes.len() % 2 == 1 {
        codes.push(bucket(0.0, &mids));
    }
    let packed = codes.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

/// `code[nibble] * absmax[block]` in f32 for the first `n` elements.
pub fn dequantize(packed: &[u8], absmax: &[f32], n: usize, blocksize: usize) -> Vec<f32> {
    (0..n)
        .map(|e| {
            let b = packed[e / 2];
            let nib = if e % 2 == 0 { b >> 4 } else { b & 15 };
            NF4_CODE[nib as usize] * absmax[e / blocksize]
        })
        .collect()
}

/// Double-quantised absmax: 8-bit codes into the signed dynamic map, per-256-block scales and the offset.
#[derive(Clone, Debug)]
pub struct DoubleQuant {
    pub q: Vec<u8>,
    pub nested_absmax: Vec<f32>,
    pub offset: f32,
}

/// bitsandbytes' `compress_statistics`: offset = mean(absmax) (summed in f64 here; torch's f32
/// reduction may differ by 1–2 ulp), then blockwise 8-bit quantisation of `absmax - offset` with
/// blocks of 256 and nearest-value codes (midpoints, ties low).
pub fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    let map = dynamic_map_signed();
    let mids = midpoints(&map);
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let mut q = Vec::with_capacity(absmax.len());
    let mut nested_absmax = Vec::new();
    for block in centred.chunks(NESTED_BLOCKSIZE) {
        let m = block.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        nested_absmax.push(m);
        let inv = 1.0f32 / m.max(1e-38);
        q.extend(block.iter().map(|&x| bucket((x * inv).clamp(-1.0, 1.0), &mids)));
    }
    DoubleQuant { q, nested_absmax, offset }
}

/// `map[q] * nested_absmax[i / 256] + offset` (f32), as bitsandbytes dequantises the absmax.
pub fn dequantize_absmax(dq: &DoubleQuant, map: &[f32]) -> Vec<f32> {
    dq.q.iter()
        .enumerate()
        .map(|(i, &c)| map[c as usize] * dq.nested_absmax[i / NESTED_BLOCKSIZE] + dq.offset)
        .collect()
}

/// Quantisation switches (`bnb_4bit_use_double_quant`; the block size is QLoRA's 64).
#[derive(Clone, Copy, Debug)]
pub struct Nf4Options {
    pub double_quant: bool,
    pub blocksize: usize,
}

impl Default for Nf4Options {
    fn default() -> Self {
        Nf4Options { double_quant: true, blocksize: BLOCKSIZE }
    }
}

/// The absmax of an [`Nf4Weight`]: plain, or double-quantised with its 256-value map.
#[derive(Clone, Debug)]
pub enum Absmax {
    F32(Vec<f32>),
    Double { dq: DoubleQuant, map: Vec<f32> },
}

/// A host-side NF4 weight [out, in].
#[derive(Clone, Debug)]
pub struct Nf4Weight {
    pub packed: Vec<u8>,
    pub absmax: Absmax,
    /// NF4 code table (`quant_map`); [`NF4_CODE`] unless a checkpoint says otherwise.
    pub code: Vec<f32>,
    pub blocksize: usize,
    /// [out, in].
    pub shape: [usize; 2],
    /// The original weight dtype: dequantised values are rounded to it.
    pub dtype: DType,
}

impl Nf4Weight {
    /// Quantise a row-major f32 matrix.
    pub fn quantize(values: &[f32], shape: [usize; 2], dtype: DType, opts: Nf4Options) -> Nf4Weight {
        assert_eq!(values.len(), shape[0] * shape[1], "values do not match shape");
        let (packed, absmax) = quantize(values, opts.blocksize);
        let absmax = if opts.double_quant {
            Absmax::Double { dq: double_quantize(&absmax), map: dynamic_map_signed().to_vec() }
        } else {
            Absmax::F32(absmax)
        };
        Nf4Weight { packed, absmax, code: NF4_CODE.to_vec(), blocksize: opts.blocksize, shape, dtype }
    }

    /// Quantise a [out, in] tensor (any dtype, any device; read through the host).
    pub fn quantize_tensor(w: &Tensor, opts: Nf4Options) -> Result<Nf4Weight> {
        let (o, i) = w.dims2()?;
        let values = w.to_dtype(DType::F32)?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        Ok(Nf4Weight::quantize(&values, [o, i], w.dtype(), opts))
    }

    /// The f32 absmax per block (double quant dequantised).
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::F32(a) => a.clone(),
            Absmax::Double { dq, map } => dequantize_absmax(dq, map),
        }
    }

    /// Dequantised values in f32 (`code * absmax`, not yet rounded to `dtype`).
    pub fn dequantize_f32(&self) -> Vec<f32> {
        let absmax = self.absmax_f32();
        let n = self.shape[0] * self.shape[1];
        (0..n)
            .map(|e| {
                let b = self.packed[e / 2];
                let nib = if e % 2 == 0 { b >> 4 } else { b & 15 };
                self.code[nib as usize] * absmax[e / self.blocksize]
            })
            .collect()
    }

    /// The dense weight [out, in]: rounded to the original dtype, then cast to `dtype`, on `device`.
    pub fn dequantize_to_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.dequantize_f32(), (self.shape[0], self.shape[1]), device)?
            .to_dtype(self.dtype)?
            .to_dtype(dtype)
    }

    /// Bytes held (packed codes + scales), for memory reports.
    pub fn size_in_bytes(&self) -> usize {
        self.packed.len()
            + match &self.absmax {
                Absmax::F32(a) => a.len() * 4,
                Absmax::Double { dq, .. } => dq.q.len() + dq.nested_absmax.len() * 4 + 4 + 256 * 4,
            }
    }

    /// The kernels-side view on `device`.
    pub fn to_packed(&self, device: &Device) -> Result<Nf4Packed> {
        let absmax = match &self.absmax {
            Absmax::F32(a) => Nf4Absmax::F32(Tensor::from_slice(a, a.len(), device)?),
            Absmax::Double { dq, map } => Nf4Absmax::Double {
                q: Tensor::from_slice(&dq.q, dq.q.len(), device)?,
                nested: Tensor::from_slice(&dq.nested_absmax, dq.nested_absmax.len(), device)?,
                map: Tensor::from_slice(map, map.len(), device)?,
                offset: dq.offset,
                nested_blocksize: NESTED_BLOCKSIZE,
            },
        };
        let p = Nf4Packed {
            packed: Tensor::from_slice(&self.packed, self.packed.len(), device)?,
            absmax,
            code: Tensor::from_slice(&self.code, 16, device)?,
            blocksize: self.blocksize,
            shape: (self.shape[0], self.shape[1]),
            store_dtype: self.dtype,
        };
        p.validate()?;
        Ok(p)
    }
}

/// The bitsandbytes quant state (`weight.quant_state.bitsandbytes__nf4` JSON).
#[derive(Clone, Debug)]
pub struct BnbQuantState {
    pub quant_type: String,
    pub blocksize: usize,
    pub dtype: DType,
    pub shape: [usize; 2],
    pub nested_blocksize: Option<usize>,
    pub nested_offset: Option<f32>,
}

impl BnbQuantState {
    pub fn parse(bytes: &[u8]) -> std::result::Result<BnbQuantState, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("quant state is not JSON: {e}"))?;
        let quant_type = v.get("quant_type").and_then(|x| x.as_str()).unwrap_or("").to_string();
        let blocksize = v.get("blocksize").and_then(|x| x.as_u64()).ok_or("quant state has no blocksize")? as usize;
        let dtype = match v.get("dtype").and_then(|x| x.as_str()).unwrap_or("bfloat16") {
            "float32" => DType::F32,
            "float16" => DType::F16,
            _ => DType::BF16,
        };
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|x| x.as_array())
            .map(|a| a.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
            .unwrap_or_default();
        if shape.len() != 2 {
            return Err(format!("quant state shape {shape:?} is not 2-D"));
        }
        Ok(BnbQuantState {
            quant_type,
            blocksize,
            dtype,
            shape: [shape[0], shape[1]],
            nested_blocksize: v.get("nested_blocksize").and_then(|x| x.as_u64()).map(|x| x as usize),
            nested_offset: v.get("nested_offset").and_then(|x| x.as_f64()).map(|x| x as f32),
        })
    }
}

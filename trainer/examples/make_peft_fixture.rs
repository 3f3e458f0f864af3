//! Writes tests/fixtures/peft/rust_adapter: a LoRA adapter produced by our own writer on the
//! `parity/llama` fixture base (r=4, alpha=8, all linear layers, seeded A and B), for the PEFT
//! compatibility check. Run from the repository root:
//!   cargo run -p trainer --example make_peft_fixture
//!   python tests/fixtures/scripts/peft_logits.py --base tests/fixtures/parity/llama \
//!       --adapter tests/fixtures/peft/rust_adapter --out tests/fixtures/peft/rust_adapter_peft_logits.safetensors

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use trainer::lora::LoraConfig;
use trainer::model::{Decoder, ModelConfig};
use trainer::rng::Rng;

fn main() -> anyhow::Result<()> {
    let base = Path::new("tests/fixtures/parity/llama");
    let out = Path::new("tests/fixtures/peft/rust_adapter");
    let cfg = ModelConfig::from_file(&base.join("config.json"))?;
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        targets: trainer::lora::LINEAR_MODULES.iter().map(|s| s.to_string()).collect(),
    };
    let mut rng = Rng::new(2024);
    let model = Decoder::load(base, &cfg, DType::F32, &Device::Cpu, Some((&lora, &mut rng)))?;
    // A trained adapter has non-zero B; give it seeded values of a realistic size.
    for (_, a) in model.adapters() {
        let n = a.b.elem_count();
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.05) as f32).collect();
        a.b.set(&Tensor::from_vec(v, a.b.shape(), &Device::Cpu)?)?;
    }
    trainer::output::write_adapter(out, &trainer::model::Model::Causal(model), &lora, "tests/fixtures/parity/llama")?;
    println!("wrote {}", out.display());
    Ok(())
}

//! `oxtune estimate` arithmetic against hand-computed cases: two models × three instances.
//!
//! The calibration is fixed here (a copy of the values in benches/calibration.toml when this
//! test was written) so the benchmark harness can update the real file without breaking it.

use launcher::calibration::Calibration;
use launcher::catalogue::{embedded_prices, find_model, Catalogue};
use launcher::estimate::{estimate, Checkpointing, EstimateInput, Method, TokenCount};

const TEST_CALIBRATION: &str = r#"
schema = 1
date = "test"
[default]
efficiency = 0.25
source = "test"
[[efficiency]]
gpu = "A10G"
method = "lora"
value = 0.30
source = "test"
[[efficiency]]
gpu = "L40S"
method = "lora"
value = 0.30
source = "test"
[[efficiency]]
gpu = "H100"
method = "lora"
value = 0.30
source = "test"
[method_factor]
lora = 1.0
qlora = 0.85
grpo = 1.0
source = "test"
[generation]
bandwidth_efficiency = 0.6
source = "test"
[memory]
cuda_overhead_gib = 1.0
cuda_overhead_source = "test"
headroom_fraction = 0.05
headroom_source = "test"
ce_chunk_tokens = 1024
ce_chunk_source = "test"
attention_scores_saved = false
attention_source = "test"
[overhead]
startup_fixed_s = 150
startup_source = "test"
download_mb_per_s = 250
download_source = "test"
upload_fixed_s = 30
upload_source = "test"
provisioning_s = 270
provisioning_source = "test"
[spot]
typical_savings = 0.65
low_savings = 0.40
high_savings = 0.90
source = "test"
[trainer]
gpus_used = "one"
gpus_used_source = "test"
padding_overhead = 0.10
padding_source = "test"
bytes_per_token = 4.0
bytes_per_token_source = "test"
"#;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const INSTANCES: [&str; 3] = ["ml.g5.xlarge", "ml.g6e.xlarge", "ml.p5.48xlarge"];

fn input(model: &str) -> EstimateInput {
    let cfg = find_model(model).unwrap().arch().unwrap();
    EstimateInput {
        model_name: model.into(),
        config: cfg,
        source_share: 0.75,
        method: Method::Lora,
        lora_r: 16,
        targets: trainer::lora::LINEAR_MODULES.to_vec(),
        max_seq_length: 2048,
        batch: 4,
        grad_accum: 1,
        epochs: 1.0,
        max_steps: None,
        packing: true,
        checkpointing: Checkpointing::Auto,
        tokens: TokenCount::given(10_000_000),
        grpo: None,
        instance_count: 1,
    }
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= want.abs() * 1e-6 + 1e-9, "{what}: got {got}, hand-computed {want}");
}

fn run(model: &str) -> launcher::estimate::Estimate {
    let cal: Calibration = toml::from_str(TEST_CALIBRATION).unwrap();
    let inst: Vec<String> = INSTANCES.iter().map(|s| s.to_string()).collect();
    estimate(&input(model), &Catalogue::embedded(), &embedded_prices("us-east-1").unwrap(), &cal, &inst)
}

/// Llama-3.2-1B: h=2048, i=8192, L=16, 32 heads, 8 KV heads, head_dim 64 (q=2048, kv=512), V=128256, tied.
///
/// Linear weights/layer: q 2048·2048 + k,v 2·2048·512 + o 2048·2048 + gate,up,down 3·2048·8192
///   = 8,388,608 + 2,097,152 + 50,331,648 = 60,817,408; × 16 = 973,078,528.
/// Params = 973,078,528 + embeddings 128256·2048 (262,668,288; tied) + norms 33·2048 (67,584) = 1,235,814,400.
/// Matmul params (lm_head counted: it is a matmul even when tied) = 973,078,528 + 262,668,288 = 1,235,746,816.
/// LoRA r=16, all 7: 16 · Σ(in+out) = 16·(4096+2560+2560+4096+10240+10240+10240) = 704,512/layer; × 16 = 11,272,192.
///
/// Memory (B=4, T=2048 → 8192 tokens in flight):
///   weights  2 · 1,235,814,400 = 2,471,628,800
///   adapter 16 · 11,272,192   = 180,355,072
///   A_layer = 2·(4·2048 + 2·2048 + 2·512 + 3·8192) + 2·7·16 + 4·32 = 75,776 + 224 + 128 = 76,128
///   extras  = final norm 8192·4·2048 (67,108,864) + CE chunk 1024·128256·8 (1,050,673,152)
///             + grads in flight 8192·4·(2048+8192) (335,544,320) = 1,453,326,336
///   act (no ckpt) = 8192·16·76,128 + extras = 9,978,249,216 + 1,453,326,336 = 11,431,575,552
///   act (ckpt)    = 8192·16·2·2048 + 8192·76,128 + extras = 536,870,912 + 623,640,576 + 1,453,326,336 = 2,613,837,824
///   total (no ckpt) = 2,471,628,800 + 180,355,072 + 11,431,575,552 + 1 GiB = 15,157,301,248 (14.116 GiB)
///   → fits without checkpointing on A10G (23028 MiB · 0.95 = 22,939,277,721.6 B), L40S and H100.
///
/// Time: FLOPs/token = 4·1,235,746,816 + 6·11,272,192 + 6·16·2048·2048 = 5,413,273,600.
///   1e7 tokens (packing, 1 epoch). Billable overhead = 150 + (2,471,628,800 + 4e7 data bytes)/250e6 + 30 = 190.0465152 s.
///   A10G: 1e7·5,413,273,600 / (70e12·0.30) = 2577.7493 s (+190.0465 = 2767.7958 s) · $1.408/h = $1.082516
///   L40S: / (362e12·0.30) = 498.4598 s (688.5063 s) · $2.605/h = $0.498211
///   H100 (one GPU of p5.48xlarge): / (989e12·0.30) = 182.4494 s (372.4959 s) · $63.296/h = $6.549306
#[test]
fn llama_3_2_1b_by_hand() {
    let e = run("llama-3.2-1b");
    assert_eq!(e.facts.params, 1_235_814_400);
    assert_eq!(e.facts.matmul_params, 1_235_746_816);
    assert_eq!(e.facts.lora_params, 11_272_192);
    close(e.flops_per_token, 5_413_273_600.0, "FLOPs/token");
    let r = &e.rows;
    assert_eq!(r.iter().map(|r| r.instance_type.as_str()).collect::<Vec<_>>(), INSTANCES);
    close(r[0].memory.weights_gib * GIB, 2_471_628_800.0, "weights");
    close(r[0].memory.adapter_optimizer_gib * GIB, 180_355_072.0, "adapter");
    close(r[0].memory.activations_gib * GIB, 11_431_575_552.0, "activations");
    close(r[0].memory.activations_checkpointed_gib * GIB, 2_613_837_824.0, "activations ckpt");
    close(r[0].memory.total_gib * GIB, 15_157_301_248.0, "total");
    close(r[0].memory.available_gib * GIB, 22_939_277_721.6, "A10G usable");
    for row in r {
        assert!(row.fits && !row.checkpointing, "{}: {}", row.instance_type, row.reason);
    }
    close(r[0].train_seconds, 2577.7493333, "A10G train s");
    close(r[0].billable_seconds, 2767.7958485, "A10G billable s");
    close(r[0].cost_on_demand.unwrap(), 1.0825157, "A10G cost");
    close(r[1].billable_seconds, 688.5063329, "L40S billable s");
    close(r[1].cost_on_demand.unwrap(), 0.4982106, "L40S cost");
    close(r[2].billable_seconds, 372.4958718, "H100 billable s");
    close(r[2].cost_on_demand.unwrap(), 6.5493059, "p5 cost");
    // Spot: typical 65% saving, range 40–90%.
    close(r[1].cost_spot.unwrap(), 0.4982106 * 0.35, "L40S spot");
    assert!(r[1].cheapest && !r[0].cheapest && !r[2].cheapest);
}

/// Llama-3.1-8B: h=4096, i=14336, L=32, 32 heads, 8 KV heads, head_dim 128 (q=4096, kv=1024), V=128256, untied.
///
/// Linear = 32·(4096·4096·2 + 4096·1024·2 + 3·4096·14336) = 6,979,321,856; params = 8,030,261,248;
/// matmul = 6,979,321,856 + lm_head 525,336,576 = 7,504,658,432; LoRA r=16 = 41,943,040 (performance.md: "42M").
///
/// Memory (8192 tokens in flight):
///   weights 16,060,522,496 (14.96 GiB); adapter 16·41,943,040 = 671,088,640
///   A_layer = 2·(4·4096 + 2·4096 + 2·1024 + 3·14336) + 224 + 128 = 139,616
///   extras = 8192·4·4096 (134,217,728) + 1,050,673,152 + 8192·4·(4096+14336) (603,979,776) = 1,788,870,656
///   act (no ckpt) = 8192·32·139,616 + extras = 36,599,496,704 + 1,788,870,656 = 38,388,367,360
///   act (ckpt) = 8192·32·2·4096 + 8192·139,616 + extras = 2,147,483,648 + 1,143,734,272 + 1,788,870,656 = 5,080,088,576
///   total no ckpt = 56,193,720,320 (52.33 GiB): only H100 (81,244,769,484.8 usable) fits.
///   total ckpt   = 22,885,441,536 (21.31 GiB): fits A10G (22,939,277,721.6) by 54 MB, and L40S.
///
/// Time: FLOPs/token = 4·7,504,658,432 + 6·41,943,040 + 6·32·4096·2048 = 31,880,904,704
///   (performance.md §6.2: 31.6 GFLOP + the adapter's 0.25); recompute adds
///   2·7,504,658,432 + 2·41,943,040 + 2·32·4096·2048 = 15,630,073,856.
///   Overhead = 150 + (16,060,522,496 + 4e7)/250e6 + 30 = 244.40209 s.
///   A10G (ckpt): 1e7·47,510,978,560 / 2.1e13 = 22,624.2755 s → 22,868.6776 s · $1.408/h = $8.944194
///   L40S (ckpt): / 1.086e14 = 4,374.8599 s → 4,619.2620 s · $2.605/h = $3.342549
///   H100 (no ckpt): 1e7·31,880,904,704 / 2.967e14 = 1,074.5165 s → 1,318.9186 s · $63.296/h = $23.189520
#[test]
fn llama_3_1_8b_by_hand() {
    let e = run("llama-3.1-8b");
    assert_eq!(e.facts.params, 8_030_261_248);
    assert_eq!(e.facts.matmul_params, 7_504_658_432);
    assert_eq!(e.facts.lora_params, 41_943_040);
    close(e.flops_per_token, 31_880_904_704.0, "FLOPs/token");
    let r = &e.rows;
    close(r[0].memory.weights_gib * GIB, 16_060_522_496.0, "weights");
    close(r[0].memory.activations_gib * GIB, 38_388_367_360.0, "activations");
    close(r[0].memory.activations_checkpointed_gib * GIB, 5_080_088_576.0, "activations ckpt");
    close(r[0].memory.total_gib * GIB, 56_193_720_320.0, "total");
    close(r[0].memory.total_checkpointed_gib * GIB, 22_885_441_536.0, "total ckpt");
    assert!(r[0].fits && r[0].checkpointing, "A10G: {}", r[0].reason);
    assert!(r[0].reason.contains("with gradient checkpointing"));
    assert!(r[1].fits && r[1].checkpointing);
    assert!(r[2].fits && !r[2].checkpointing);
    close(r[0].train_seconds, 22624.2755048, "A10G train s");
    close(r[0].cost_on_demand.unwrap(), 8.9441939, "A10G cost");
    close(r[1].billable_seconds, 4619.262, "L40S billable s");
    close(r[1].cost_on_demand.unwrap(), 3.3425493, "L40S cost");
    close(r[2].billable_seconds, 1318.9186, "H100 billable s");
    close(r[2].cost_on_demand.unwrap(), 23.1895205, "p5 cost");
    assert!(r[1].cheapest);
}

/// Forcing checkpointing off on A10G for the 8B model must not fit, and say why.
#[test]
fn does_not_fit_explains() {
    let cal: Calibration = toml::from_str(TEST_CALIBRATION).unwrap();
    let mut i = input("llama-3.1-8b");
    i.checkpointing = Checkpointing::Off;
    let e = estimate(
        &i,
        &Catalogue::embedded(),
        &embedded_prices("us-east-1").unwrap(),
        &cal,
        &["ml.g5.xlarge".to_string()],
    );
    let r = &e.rows[0];
    assert!(!r.fits);
    assert!(
        r.reason.contains("needs 52.3 GiB") && r.reason.contains("fits with gradient_checkpointing=true"),
        "{}",
        r.reason
    );
}

/// QLoRA weights: 6,979,321,856 linear params · (0.5 + 1/64 + 4/16384) B + 2 · 1,050,939,392 other params
/// + 2 · 58,720,256 (largest linear, 4096·14336, dequantised) = 3,600,416,768 + 2,101,878,784 + 117,440,512.
#[test]
fn qlora_weight_bytes() {
    let cal: Calibration = toml::from_str(TEST_CALIBRATION).unwrap();
    let mut i = input("llama-3.1-8b");
    i.method = Method::Qlora;
    let e = estimate(
        &i,
        &Catalogue::embedded(),
        &embedded_prices("us-east-1").unwrap(),
        &cal,
        &["ml.g5.xlarge".to_string()],
    );
    let want = 6_979_321_856.0 * (0.5 + 1.0 / 64.0 + 4.0 / 16384.0) + 2.0 * 1_050_939_392.0 + 2.0 * 58_720_256.0;
    close(e.rows[0].memory.weights_gib * GIB, want, "qlora weights");
    close(want, 3_600_416_768.0 + 2_101_878_784.0 + 117_440_512.0, "qlora arithmetic");
    // QLoRA efficiency = 0.30 × 0.85.
    close(e.rows[0].efficiency, 0.255, "qlora efficiency");
}

/// p3 (V100) is listed, unsupported (no bf16), never cheapest.
#[test]
fn p3_is_unsupported() {
    let cal: Calibration = toml::from_str(TEST_CALIBRATION).unwrap();
    let e = estimate(&input("qwen2.5-0.5b"), &Catalogue::embedded(), &embedded_prices("us-east-1").unwrap(), &cal, &[]);
    let p3 = e.rows.iter().find(|r| r.instance_type == "ml.p3.2xlarge").unwrap();
    assert!(!p3.supported && !p3.fits && !p3.cheapest && p3.reason.contains("bfloat16"), "{}", p3.reason);
    assert_eq!(e.rows.iter().filter(|r| r.cheapest).count(), 1);
}

/// GRPO adds generation time on top of the policy step.
#[test]
fn grpo_adds_generation() {
    let cal: Calibration = toml::from_str(TEST_CALIBRATION).unwrap();
    let mut i = input("qwen2.5-0.5b");
    i.batch = 8;
    i.max_steps = Some(10);
    let lora = estimate(
        &i,
        &Catalogue::embedded(),
        &embedded_prices("us-east-1").unwrap(),
        &cal,
        &["ml.g6e.xlarge".to_string()],
    );
    i.method = Method::Grpo;
    i.grpo = Some(launcher::estimate::GrpoParams {
        num_generations: 8,
        max_completion_length: 256,
        prompt_length: 128,
        prompts: 1000,
    });
    let grpo = estimate(
        &i,
        &Catalogue::embedded(),
        &embedded_prices("us-east-1").unwrap(),
        &cal,
        &["ml.g6e.xlarge".to_string()],
    );
    assert!(grpo.rows[0].train_seconds > lora.rows[0].train_seconds * 0.1);
    assert!(grpo.rows[0].memory.kv_cache_gib > 0.0);
}

/// FLAN-T5 XL: d_model 2048, 32 heads × 64 (inner 2048), d_ff 5120 gated, 24 + 24 layers, V = 32128, head stored.
///
/// Encoder layer: q,k,v,o 4·2048·2048 (16,777,216) + wi_0, wi_1, wo 3·5120·2048 (31,457,280) = 48,234,496;
///   × 24 = 1,157,627,904. Decoder layer adds cross-attention 16,777,216 → 65,011,712; × 24 = 1,560,281,088.
/// Linear = 2,717,908,992; head 32128·2048 = 65,798,144; matmul = 2,783,707,136; params = 2,849,757,184
///   (+ shared 65,798,144, norms, two position-bias tables). `wo` (kept dense by QLoRA) = 48·5120·2048 = 503,316,480.
/// LoRA r=16 on all 7: encoder layer 4·16·4096 + 2·16·7168 + 16·7168 = 606,208 (× 24 = 14,548,992);
///   decoder layer + 4·16·4096 = 868,352 (× 24 = 20,840,448); total 35,389,440.
/// Per token with input share 0.75: matmul 0.75·1,157,627,904 + 0.25·(1,560,281,088 + 65,798,144) = 1,274,740,736;
///   LoRA 0.75·14,548,992 + 0.25·20,840,448 = 16,121,856; attention units 2·0.75·24 + 3·0.25·24 = 54.
#[test]
fn flan_t5_xl_by_hand() {
    let cal: Calibration = toml::from_str(TEST_CALIBRATION).unwrap();
    let mut inp = input("flan-t5-xl");
    inp.targets = vec!["q", "k", "v", "o", "wi_0", "wi_1", "wo"];
    (inp.max_seq_length, inp.batch, inp.packing) = (640, 8, false);
    let inst: Vec<String> = INSTANCES.iter().map(|s| s.to_string()).collect();
    let e = estimate(&inp, &Catalogue::embedded(), &embedded_prices("us-east-1").unwrap(), &cal, &inst);
    let f = &e.facts;
    assert_eq!((f.params, f.linear_params, f.matmul_params), (2_849_757_184, 2_717_908_992, 2_783_707_136));
    assert_eq!((f.lora_params, f.dense_linear_params), (35_389_440, 503_316_480));
    close(f.token_matmul_params, 1_274_740_736.0, "matmul weights per token");
    close(f.token_lora_params, 16_121_856.0, "LoRA weights per token");
    close(f.attention_layers, 54.0, "attention units");
    let want = 4.0 * 1_274_740_736.0 + 6.0 * 16_121_856.0 + 6.0 * 54.0 * 2048.0 * e.seq_for_attention;
    close(e.flops_per_token, want, "FLOPs/token");
    // 3B parameters fit one A10G (ml.g5.*) with LoRA at 8 pairs of 640 tokens, without checkpointing.
    assert!(e.rows[0].fits && !e.rows[0].checkpointing, "{}", e.rows[0].reason);
    // QLoRA keeps `wo` in bf16: the weights are the NF4 projections, `wo` and the rest in bf16, one dequant buffer.
    inp.method = Method::Qlora;
    let q = estimate(&inp, &Catalogue::embedded(), &embedded_prices("us-east-1").unwrap(), &cal, &inst);
    let nf4 = (2_717_908_992u64 - 503_316_480) as f64 * (0.5 + 1.0 / 64.0 + 4.0 / 16384.0);
    let rest = 2.0 * (2_849_757_184u64 - (2_717_908_992 - 503_316_480)) as f64;
    close(q.rows[0].memory.weights_gib * GIB, nf4 + rest + 2.0 * (5120.0 * 2048.0), "QLoRA weights");
}

/// Data parallelism: with the trainer on every GPU (`gpus_used = "all"`), 1×g5.12xlarge (4×A10G) and
/// 2×g5.12xlarge train at 4 × 0.90 and 8 × 0.85 one A10G's rate (g5.2xlarge); each instance is
/// billed for the whole run; GRPO stays on one GPU.
#[test]
fn several_gpus_and_instances_scale_by_the_stated_factor() {
    let all = TEST_CALIBRATION.replace(
        "gpus_used = \"one\"",
        "gpus_used = \"all\"\nscaling_one_host = 0.90\nscaling_hosts = 0.85\nscaling_source = \"test\"",
    );
    let cal: Calibration = toml::from_str(&all).unwrap();
    let choices: Vec<String> =
        ["ml.g5.2xlarge", "ml.g5.12xlarge", "2xml.g5.12xlarge"].iter().map(|s| s.to_string()).collect();
    let prices = embedded_prices("us-east-1").unwrap();
    let e = estimate(&input("llama-3.2-1b"), &Catalogue::embedded(), &prices, &cal, &choices);
    let [one, four, eight] = &e.rows[..] else { panic!("three rows: {:?}", e.rows.len()) };
    assert_eq!((one.ranks, four.ranks, eight.ranks), (1, 4, 8));
    assert_eq!((four.instance_count, eight.instance_count, eight.label()), (1, 2, "2×ml.g5.12xlarge".to_string()));
    close(four.train_seconds, one.train_seconds / (4.0 * 0.90), "4 ranks on one host");
    close(eight.train_seconds, one.train_seconds / (8.0 * 0.85), "8 ranks on two hosts");
    let rate = |r: &launcher::estimate::Row| r.usd_per_hour.unwrap();
    close(eight.cost_on_demand.unwrap(), eight.billable_seconds / 3600.0 * rate(eight) * 2.0, "two instances billed");
    // Per-GPU memory: every rank holds the whole job.
    close(four.memory.total_gib, one.memory.total_gib, "memory per GPU");
    assert!(e.notes.iter().any(|n| n.contains("90% of linear scaling on one host, 85% across hosts")), "{:?}", e.notes);

    let mut g = input("qwen2.5-0.5b");
    g.method = Method::Grpo;
    g.max_steps = Some(10);
    g.batch = 8;
    g.grpo = Some(launcher::estimate::GrpoParams {
        num_generations: 8,
        max_completion_length: 64,
        prompt_length: 64,
        prompts: 100,
    });
    let grpo = estimate(&g, &Catalogue::embedded(), &prices, &cal, &choices[1..2]);
    assert_eq!((grpo.rows[0].ranks, grpo.rows[0].gpus_used), (1, 1));
    assert!(grpo.notes.iter().any(|n| n.contains("GRPO trains on one GPU")), "{:?}", grpo.notes);
    assert!(launcher::estimate::instance_choice("0xml.g5.xlarge", 1).is_err());
    assert_eq!(launcher::estimate::instance_choice("3×ml.p5.48xlarge", 1).unwrap(), ("ml.p5.48xlarge".into(), 3));
}

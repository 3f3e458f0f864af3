#!/usr/bin/env python3
"""Hugging Face baselines for oxtune's benchmark harness (benches/README.md).

Same architectures (benches/configs/*.json, random weights via AutoModelForCausalLM.from_config),
same LoRA config (r, alpha, dropout, all linear layers), same batch and sequence, AdamW, bf16 on CUDA:

  gemm   measured bf16 matmul throughput (torch.matmul, n x n x n)
  lora   transformers + PEFT, SDPA attention, AdamW (fused on CUDA), grad-norm clip 1.0
  qlora  the same on a bitsandbytes NF4 (double quant) base; skipped when bitsandbytes is missing
  grpo   TRL GRPOTrainer (no vLLM); skipped when trl (or datasets) is missing
  generate  greedy `model.generate` with the KV cache on the PEFT model (exactly --new-tokens per row)

Each run prints `RESULT {json}` and appends the JSON line to --json. A missing optional package or an
out-of-memory error gives a result with "status": "skipped" / "oom" and a reason instead of a crash.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    "tiny": os.path.join(HERE, "configs", "tiny.json"),
    "llama-3.2-1b": os.path.join(HERE, "configs", "llama-3.2-1b.json"),
    "llama-3.1-8b": os.path.join(HERE, "configs", "llama-3.1-8b.json"),
}
FLOPS_FORMULA = (
    "4*N_mm + 6*N_lora + 6*L*T*d (N_mm = decoder projection weights + lm_head; N_lora = LoRA A+B params on "
    "q,k,v,o,gate,up,down; L layers; d = heads*head_dim; T = sequence length); launcher/src/estimate.rs "
    "train_flops_per_token"
)


def versions():
    out = {"python": sys.version.split()[0]}
    for name in ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets"]:
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            out[name] = None
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return out


def load_arch(name):
    path = CONFIGS.get(name, name)
    with open(path) as f:
        return json.load(f)


def flops_per_token(cfg, rank, seq):
    """The launcher's formula (launcher/src/estimate.rs), so both sides report the same FLOPs."""
    h, i, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    kvh = cfg.get("num_key_value_heads") or heads
    q, kv = heads * hd, kvh * hd
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    linear = L * sum(a * b for a, b in shapes)
    lora = L * sum(rank * (a + b) for a, b in shapes)
    return 4.0 * (linear + V * h) + 6.0 * lora + 6.0 * L * q * seq


def emit(args, result):
    result.setdefault("impl", "hf")
    result.setdefault("versions", versions())
    line = json.dumps(result)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    print("RESULT " + line, flush=True)


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory(device):
    import torch

    if device != "cuda":
        return {"peak_memory_bytes": None, "peak_reserved_bytes": None, "memory_note": "not measured on the CPU"}
    return {
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "memory_note": "torch.cuda.max_memory_allocated, reset after the model was built (warm-up and timed steps; weights included)",
    }


def base(args, method):
    return {
        "impl": "hf",
        "method": method,
        "arch": args.arch,
        "device": args.device,
        "dtype": args.dtype_name,
        "rank": args.rank,
        "lora_alpha": args.alpha,
        "lora_dropout": args.dropout,
        "target_modules": "all-linear",
        "gradient_checkpointing": args.gradient_checkpointing,
        "warmup": args.warmup,
        "steps": args.steps,
        "seed": args.seed,
    }


def build_model(args, cfg_json):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_json = {k: v for k, v in cfg_json.items() if k not in ("architectures", "torch_dtype")}
    model_type = cfg_json.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_json)
    config.use_cache = False
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=args.torch_dtype, attn_implementation="sdpa")
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=args.torch_dtype, attn_implementation="sdpa")
    return model


def quantize_linears(model, compute_dtype, device):
    """Every decoder nn.Linear (not lm_head) → bitsandbytes Linear4bit, NF4 with double quantisation,
    blocksize 64 (what BitsAndBytesConfig(load_in_4bit, nf4, double_quant) loads), layer by layer."""
    import bitsandbytes as bnb
    import torch

    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64
            ).to(device)
            if child.bias is not None:
                q.bias = child.bias
            setattr(parent, name, q)
            del child
    model.is_loaded_in_4bit = True  # PEFT dispatches its bnb LoRA layer on this flag
    if device == "cuda":
        torch.cuda.empty_cache()
    return model


def add_lora(args, model):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def run_sft(args, method):
    import torch

    out = base(args, method)
    if method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # noqa: BLE001
            out.update(status="skipped", reason=f"bitsandbytes is not importable ({type(e).__name__}: {e})")
            return out
    cfg = load_arch(args.arch)
    t0 = time.perf_counter()
    model = build_model(args, cfg)
    if method == "qlora":
        model = quantize_linears(model, args.torch_dtype, args.device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = add_lora(args, model)
    model.train()
    sync(args.device)
    out["model_build_s"] = time.perf_counter() - t0
    if args.device == "cuda":
        out["weight_memory_bytes"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        out["weight_memory_bytes"] = None
    out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["lora_layer_types"] = sorted({type(m).__name__ for n, m in model.named_modules() if hasattr(m, "lora_A")})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=(args.device == "cuda"))
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    B, T = args.batch, args.seq
    times, losses = [], []
    try:
        for step in range(args.warmup + args.steps):
            ids = torch.randint(0, cfg["vocab_size"], (B, T), generator=gen).to(args.device)
            sync(args.device)
            t = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            sync(args.device)
            dt = time.perf_counter() - t
            if step >= args.warmup:
                times.append(dt)
    except torch.OutOfMemoryError as e:
        out.update(status="oom", reason=str(e).splitlines()[0], **peak_memory(args.device))
        return out
    tokens = B * T
    tps = tokens * len(times) / sum(times)
    fpt = flops_per_token(cfg, args.rank, T)
    out.update(
        status="ok",
        seq=T,
        batch=B,
        tokens_per_step=tokens,
        tokens_per_sec=tps,
        step_time_s=sum(times) / len(times),
        step_times_s=times,
        losses=losses,
        flops_per_token=fpt,
        flops_formula=FLOPS_FORMULA,
        model_tflops_per_sec=tps * fpt / 1e12,
        timing_note="wall clock per step between torch.cuda.synchronize() calls (batch creation excluded)",
        **peak_memory(args.device),
    )
    return out


def word_tokenizer(vocab_size):
    """An offline tokenizer whose ids are exactly the words t0..t{V-1} (random-weight models have none)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2", pad_token="t0", padding_side="left"
    )


def run_grpo(args):
    import torch

    out = base(args, "grpo")
    out.update(prompts=args.prompts, generations=args.generations, max_completion_length=args.completion,
               prompt_len=args.prompt_len)
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:  # noqa: BLE001
        out.update(status="skipped", reason=f"trl/datasets not importable ({type(e).__name__}: {e})")
        return out
    cfg = load_arch(args.arch)
    V = cfg["vocab_size"]
    tok = word_tokenizer(V)
    gen = torch.Generator().manual_seed(args.seed)
    total = args.warmup + args.steps
    rows = [
        {"prompt": " ".join(f"t{int(i)}" for i in torch.randint(3, V, (args.prompt_len,), generator=gen))}
        for _ in range(total * args.prompts)
    ]
    model = build_model(args, cfg)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seqs = args.prompts * args.generations
    micro = min(max(args.batch, 1), seqs)
    if seqs % micro:
        micro = seqs

    def length_reward(completions, **kwargs):
        return [-len(c.split()) / args.completion for c in completions]

    gen_stats = {"seconds": 0.0, "tokens": 0, "calls": []}

    def timed_generate(orig):
        def wrapper(*a, **kw):
            sync(args.device)
            t = time.perf_counter()
            res = orig(*a, **kw)
            sync(args.device)
            seq = res.sequences if hasattr(res, "sequences") else res
            inp = kw.get("input_ids", a[0] if a else None)
            new = seq.shape[1] - (inp.shape[1] if inp is not None else 0)
            gen_stats["calls"].append((time.perf_counter() - t, int(seq.shape[0]) * int(new)))
            return res

        return wrapper

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], None

        def on_step_begin(self, a, state, control, **kw):
            sync(args.device)
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync(args.device)
            self.times.append(time.perf_counter() - self.t)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        gargs = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=seqs // micro,
            num_generations=args.generations,
            max_completion_length=args.completion,
            temperature=1.0,
            beta=0.0,
            learning_rate=2e-4,
            lr_scheduler_type="constant",
            max_steps=total,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            bf16=(args.torch_dtype == torch.bfloat16),
            use_cpu=(args.device == "cpu"),
            gradient_checkpointing=args.gradient_checkpointing,
            seed=args.seed,
            dataloader_num_workers=0,
        )
        lcfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=gargs,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lcfg,
            callbacks=[timer],
        )
        trainer.model.generate = timed_generate(trainer.model.generate)
        try:
            trainer.train()
        except torch.OutOfMemoryError as e:
            out.update(status="oom", reason=str(e).splitlines()[0], **peak_memory(args.device))
            return out
    trl_times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    # The callback should see one step per optimizer step; if not, use TRL's own step_time metric.
    times = timer.times if len(timer.times) == total else trl_times
    steps = times[args.warmup:]
    calls = gen_stats["calls"]
    # One generate call per step when the whole generation batch is sampled at once; keep the timed steps'.
    per_step = max(1, len(calls) // total)
    timed_calls = calls[args.warmup * per_step:]
    gsec = sum(c[0] for c in timed_calls)
    gtok = sum(c[1] for c in timed_calls)
    out.update(
        status="ok",
        step_time_s=sum(steps) / len(steps) if steps else None,
        step_times_s=steps,
        trl_step_times_s=trl_times[args.warmup:],
        generation_tokens_per_sec=(gtok / gsec) if gsec > 0 else None,
        generation_s=(gsec / len(steps)) if steps else None,
        generate_calls_per_step=per_step,
        generated_tokens_note="generated tokens = rows x new positions per generate() call (padding after EOS included)",
        losses=[h.get("loss") for h in trainer.state.log_history if "loss" in h],
        timing_note="step time from TrainerCallback on_step_begin/on_step_end with torch.cuda.synchronize(); generation timed around model.generate",
        **peak_memory(args.device),
    )
    return out


def run_gemm(args):
    import torch

    n, iters = args.n, args.iters
    a = torch.randn(n, n, device=args.device, dtype=args.torch_dtype)
    b = torch.randn(n, n, device=args.device, dtype=args.torch_dtype)
    for _ in range(3):
        a @ b
    sync(args.device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(args.device)
    secs = time.perf_counter() - t
    return {
        "impl": "torch",
        "method": "gemm",
        "device": args.device,
        "dtype": args.dtype_name,
        "n": n,
        "iters": iters,
        "seconds": secs,
        "tflops": 2.0 * n**3 * iters / secs / 1e12,
        "note": "torch.matmul (cuBLAS on CUDA), all n x n, 2*n^3 FLOPs per product",
        "status": "ok",
    }


def run_generate(args):
    """Greedy generation as oxtune-bench generate runs it: random prompts, exactly new_tokens per row."""
    import torch

    model = add_lora(args, build_model(args, load_arch(args.arch)))
    model.eval()
    model.config.use_cache = True
    g = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.prompt_len), generator=g).to(args.device)
    mask = torch.ones_like(ids)
    kw = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    secs = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            sync(args.device)
            t = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, **kw)
            sync(args.device)
            if out.shape[1] - args.prompt_len != args.new_tokens:
                raise RuntimeError(f"generated {out.shape[1] - args.prompt_len} tokens, wanted {args.new_tokens}")
            if i >= args.warmup:
                secs.append(time.perf_counter() - t)
    median = sorted(secs)[len(secs) // 2]
    return {
        "impl": "hf",
        "status": "ok",
        "method": "generate",
        "arch": args.arch,
        "device": args.device,
        "dtype": args.dtype_name,
        "rank": args.rank,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "warmup": args.warmup,
        "iters": args.iters,
        "seconds": secs,
        "median_s": median,
        "tokens_per_sec": args.batch * args.new_tokens / median,
        "torch_threads": torch.get_num_threads(),
        "timing_note": "wall time of each PeftModel.generate call (greedy, KV cache, SDPA), median of the timed runs",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["gemm", "lora", "qlora", "grpo", "generate"])
    p.add_argument("--arch", default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["auto", "bf16", "f32"], default="auto")
    p.add_argument("--json")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    if args.alpha is None:
        args.alpha = 2.0 * args.rank
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device == "cuda" else "f32"
    args.dtype_name = args.dtype
    args.torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        if args.method == "gemm":
            result = run_gemm(args)
        elif args.method == "grpo":
            result = run_grpo(args)
        elif args.method == "generate":
            result = run_generate(args)
        else:
            result = run_sft(args, args.method)
    except Exception as e:  # noqa: BLE001 - a failed baseline is a result row, not a crashed harness
        traceback.print_exc()
        result = base(args, args.method)
        result.update(status="error", reason=f"{type(e).__name__}: {e}"[:500])
    emit(args, result)
    if result.get("status") == "error":
        sys.exit(1)


if __name__ == "__main__":
    main()

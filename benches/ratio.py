"""Prints oxtune's tokens/s against transformers + PEFT's from the last four result lines of FILE
(two alternating rounds of each side, as benches/*-cpu.sh write them), with the worst and best ratio."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-4:]
ox = [r["tokens_per_sec"] for r in rows if r["impl"] == "oxtune"]
hf = [r["tokens_per_sec"] for r in rows if r["impl"] == "hf"]
print(f"oxtune {min(ox):.0f}-{max(ox):.0f} tokens/s, transformers+PEFT {min(hf):.0f}-{max(hf):.0f} tokens/s: "
      f"{min(ox)/max(hf):.2f}-{max(ox)/min(hf):.2f}x")

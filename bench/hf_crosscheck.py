#!/usr/bin/env python3
"""Outside check of kiln's models: Hugging Face transformers on the same checkpoint.

Loads a checkpoint directory (e.g. from `kiln models synth`) with transformers
in bf16 on the GPU, runs it teacher-forced on the tokens kiln decoded
(`kiln validate --dump-logits` writes them with each configuration's logits),
compares transformers' logits with every kiln configuration's, and times
transformers' own greedy decode from the same prompt. It also runs
transformers in float32 on the same bf16 weights: that is the model's math
without bf16 activations, so each bf16 implementation's distance to it (kiln's
configurations and transformers' own bf16 run) says which one rounds least.

usage: hf_crosscheck.py --checkpoint DIR --kiln KILN_OUT_DIR [--json FILE]
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--kiln", required=True, help="folder with logits_*.safetensors and validate_*.json")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"transformers is not installed here ({e}); nothing compared", file=sys.stderr)
        return 2

    files = glob.glob(os.path.join(args.kiln, "logits_*.safetensors"))
    details = glob.glob(os.path.join(args.kiln, "validate_*.json"))
    if not files or not details:
        print(f"{args.kiln}: no logits_*.safetensors / validate_*.json (run kiln validate --dump-logits)", file=sys.stderr)
        return 2
    kiln = load_file(files[0])
    report = json.load(open(details[0]))
    prompt = report["prompt"]
    tokens = kiln["tokens"].tolist()
    n_steps = len(tokens) - len(prompt)

    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, torch_dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor([tokens[:-1]], device="cuda")
    with torch.no_grad():
        logits = model(ids).logits[0].float()  # [L, V]
    # Step j's logits follow position len(prompt)-1+j.
    hf = logits[len(prompt) - 1 : len(prompt) - 1 + n_steps].cpu()
    scale = hf.abs().max().item()

    out = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "checkpoint": args.checkpoint,
        "model": report["model"],
        "steps": n_steps,
        "hf_max_abs_logit": scale,
        "configs": {},
    }
    def distance(k, ref, ref_scale):
        d = (k - ref).abs()
        return {
            "max_abs_diff": d.max().item(),
            "mean_abs_diff": d.mean().item(),
            "max_abs_diff_rel_to_max_logit": d.max().item() / max(ref_scale, 1e-30),
            "top1_agreement": (k.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        }

    for name, t in kiln.items():
        if name == "tokens":
            continue
        out["configs"][name] = distance(t[: hf.shape[0]].float(), hf, scale)

    # The same weights in float32: the reference every bf16 run is measured against.
    model32 = AutoModelForCausalLM.from_pretrained(args.checkpoint, torch_dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = model32(ids).logits[0].float()[len(prompt) - 1 : len(prompt) - 1 + n_steps].cpu()
    del model32
    torch.cuda.empty_cache()
    ref_scale = ref.abs().max().item()
    out["against_transformers_f32"] = {"transformers_bf16": distance(hf, ref, ref_scale)}
    for name, t in kiln.items():
        if name != "tokens":
            out["against_transformers_f32"][name] = distance(t[: ref.shape[0]].float(), ref, ref_scale)

    # transformers' own greedy decode speed from the same prompt.
    p = torch.tensor([prompt], device="cuda")
    rates = []
    for _ in range(args.runs + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(p, max_new_tokens=n_steps, min_new_tokens=n_steps, do_sample=False)
        torch.cuda.synchronize()
        rates.append(n_steps / (time.perf_counter() - t0))
    out["hf_generate_tps_median"] = statistics.median(rates[1:])  # first run is warm-up
    out["hf_generate_tps_runs"] = rates[1:]

    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

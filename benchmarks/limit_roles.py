"""The two comparison programs of bench_limit.py, each run in a fresh process.

``python benchmarks/limit_roles.py limit WORK --tokens N --width W --bits 8,6,5,4,3``
    The bare limit: the least work an audit of these configurations needs. One FP forward +
    encode per batch (FP features kept dense in memory), then per configuration: RTN of the
    attention and MLP matrices from a kept FP copy, forward + encode, and the per-feature float64
    sums ``sum y, sum y^2, sum x y`` that Pearson r needs (``sum x, sum x^2`` once, in the FP pass).
    No perplexity, no bootstrap, no fit check, no result files.

``python benchmarks/limit_roles.py reference WORK ...``
    A faithful re-implementation of the reference study's loop (evan-d30/sae-feature-survival-
    quantization, scripts/02_pythia_phase2b_streaming_final.py, ``run_tl_condition``): an FP
    baseline condition and then one condition per bit width, each of which restores the work
    model from a CPU state dict (``load_state_dict`` + ``gc.collect``), quantizes it, runs a
    separate perplexity pass, then streams the FP reference model and the work model afresh over
    every batch (features ``.cpu().to(float64)``, naive float64 sums, ``gc.collect`` per batch),
    and writes each condition's summary and per-feature CSV. It imports what the study imports
    (sae_lens, transformer_lens, pandas). Differences, all in the reference's favour: Hugging Face
    modules instead of TransformerLens's HookedTransformer (no hook-point overhead), per-row RTN
    scales, and 16 contexts of 128 per batch (the study's 4 x 512 tokens).

Each prints one JSON line: compute seconds per section and a fingerprint of the result.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from limit_workload import LAYER, tokens  # noqa: E402

TARGETS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def _model(work: Path, device: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(work / "model").to(device, getattr(torch, dtype)).eval()


def _sync(device: str) -> None:
    """Wait for the device's queued work, so that a host clock read after it times that work."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _capture(model):
    grab = {}
    model.gpt_neox.layers[LAYER].register_forward_hook(
        lambda m, i, o: grab.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    return grab


def _rtn_(w, w_fp, bits: int) -> None:
    """Symmetric per-row absmax RTN of ``w_fp`` written into ``w``."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    scale = w_fp.abs().amax(dim=1, keepdim=True) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    torch.mul(torch.round(w_fp / scale).clamp_(-qmax - 1, qmax), scale, out=w)


def run_limit(args) -> dict:
    import torch
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    dev = args.device
    model = _model(args.work, dev, args.dtype)
    ts = tokens(args.work, args.tokens)
    sae = {k: v.to(dev) for k, v in load_file(args.work / f"sae-{args.width}" / "sae_weights.safetensors").items()}
    w_enc, b_enc, w_dec, b_dec = sae["W_enc"], sae["b_enc"], sae["W_dec"], sae["b_dec"]
    grab = _capture(model)
    targets = [m.weight for n, m in model.named_modules() if n.endswith(TARGETS)]
    fp_w = [w.detach().clone() for w in targets]
    encode = lambda x: torch.relu((x.float() - b_dec) @ w_enc + b_enc)  # noqa: E731 - the SAE is float32
    out: dict = {"load_s": time.perf_counter() - t0, "configs_s": []}
    del w_dec
    with torch.no_grad():
        t1 = time.perf_counter()
        fp, sx, sxx, fires = [], 0.0, 0.0, 0
        for ids, keep in ts.batches(8):
            model(ids.to(dev), use_cache=False)
            f = encode(grab["h"][keep.to(dev)])
            fp.append(f)
            f64 = f.double()
            sx = sx + f64.sum(0)
            sxx = sxx + (f64 * f64).sum(0)
            fires = fires + (f > 0).sum(0)
        _sync(dev)
        out["fp_s"] = time.perf_counter() - t1
        n = ts.n_tokens
        for bits in args.bits:
            t2 = time.perf_counter()
            for w, w0 in zip(targets, fp_w):
                _rtn_(w, w0, bits)
            sy = syy = sxy = 0.0
            for i, (ids, keep) in enumerate(ts.batches(8)):
                model(ids.to(dev), use_cache=False)
                y = encode(grab["h"][keep.to(dev)]).double()
                x = fp[i].double()
                sy = sy + y.sum(0)
                syy = syy + (y * y).sum(0)
                sxy = sxy + (x * y).sum(0)
            cov = sxy - sx * sy / n
            r = cov / torch.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n)).clamp_min(1e-30)
            _sync(dev)
            out["configs_s"].append(time.perf_counter() - t2)
            out.setdefault("survived", []).append(float((r[fires > 0.001 * n] > 0.9).double().mean()))
        for w, w0 in zip(targets, fp_w):
            w.copy_(w0)
    out["compute_s"] = out["fp_s"] + sum(out["configs_s"])
    return out


def run_reference(args) -> dict:
    import gc
    import math
    import tempfile

    import numpy as np
    import pandas as pd
    import torch
    import transformer_lens  # noqa: F401 - the study imports it (its HookedTransformer)
    from sae_lens import SAE

    t0 = time.perf_counter()
    dev = args.device
    model_ref, model_work = _model(args.work, dev, args.dtype), _model(args.work, dev, args.dtype)
    grab_ref, grab_work = _capture(model_ref), _capture(model_work)
    tokens_2d = tokens(args.work, args.tokens).contexts.to(dev)
    sae = SAE.load_from_disk(str(args.work / f"sae-{args.width}"), device=dev).eval()
    original_state = {k: v.detach().cpu().clone() for k, v in model_work.state_dict().items()}
    out_dir = Path(tempfile.mkdtemp(prefix="reference-"))
    out: dict = {"load_s": time.perf_counter() - t0, "configs_s": []}
    batch = 16

    def restore():
        model_work.load_state_dict({k: v.to(dev) for k, v in original_state.items()})
        model_work.eval()
        gc.collect()

    def feats(model, grab, b):
        model(b, use_cache=False)
        acts = grab["h"].detach().reshape(-1, grab["h"].shape[-1])
        return sae.encode(acts.float()).detach().cpu().to(torch.float64)

    with torch.no_grad():
        for cond in [None, *args.bits]:
            t1 = time.perf_counter()
            restore()
            if cond is not None:
                for n, m in model_work.named_modules():
                    if n.endswith(TARGETS):
                        _rtn_(m.weight, m.weight.detach().clone(), cond)
            losses = [float(model_work(tokens_2d[i:i + batch], labels=tokens_2d[i:i + batch],
                                       use_cache=False).loss.item())
                      for i in range(0, tokens_2d.shape[0], batch)]
            ppl = float(np.exp(np.mean(losses)))
            d = sae.cfg.d_sae
            z = lambda: torch.zeros(d, dtype=torch.float64)  # noqa: E731
            n, sx, sy, sxx, syy, sxy, fire, peak = 0, z(), z(), z(), z(), z(), z(), z()
            for i in range(0, tokens_2d.shape[0], batch):
                b = tokens_2d[i:i + batch]
                x, y = feats(model_ref, grab_ref, b), feats(model_work, grab_work, b)
                n += x.shape[0]
                sx += x.sum(0)
                sy += y.sum(0)
                sxx += (x ** 2).sum(0)
                syy += (y ** 2).sum(0)
                sxy += (x * y).sum(0)
                fire += (x > 0).sum(0)
                peak = torch.maximum(peak, x.max(0).values)
                del x, y, b
                gc.collect()
            num = sxy - sx * sy / n
            den = torch.sqrt(torch.clamp((sxx - sx ** 2 / n) * (syy - sy ** 2 / n), min=1e-12))
            corr = torch.clamp(num / den, -1.0, 1.0)
            active = fire / n > 0.001
            label = "fp" if cond is None else f"int{cond}"
            pd.DataFrame([{"condition": label, "perplexity": ppl, "survived": float((corr[active] > 0.9).double().mean()),
                           "median_corr": float(corr[active].median())}]).to_csv(out_dir / f"{label}_summary.csv")
            pd.DataFrame({"feature_id": np.arange(d), "corr": corr.numpy(), "firing_rate": (fire / n).numpy(),
                          "mean_activation": (sx / n).numpy(), "max_activation": peak.numpy(),
                          "active": active.numpy()}).to_csv(out_dir / f"{label}_per_feature.csv", index=False)
            restore()
            out["configs_s"].append(time.perf_counter() - t1)
            if cond is not None:
                out.setdefault("survived", []).append(float((corr[active] > 0.9).double().mean()))
            assert math.isfinite(ppl)
    out["compute_s"] = sum(out["configs_s"])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("limit", "reference"))
    p.add_argument("work", type=Path)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[8, 6, 5, 4, 3])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = p.parse_args()
    out = (run_limit if args.role == "limit" else run_reference)(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""featsurv's `pythia-70m` preset against an independent re-implementation of the reference loop.

The reference study's published code (evan-d30/sae-feature-survival-quantization, scripts 02 and
05) is re-implemented below without any featsurv code: a TransformerLens ``HookedTransformer``
from ``from_pretrained`` with its default processing, its RTN (absmax over every dimension but
the last of W_Q/W_K/W_V/W_O/W_in/W_out, ``round(w/scale).clamp(-2^(b-1), 2^(b-1)-1) * scale``),
its per-tensor magnitude pruning (``k = floor(s*n)``, every weight at or below the k-th smallest
|w| pruned), its streaming Pearson (raw float64 sums, clamped), its perplexity (the mean of
per-batch mean losses from ``model(batch, return_type="loss")``), its 6-step bisection toward
the INT6 perplexity and its 4-statistic logistic predictor (scaler fitted on all features).
Running this file as a script writes the reference's numbers for the offline hub of
``hub_cache.py``; the tests run featsurv's CLI with the preset on the same files and compare.

The run is shrunk to keep the tests fast (contexts of 32, 128 tokens, batches of 3 so the last
batch is short, 4 bisection steps); both sides use the same sizes. Where the reference computes
something twice with the same result (FP features per condition, a second ``from_pretrained``
for its work model, a loss pass and a features pass per condition), it is computed once here.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SEQ_LEN, N_TOKENS, BATCH = 32, 128, 3
BITS, MATCH_BITS, STEPS = (8, 6, 4), 6, 4
MODEL_TL_NAME, SAE_RELEASE, HOOK = "pythia-70m-deduped", "pythia-70m-deduped-res-sm", "blocks.4.hook_resid_post"
FIRING, SURVIVED, DAMAGED = 0.001, 0.9, 0.5
TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


# --------------------------------------------------------------------------- the reference loop
def reference(out_path: str) -> None:  # pragma: no cover - runs in a subprocess
    import copy

    import numpy as np
    import torch
    from datasets import load_dataset
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    torch.set_grad_enabled(False)
    model_ref = HookedTransformer.from_pretrained(MODEL_TL_NAME, device="cpu")
    model_work = copy.deepcopy(model_ref)  # the reference loads it a second time
    model_ref.eval()
    model_work.eval()
    ds = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
    full_text = "\n\n".join(x for x in ds["text"] if x.strip())
    tokens = torch.tensor(model_ref.tokenizer.encode(full_text, add_special_tokens=False), dtype=torch.long)
    n_seqs = min(N_TOKENS, tokens.shape[0]) // SEQ_LEN
    tokens_2d = tokens[:n_seqs * SEQ_LEN].reshape(n_seqs, SEQ_LEN)
    sae = SAE.from_pretrained(release=SAE_RELEASE, sae_id=HOOK, device="cpu")
    sae = sae[0] if isinstance(sae, tuple) else sae
    sae.eval()
    original = {k: v.detach().clone() for k, v in model_work.state_dict().items()}

    def restore():
        model_work.load_state_dict(original)

    def rtn(model, bits):
        qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        for name, param in model.named_parameters():
            if any(t in name for t in TARGETS):
                w = param.data
                scale = w.abs().amax(dim=tuple(range(w.ndim - 1)), keepdim=True) / qmax
                scale = torch.where(scale == 0, torch.ones_like(scale), scale)
                param.data = (torch.round(w / scale).clamp(qmin, qmax) * scale).to(w.dtype)

    def prune(model, sparsity):
        for name, param in model.named_parameters():
            if any(t in name for t in TARGETS):
                w = param.data
                flat = w.abs().flatten()
                k = int(math.floor(sparsity * flat.numel()))
                if k <= 0:
                    continue
                thresh = flat.max() + 1 if k >= flat.numel() else torch.kthvalue(flat, k).values
                param.data.mul_((w.abs() > thresh).to(w.dtype))

    def batches():
        return [tokens_2d[i:i + BATCH] for i in range(0, tokens_2d.shape[0], BATCH)]

    def run(model, batch, with_features):
        """``model(batch, return_type="loss")`` and, in the same pass, the SAE features at HOOK."""
        if not with_features:
            return float(model(batch, return_type="loss").item()), None
        loss, cache = model.run_with_cache(batch, return_type="loss", names_filter=[HOOK])
        acts = cache[HOOK].reshape(-1, cache[HOOK].shape[-1])
        return float(loss.item()), sae.encode(acts.float()).detach().cpu().to(torch.float64)

    def perplexity(model, with_features=False):
        losses, counts, feats = [], [], []
        for batch in batches():
            loss, f = run(model, batch, with_features)
            losses.append(loss)
            counts.append(int(batch.shape[0] * (batch.shape[1] - 1)))
            feats.append(f)
        return float(np.exp(np.mean(losses))), losses, counts, feats

    fp_feats = perplexity(model_ref, with_features=True)[3]

    def compare(feats):
        d = sae.cfg.d_sae
        s = {k: torch.zeros(d, dtype=torch.float64) for k in ("x", "y", "x2", "y2", "xy", "fire", "max")}
        n = 0
        for x, y in zip(fp_feats, feats):
            n += x.shape[0]
            s["x"] += x.sum(0)
            s["y"] += y.sum(0)
            s["x2"] += (x ** 2).sum(0)
            s["y2"] += (y ** 2).sum(0)
            s["xy"] += (x * y).sum(0)
            s["fire"] += (x > 0).sum(0)
            s["max"] = torch.maximum(s["max"], x.max(0).values)
        num = s["xy"] - s["x"] * s["y"] / n
        var_product = (s["x2"] - s["x"] ** 2 / n) * (s["y2"] - s["y"] ** 2 / n)
        den = torch.sqrt(torch.clamp(var_product, min=1e-12))
        corr = torch.clamp(num / den, -1.0, 1.0)
        rate = s["fire"] / n
        active = rate > FIRING
        a = corr[active]
        return {"corr": corr.tolist(), "firing_rate": rate.tolist(), "mean_activation": (s["x"] / n).tolist(),
                "max_activation": s["max"].tolist(), "active": active.tolist(), "n_tokens": n,
                "survived": float((a > SURVIVED).double().mean()), "damaged": float((a < DAMAGED).double().mean()),
                "n_active": int(active.sum()),
                # not the reference's output: where its clamp (not the data) decides r
                "clamped": ((var_product < 1e-12) & (var_product > 0)).tolist()}

    out = {"tokens": tokens_2d.tolist(), "conditions": {}}
    restore()
    ppl_fp, losses, counts, _ = perplexity(model_work)
    out["fp"] = {"perplexity": ppl_fp, "losses": losses, "counts": counts}
    for bits in BITS:
        restore()
        rtn(model_work, bits)
        ppl, losses, counts, feats = perplexity(model_work, with_features=True)
        out["conditions"][f"rtn{bits}"] = {**compare(feats), "perplexity": ppl, "losses": losses, "counts": counts}
    target = out["conditions"][f"rtn{MATCH_BITS}"]["perplexity"]
    lo, hi, path = 0.0, 0.8, []
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        restore()
        prune(model_work, mid)
        ppl = perplexity(model_work)[0]
        path.append({"sparsity": mid, "perplexity": ppl})
        if ppl < target:
            lo = mid
        else:
            hi = mid
    best = min(range(len(path)), key=lambda i: abs(path[i]["perplexity"] - target))
    chosen = path[best]["sparsity"]
    restore()
    prune(model_work, chosen)
    ppl, losses, counts, feats = perplexity(model_work, with_features=True)
    out["conditions"]["prune"] = {**compare(feats), "perplexity": ppl, "losses": losses, "counts": counts,
                                  "sparsity": chosen}
    out["path"] = path
    out["overlap"] = overlap(out["conditions"][f"rtn{MATCH_BITS}"], out["conditions"]["prune"])
    out["predictor_auc"] = predictor_auc(out["conditions"][f"rtn{MATCH_BITS}"])
    Path(out_path).write_text(json.dumps(out))


def overlap(rtn: dict, prune: dict) -> dict:
    """Phase 5B: Jaccard of non-survived (r <= 0.9) and damaged (r < 0.5) sets, damage Spearman."""
    import pandas as pd

    active = pd.Series(rtn["active"])
    a, b = pd.Series(rtn["corr"])[active], pd.Series(prune["corr"])[active]

    def jaccard(x, y):
        union = (x | y).sum()
        return float((x & y).sum() / union) if union else float("nan")

    return {"jaccard": jaccard(a <= 0.9, b <= 0.9), "jaccard_damaged": jaccard(a < 0.5, b < 0.5),
            "spearman": float((1 - a).corr(1 - b, method="spearman")),
            "pearson": float((1 - a).corr(1 - b, method="pearson"))}


def predictor_auc(cond: dict) -> float:
    """Phase 5A: 4 FP statistics, StandardScaler on all rows, stratified 5-fold logistic ROC AUC."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler

    df = pd.DataFrame({k: cond[k] for k in ("corr", "firing_rate", "mean_activation", "max_activation", "active")})
    df = df[df["active"]].copy()
    df["survived"] = (df["corr"] > 0.9).astype(int)
    df["rarity"] = -np.log(df["firing_rate"].clip(lower=1e-8))
    df["log_mean_activation"] = np.log(df["mean_activation"].clip(lower=1e-8))
    df["log_max_activation"] = np.log(df["max_activation"].clip(lower=1e-8))
    df["log_concentration"] = np.log((df["max_activation"] / df["mean_activation"].clip(lower=1e-8)).clip(lower=1.0))
    cols = ["rarity", "log_mean_activation", "log_max_activation", "log_concentration"]
    clean = df[cols + ["survived"]].replace([np.inf, -np.inf], np.nan).dropna()
    X = StandardScaler().fit_transform(clean[cols].values)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    aucs = cross_val_score(LogisticRegression(max_iter=1000, C=1.0), X, clean["survived"].values, cv=cv,
                           scoring="roc_auc")
    return float(aucs.mean())


# --------------------------------------------------------------------------- the Gemma loop (script 03)
G_SEQ, G_TOKENS, G_SEARCH, G_BITS, G_SPARSITY = 32, 192, 96, (8, 6, 4), 0.3
G_HOOK = "blocks.1.hook_resid_post"
G_TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")


def gemma_reference(out_path: str, model_dir: str, sae_dir: str) -> None:  # pragma: no cover - a subprocess
    """Script 03 on a reduced Gemma-2 in ``model_dir``: the model TransformerLens's
    ``from_pretrained_no_processing(..., dtype=torch.bfloat16)`` builds (its Gemma-2 config table
    written out for this size), RTN in bfloat16, ``k = int(s*n)`` pruning with ties, the search on
    the first ``G_SEARCH`` tokens against INT6 on them, batches of one chunk."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from sae_lens import SAE
    from transformer_lens import HookedTransformer
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn="gelu_pytorch_tanh", initializer_range=c.initializer_range, normalization_type="RMS",
        rotary_base=10000.0, positional_embedding_type="rotary", use_attn_scale=True,
        n_key_value_heads=c.num_key_value_heads, window_size=c.sliding_window, use_local_attn=True,
        attn_types=["local", "global"] * (c.num_hidden_layers // 2) + ["local"] * (c.num_hidden_layers % 2),
        attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM",
        dtype=torch.bfloat16, device="cpu", default_prepend_bos=True)
    model_ref = HookedTransformer(cfg, AutoTokenizer.from_pretrained(model_dir), move_to_device=False)
    model_ref.load_and_process_state_dict(convert_gemma_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False,
                                          refactor_factored_attn_matrices=False)
    model_work = HookedTransformer(cfg, model_ref.tokenizer, move_to_device=False)
    model_work.load_state_dict(model_ref.state_dict())
    ds = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
    full_text = "\n\n".join(x for x in ds["text"] if x.strip())
    tokens = torch.tensor(model_ref.tokenizer.encode(full_text, add_special_tokens=False), dtype=torch.long)
    n_seqs = min(G_TOKENS, tokens.shape[0]) // G_SEQ
    tokens_2d = tokens[:n_seqs * G_SEQ].reshape(n_seqs, G_SEQ)
    search_2d = tokens_2d[:max(1, min(tokens_2d.shape[0], G_SEARCH // G_SEQ))]
    sae = SAE.load_from_disk(sae_dir, device="cpu")
    original = {k: v.detach().clone() for k, v in model_work.state_dict().items()}

    def restore():
        model_work.load_state_dict(original, strict=True)

    def rtn(model, bits):
        qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        for name, param in model.named_parameters():
            if any(t in name for t in G_TARGETS):
                w = param.data
                scale = w.abs().amax(dim=tuple(range(w.ndim - 1)), keepdim=True) / qmax
                scale = torch.where(scale == 0, torch.ones_like(scale), scale)
                param.data = (torch.round(w / scale).clamp(qmin, qmax) * scale).to(w.dtype)

    def prune(model, sparsity):
        zeroed = 0
        for name, param in model.named_parameters():
            if any(t in name for t in G_TARGETS):
                w = param.data
                flat = w.abs().flatten()
                k = int(sparsity * flat.numel())
                if k <= 0:
                    continue
                threshold = flat.max() + 1 if k >= flat.numel() else torch.kthvalue(flat, k).values
                mask = w.abs() <= threshold
                zeroed += int(mask.sum())
                w[mask] = 0
        return zeroed

    def perplexity(model, toks):
        losses = [float(model(toks[i:i + 1], return_type="loss").item()) for i in range(toks.shape[0])]
        return float(np.exp(np.mean(losses)))

    def feats(model, batch):
        _, cache = model.run_with_cache(batch, names_filter=[G_HOOK])
        return sae.encode(cache[G_HOOK].reshape(-1, cache[G_HOOK].shape[-1]).float()).detach().to(torch.float64)

    def metrics(model):
        d = sae.cfg.d_sae
        s = {k: torch.zeros(d, dtype=torch.float64) for k in ("x", "y", "x2", "y2", "xy", "fire")}
        n = 0
        for i in range(tokens_2d.shape[0]):
            x, y = feats(model_ref, tokens_2d[i:i + 1]), feats(model, tokens_2d[i:i + 1])
            n += x.shape[0]
            for key, v in (("x", x), ("y", y), ("x2", x ** 2), ("y2", y ** 2), ("xy", x * y), ("fire", x > 0)):
                s[key] += v.sum(0)
        var_product = (s["x2"] - s["x"] ** 2 / n) * (s["y2"] - s["y"] ** 2 / n)
        corr = torch.clamp((s["xy"] - s["x"] * s["y"] / n) / torch.sqrt(torch.clamp(var_product, min=1e-12)), -1, 1)
        active = s["fire"] / n > FIRING
        a = corr[active]
        return {"corr": corr.tolist(), "active": active.tolist(), "n_active": int(active.sum()),
                "survived": float((a > 0.9).double().mean()), "damaged": float((a < 0.5).double().mean()),
                "clamped": ((var_product < 1e-12) & (var_product > 0)).tolist()}

    out = {"fp": perplexity(model_ref, tokens_2d), "conditions": {}}
    for bits in G_BITS:
        restore()
        rtn(model_work, bits)
        out["conditions"][f"rtn{bits}"] = {**metrics(model_work), "perplexity": perplexity(model_work, tokens_2d)}
    restore()
    zeroed = prune(model_work, G_SPARSITY)
    out["conditions"]["prune"] = {**metrics(model_work), "perplexity": perplexity(model_work, tokens_2d),
                                  "sparsity": G_SPARSITY, "n_zeroed": zeroed}
    restore()
    rtn(model_work, 6)
    target = perplexity(model_work, search_2d)
    lo, hi, path = 0.0, 0.8, []
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        restore()
        prune(model_work, mid)
        ppl = perplexity(model_work, search_2d)
        path.append({"sparsity": mid, "perplexity": ppl})
        lo, hi = (mid, hi) if ppl < target else (lo, mid)
    restore()
    out.update(target=target, path=path, chosen=min(path, key=lambda r: abs(r["perplexity"] - target))["sparsity"])
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1] == "gemma":
        gemma_reference(*sys.argv[2:5])
    else:
        reference(sys.argv[1])
    sys.exit(0)


# --------------------------------------------------------------------------- the tests
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hub_cache import hub_home, offline_env  # noqa: E402,F401

pytestmark = pytest.mark.slow

SIZES = ["--tokens", str(N_TOKENS), "--context", str(SEQ_LEN), "--batch-size", str(BATCH), "--bootstrap", "0", "-q"]


def _featsurv(home: Path, *args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("featsurv")), *args]
    proc = subprocess.run(cmd, env=offline_env(home), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]


@pytest.fixture(scope="module")
def ref(hub_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "reference.json"
    proc = subprocess.run([sys.executable, __file__, str(out)], env=offline_env(hub_home), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def audit_run(hub_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from featsurv.results import RunResult

    out = tmp_path_factory.mktemp("fs") / "audit"
    bits = ",".join(str(b) for b in BITS if b != MATCH_BITS)  # MATCH_BITS is compare's reference side
    _featsurv(hub_home, "audit", "rtn", "--preset", "pythia-70m", *SIZES, "-p", f"bits={bits}",
              "-p", "granularity=tl", "--out", str(out))
    return RunResult.load(out)


@pytest.fixture(scope="module")
def compare_run(hub_home: Path, tmp_path_factory: pytest.TempPathFactory):
    from featsurv.results import RunResult

    out = tmp_path_factory.mktemp("fs") / "compare"
    _featsurv(hub_home, "compare", "rtn", "pruning", "--preset", "pythia-70m", *SIZES, "--steps", str(STEPS),
              "--predict", "--out", str(out))
    return RunResult.load(out)


def _rows(run, compressor: str, **params) -> pd.DataFrame:
    labels = [e["label"] for e in run.summary["results"] if e["compressor"] == compressor
              and all(e["params"].get(k) == v for k, v in params.items())]
    assert len(labels) == 1, labels
    return run.features[run.features["config"] == labels[0]].sort_values("feature")


def _entry(run, compressor: str, **params) -> dict:
    (entry,) = [e for e in run.summary["results"] if e["compressor"] == compressor
                and all(e["params"].get(k) == v for k, v in params.items())]
    return entry


def _matches(rows: pd.DataFrame, cond: dict, entry: dict) -> None:
    active = np.asarray(cond["active"])
    clamped = np.flatnonzero(active & np.asarray(cond["clamped"]))
    # the reference clamps var(x) * var(y) at 1e-12, which decides r for features that barely fire;
    # featsurv computes Pearson's r as it is (hub_cache's SAE gain keeps features clear of this)
    assert clamped.size == 0, f"features {clamped[:10]} fall under the reference's 1e-12 clamp"
    assert np.array_equal(rows["active"].to_numpy(bool), active), "active sets differ"
    r_fs, r_ref = rows["r"].to_numpy(), np.asarray(cond["corr"])
    assert np.abs(r_fs[active] - r_ref[active]).max() < 1e-4
    assert entry["n_active"] == cond["n_active"]
    assert entry["survived"] == pytest.approx(cond["survived"], abs=1e-12)
    assert entry["damaged"] == pytest.approx(cond["damaged"], abs=1e-12)
    assert entry["blurred"] == pytest.approx(1 - cond["survived"] - cond["damaged"], abs=1e-12)


def _averaging(run) -> str:
    """How the run averaged perplexity (the perplexity metric's ``averaging`` option)."""
    return str(run.run["options"].get("metric_options", {}).get("perplexity", {}).get("averaging", "token"))


def test_the_run_is_the_preset_through_the_transformer_lens_adapter(audit_run, ref):
    assert audit_run.run["adapter"] == "transformer_lens"
    assert audit_run.run["options"]["preset"] == "pythia-70m"
    assert audit_run.summary["baseline"]["n_tokens"] == len(ref["tokens"]) * SEQ_LEN


@pytest.fixture(scope="module")
def rtn_runs(audit_run, compare_run) -> dict:
    """The featsurv run holding each bit-width (compare's reference side holds MATCH_BITS)."""
    return {b: compare_run if b == MATCH_BITS else audit_run for b in BITS}


@pytest.mark.parametrize("bits", BITS)
def test_rtn_features_match_the_reference(rtn_runs, ref, bits):
    """Per-feature r within 1e-4 on active features, identical active set and band fractions."""
    run = rtn_runs[bits]
    _matches(_rows(run, "rtn", bits=bits), ref["conditions"][f"rtn{bits}"], _entry(run, "rtn", bits=bits))


def test_fp_statistics_match_the_reference(audit_run, ref):
    rows = _rows(audit_run, "rtn", bits=BITS[0])
    cond = ref["conditions"][f"rtn{BITS[0]}"]
    assert np.allclose(rows["firing_rate"], cond["firing_rate"], rtol=0, atol=1e-12)
    assert np.allclose(rows["mean_act"], cond["mean_activation"], rtol=1e-6, atol=1e-9)
    assert np.allclose(rows["peak_act"], cond["max_activation"], rtol=1e-6, atol=1e-9)


def _xfail_unless(supported: bool, reason: str, check) -> None:
    """Run ``check``; where the feature it needs is not on this branch yet, a failure is an xfail."""
    if supported:
        check()
        return
    try:
        check()
    except AssertionError:
        pytest.xfail(reason)


def test_perplexity_is_the_reference_average(rtn_runs, audit_run, ref):
    """The reference takes the mean of per-batch mean losses (its last batch here holds one context)."""
    def check():
        for bits, run in rtn_runs.items():
            want = ref["conditions"][f"rtn{bits}"]["perplexity"]
            assert _entry(run, "rtn", bits=bits)["perplexity"] == pytest.approx(want, rel=1e-5)
        assert audit_run.summary["baseline"]["perplexity"] == pytest.approx(ref["fp"]["perplexity"], rel=1e-5)

    _xfail_unless(_averaging(audit_run) == "batch",
                  "perplexity averaging per batch (the lead's token|batch option) is not in the pythia-70m preset yet",
                  check)


def _pruning_is_the_reference(run) -> bool:
    matched = run.summary["comparisons"][0]["matched_params"]
    return matched.get("count") == "floor" and matched.get("ties") == "prune" and _averaging(run) == "batch"


def test_bisection_path_and_chosen_sparsity_match_the_reference(compare_run, ref):
    comp = compare_run.summary["comparisons"][0]

    def check():
        got = [step["params"]["sparsity"] for step in comp["path"]]
        assert got == pytest.approx([s["sparsity"] for s in ref["path"]], abs=1e-12)
        for step, want in zip(comp["path"], ref["path"]):
            assert step["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
        assert comp["matched_params"]["sparsity"] == pytest.approx(ref["conditions"]["prune"]["sparsity"], abs=1e-12)

    _xfail_unless(_pruning_is_the_reference(compare_run),
                  "the reference's pruning count/ties (-p count=floor ties=prune) and batch-averaged perplexity "
                  "are not in the pythia-70m preset yet", check)


def test_matched_pruning_features_and_overlap_match_the_reference(compare_run, ref):
    comp = compare_run.summary["comparisons"][0]

    def check():
        cond = ref["conditions"]["prune"]
        assert comp["matched_params"]["sparsity"] == pytest.approx(cond["sparsity"], abs=1e-12)
        _matches(_rows(compare_run, "pruning"), cond, _entry(compare_run, "pruning"))
        for key in ("jaccard", "jaccard_damaged"):
            assert comp[key] == pytest.approx(ref["overlap"][key], abs=1e-9)
        # ranks of r values tied up to float round-off (features firing once in both models have r = 1
        # within 1e-16 either way) may be ordered differently by the two Pearson formulas
        assert comp["spearman"] == pytest.approx(ref["overlap"]["spearman"], abs=1e-3)

    _xfail_unless(_pruning_is_the_reference(compare_run),
                  "the reference's pruning count/ties and batch-averaged perplexity are not in the preset yet", check)


def test_four_statistic_predictor_matches_the_reference(compare_run, ref):
    key = next(k for k in compare_run.summary["predictors"] if k.startswith(f"rtn int{MATCH_BITS}"))
    entry = compare_run.summary["predictors"][key]
    core = ["rarity", "log_mean_act", "log_peak_act", "log_concentration"]

    def check():
        assert entry["statistics"] == core
        assert entry["logistic"]["auc_mean"] == pytest.approx(ref["predictor_auc"], abs=1e-4)

    _xfail_unless(entry["statistics"] == core,
                  "the predictor's core statistic set is not in the pythia-70m preset yet", check)


# --------------------------------------------------------------------------- reduced Gemma-2, bfloat16
@pytest.fixture(scope="module")
def gemma_files(hub_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-layer Gemma-2 (grouped-query attention, sliding window, softcapping, tied embeddings) in
    bfloat16 with the hub's tokenizer, and a calibrated ReLU SAE at ``G_HOOK`` of its residual stream."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config

    from hub_cache import PYTHIA, calibrated_sae, wikitext_rows

    root = tmp_path_factory.mktemp("gemma")
    repo = hub_home / "hub" / f"models--{PYTHIA.replace('/', '--')}"
    tok = AutoTokenizer.from_pretrained(repo / "snapshots" / (repo / "refs" / "main").read_text())
    config = Gemma2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                          max_position_embeddings=256, sliding_window=16, rms_norm_eps=1e-6,
                          hidden_activation="gelu_pytorch_tanh", attn_logit_softcapping=50.0,
                          final_logit_softcapping=30.0, initializer_range=0.05, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()
    model.save_pretrained(root / "gemma", safe_serialization=True)
    tok.save_pretrained(root / "gemma")
    ids = tok("\n\n".join(r for r in wikitext_rows(12, 5) if r.strip()), add_special_tokens=False)["input_ids"][:512]
    with torch.no_grad():
        hidden = model(torch.tensor(ids).view(8, -1), output_hidden_states=True).hidden_states[2].float()
    weights = calibrated_sae(hidden.reshape(-1, hidden.shape[-1]), d_sae=512, seed=1)
    sae_dir = root / "sae"
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=512, apply_b_dec_to_input=True, metadata=SAEMetadata(
        hook_name=G_HOOK, model_name="gemma-2-2b", context_size=G_SEQ, prepend_bos=False)))
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    sae.save_model(sae_dir)
    return root / "gemma", sae_dir


@pytest.fixture(scope="module")
def gemma_ref(hub_home: Path, gemma_files, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gemma-ref") / "reference.json"
    proc = subprocess.run([sys.executable, __file__, "gemma", str(out), *map(str, gemma_files)],
                          env=offline_env(hub_home), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _gemma(hub_home: Path, gemma_files, out: Path, *args: str):
    from featsurv.results import RunResult

    model, sae = gemma_files
    _featsurv(hub_home, *args[:2], "--preset", "gemma-2-2b", "--model", str(model), "--sae", str(sae), "--hook", G_HOOK,
              "--tokens", str(G_TOKENS), "--context", str(G_SEQ), "--bootstrap", "0", "-q", *args[2:], "--out", str(out))
    return RunResult.load(out)


@pytest.fixture(scope="module")
def gemma_runs(hub_home: Path, gemma_files, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("gemma-fs")
    bits = ",".join(map(str, G_BITS))
    return {
        "rtn": _gemma(hub_home, gemma_files, root / "rtn", "audit", "rtn", "-p", f"bits={bits}", "-p", "granularity=tl",
                      "-p", "arith=native"),
        "prune": _gemma(hub_home, gemma_files, root / "prune", "audit", "pruning", "-p", f"sparsity={G_SPARSITY}",
                        "-p", "count=floor", "-p", "ties=prune", "-p", "scope=matrix"),
        "compare": _gemma(hub_home, gemma_files, root / "compare", "compare", "rtn", "pruning", "--steps", str(STEPS),
                          "--search-tokens", str(G_SEARCH)),
    }


def test_gemma_runs_in_bfloat16_through_transformer_lens_without_processing(gemma_runs):
    run = gemma_runs["rtn"].run
    assert run["adapter"] == "transformer_lens" and run["options"]["dtype"] == "bfloat16"
    assert set(run["options"]["adapter_options"].values()) == {False}
    assert {e["params"]["arith"] for e in gemma_runs["rtn"].summary["results"]} == {"native"}


@pytest.mark.parametrize("bits", G_BITS)
def test_gemma_bf16_rtn_features_match_the_reference(gemma_runs, gemma_ref, bits):
    run = gemma_runs["rtn"]
    _matches(_rows(run, "rtn", bits=bits), gemma_ref["conditions"][f"rtn{bits}"], _entry(run, "rtn", bits=bits))


def test_gemma_bf16_pruning_with_ties_matches_the_reference(gemma_runs, gemma_ref):
    run = gemma_runs["prune"]
    _matches(_rows(run, "pruning"), gemma_ref["conditions"]["prune"], _entry(run, "pruning"))


def _loss_dtype(run) -> str:
    """Where the run computed its loss (the perplexity metric's ``loss_dtype`` option)."""
    return str(run.run["options"].get("metric_options", {}).get("perplexity", {}).get("loss_dtype", "float32"))


def test_gemma_perplexity_matches_the_reference(gemma_runs, gemma_ref):
    """TransformerLens computes Gemma's loss in bfloat16; the preset's ``loss_dtype = "logits"`` does too."""
    def check():
        assert gemma_runs["rtn"].summary["baseline"]["perplexity"] == pytest.approx(gemma_ref["fp"], rel=1e-5)
        for bits in G_BITS:
            want = gemma_ref["conditions"][f"rtn{bits}"]["perplexity"]
            assert _entry(gemma_runs["rtn"], "rtn", bits=bits)["perplexity"] == pytest.approx(want, rel=1e-5)

    _xfail_unless(_loss_dtype(gemma_runs["rtn"]) == "logits", "TransformerLens's bfloat16 loss (log_softmax and "
                  "mean in bfloat16) is not featsurv's float32 cross-entropy", check)


def test_gemma_subset_search_matches_the_reference(gemma_runs, gemma_ref):
    comp = gemma_runs["compare"].summary["comparisons"][0]

    def check():
        assert [step["params"]["sparsity"] for step in comp["path"]] == pytest.approx(
            [s["sparsity"] for s in gemma_ref["path"]], abs=1e-12)
        assert comp["matched_params"]["sparsity"] == pytest.approx(gemma_ref["chosen"], abs=1e-12)

    _xfail_unless(_loss_dtype(gemma_runs["compare"]) == "logits",
                  "the search compares perplexities, which differ in bfloat16 (see above)", check)

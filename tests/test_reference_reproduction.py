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


if __name__ == "__main__":  # pragma: no cover
    reference(sys.argv[1])
    sys.exit(0)


# --------------------------------------------------------------------------- the tests
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hub_cache import hub_home, offline_env  # noqa: E402,F401
from reference_checks import _entry, _featsurv, _matches, _rows, _xfail_unless  # noqa: E402

pytestmark = pytest.mark.slow

SIZES = ["--tokens", str(N_TOKENS), "--context", str(SEQ_LEN), "--batch-size", str(BATCH), "--bootstrap", "0", "-q"]


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

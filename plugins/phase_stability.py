"""`featsurv stability`: the reference study's phase 4 ablations from one FP model.

One configuration is measured (the reference: RTN INT6) on

- **token budgets**: the first ``B // context`` contexts of the token pool, for each budget B
  (the reference: 50k, 100k, 200k);
- **random subsets**: ``S // context`` contexts drawn from the pool by
  ``torch.randperm(n_pool_contexts, generator=torch.Generator().manual_seed(seed))[:n]`` (the
  reference's draw), for each seed (the reference: 100k tokens, seeds 0, 1, 2);
- **the FP-vs-FP null test**: an identity configuration on the first ``S // context`` contexts;
  every active feature must have r = 1 up to round-off.

Every variant has its own FP pass (the active set is a property of the tokens). Per variant and
hook point: ``n_active``, ``mean_r``, ``median_r``, ``survived_pct`` (r > survived_above) and
``damaged_pct`` (r < damaged_below) over the active features. The survival/damage threshold grid
is computed on the largest budget's r (the reference's 200k INT6 run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from featsurv import Compressor, FeatsurvError

from . import phase_tables as T

NULL_TOLERANCE = 1e-6


class Identity(Compressor):
    """Changes nothing: the FP-vs-FP null test (not registered; used by `featsurv stability`)."""

    name = "identity"
    description = "no change (FP vs FP)"

    def compress(self, targets: list[Any], params: dict[str, Any]) -> None:
        return None


@dataclass
class Plan:
    budgets: list[int]
    subset_tokens: int
    seeds: list[int]
    pool_tokens: int
    null: bool = True


def check_plan(plan: Plan, context: int) -> None:
    """Refuse counts that give no context or more contexts than the pool holds (exit 2)."""
    pool = plan.pool_tokens // context
    for flag, n in [("--budgets", b) for b in plan.budgets] + [("--subset-tokens", plan.subset_tokens)]:
        if n // context < 1:
            raise FeatsurvError(f"Bad {flag} value {n}: smaller than one context of {context} tokens",
                                allowed=f"{context} or more", hint="Pass larger token counts, or a smaller --context")
        if n // context > pool:
            raise FeatsurvError(f"Bad {flag} value {n}: more than the pool of {plan.pool_tokens} tokens "
                                f"({pool} contexts of {context})", allowed=f"at most {pool * context}",
                                hint="Pass a larger --pool-tokens")


def prefix(tokens: Any, n_tokens: int) -> Any:
    """The first ``n_tokens // context`` contexts (the reference's build_sequential_tokens)."""
    n = n_tokens // tokens.context
    return tokens if n >= tokens.n_contexts else tokens.split(n)[0]


def subset_index(n_pool: int, n: int, seed: int) -> Any:
    """The reference's random draw of ``n`` of ``n_pool`` contexts (build_random_subset)."""
    import torch

    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return torch.randperm(n_pool, generator=g)[:n]


def random_subset(tokens: Any, n_tokens: int, seed: int) -> Any:
    from featsurv.tokens import TokenSet

    idx = subset_index(tokens.n_contexts, n_tokens // tokens.context, seed)
    per_ctx = tokens.context - 1 if tokens.prepend_bos else tokens.context
    stream = tokens.stream.view(tokens.n_contexts, per_ctx)[idx].reshape(-1)
    return TokenSet(tokens.contexts[idx].contiguous(), tokens.keep[idx].contiguous(), stream, tokens.context,
                    tokens.prepend_bos, tokens.bos_id, tokens.dataset)


def variant_row(frame: Any, s: float, d: float) -> dict[str, Any]:
    """The reference's summary of one variant at one hook point, over its active features."""
    import numpy as np

    r = frame.loc[frame["active"].astype(bool), "r"].to_numpy(np.float64)
    n = int(r.size)
    return {"n_active": n, "mean_r": float(r.mean()) if n else float("nan"),
            "median_r": float(np.median(r)) if n else float("nan"),
            "min_r": float(r.min()) if n else float("nan"),
            "survived_pct": float((r > s).mean() * 100) if n else float("nan"),
            "damaged_pct": float((r < d).mean() * 100) if n else float("nan")}


def measure(session: Any, tokens: Any, name: str | None, params: dict[str, Any], label: str) -> tuple[Any, list]:
    """FP pass on ``tokens``, then one configuration; its feature frame and summary entries."""
    from featsurv.assembly import feature_frame, summary_entries
    from featsurv.configuration import run_configuration
    from featsurv.fp_pass import fp_pass

    bench = session.bench
    bench.tokens = tokens
    for state in bench.hooks.values():
        state.fp_batches = []
    session.baseline = fp_pass(bench, session.metrics)
    if name is None:
        outcome = run_configuration(bench, session.metrics, Identity(), {}, True, None, None, label)
    else:
        outcome = session.run(name, params, label=label)
    return feature_frame(session, outcome), summary_entries(session, outcome)


def variants(plan: Plan, pool: Any) -> list[tuple[str, dict[str, Any], Any]]:
    out = [("budget", {"token_budget": b}, prefix(pool, b)) for b in plan.budgets]
    out += [("subset", {"token_budget": plan.subset_tokens, "seed": s}, random_subset(pool, plan.subset_tokens, s))
            for s in plan.seeds]
    if plan.null:
        out.append(("null", {"token_budget": plan.subset_tokens}, prefix(pool, plan.subset_tokens)))
    return out


def run_stability(session: Any, name: str, params: dict[str, Any], plan: Plan, s: float, d: float,
                  progress: Callable[[str], None]) -> tuple[Any, Any]:
    """Every variant: (rows, per-feature table), both DataFrames."""
    import pandas as pd

    pool = session.bench.tokens
    rows, feats = [], []
    for ablation, keys, tokens in variants(plan, pool):
        label = "identity" if ablation == "null" else session.compressor(name).label(params)
        progress(f"stability: {ablation} {keys} ({tokens.n_contexts} contexts)")
        frame, entries = measure(session, tokens, None if ablation == "null" else name, params, label)
        ppl = {e.get("hook"): e.get("perplexity_change") for e in entries}
        for hook, part in frame.groupby("hook", sort=False):
            base = {"ablation": ablation, **keys, "hook": hook, "config": label, "n_tokens": tokens.n_tokens,
                    "n_contexts": tokens.n_contexts}
            rows.append({**base, **variant_row(part, s, d), "perplexity_change": ppl.get(hook)})
            feats.append(part[["hook", "feature", "r", "active", "firing_rate"]].assign(
                ablation=ablation, token_budget=keys["token_budget"], seed=keys.get("seed", -1)))
    return pd.DataFrame(rows), pd.concat(feats, ignore_index=True)


def summarize(rows: Any, feats: Any, plan: Plan) -> tuple[dict[str, Any], Any]:
    """Per hook: budget ranges, subset spread, the null test; and the threshold grid of the largest budget."""
    import pandas as pd

    out: dict[str, Any] = {}
    grids = []
    for hook, part in rows.groupby("hook", sort=False):
        bud, sub, null = (part[part["ablation"] == k] for k in ("budget", "subset", "null"))
        entry: dict[str, Any] = {}
        if len(bud):
            entry["budget_survived_range_pp"] = float(bud["survived_pct"].max() - bud["survived_pct"].min())
            entry["budget_damaged_range_pp"] = float(bud["damaged_pct"].max() - bud["damaged_pct"].min())
            big = max(plan.budgets)
            sel = feats[(feats["hook"] == hook) & (feats["ablation"] == "budget") & (feats["token_budget"] == big)]
            grids.append(T.threshold_grid(sel.loc[sel["active"].astype(bool), "r"]).assign(hook=hook, token_budget=big))
        if len(sub):
            entry["subset_survived_std_pp"] = float(sub["survived_pct"].std())  # pandas: ddof=1, as the reference
            entry["subset_damaged_std_pp"] = float(sub["damaged_pct"].std())
        if len(null):
            n = null.iloc[0]
            entry["null"] = {"n_active": int(n["n_active"]), "mean_r": float(n["mean_r"]), "min_r": float(n["min_r"]),
                             "survived_pct": float(n["survived_pct"]), "damaged_pct": float(n["damaged_pct"]),
                             "passed": bool(n["n_active"] == 0 or n["min_r"] >= 1 - NULL_TOLERANCE)}
        out[str(hook)] = entry
    grid = pd.concat(grids, ignore_index=True) if grids else pd.DataFrame()
    return out, grid


def format_text(rows: Any, summary: dict[str, Any]) -> str:
    lines = []
    for hook, part in rows.groupby("hook", sort=False):
        lines.append(f"stability at {hook} ({part['config'].iloc[0]} unless identity):")
        lines.append(f"  {'ablation':8} {'budget':>8} {'seed':>4} {'tokens':>8} {'active':>6} {'mean r':>8} "
                     f"{'median r':>8} {'survived':>8} {'damaged':>8}")
        for _, r in part.iterrows():
            seed = "" if r.get("seed") is None or r.get("seed") != r.get("seed") else str(int(r["seed"]))
            lines.append(f"  {r['ablation']:8} {int(r['token_budget']):>8} {seed:>4} {int(r['n_tokens']):>8} "
                         f"{int(r['n_active']):>6} {r['mean_r']:>8.4f} {r['median_r']:>8.4f} "
                         f"{r['survived_pct']:>7.2f}% {r['damaged_pct']:>7.2f}%")
        s = summary.get(str(hook), {})
        if "budget_survived_range_pp" in s:
            lines.append(f"  budget range: survived {s['budget_survived_range_pp']:.2f} pp, "
                         f"damaged {s['budget_damaged_range_pp']:.2f} pp")
        if "subset_survived_std_pp" in s:
            lines.append(f"  subset std: survived {s['subset_survived_std_pp']:.3f} pp, "
                         f"damaged {s['subset_damaged_std_pp']:.3f} pp")
        if "null" in s:
            n = s["null"]
            lines.append(f"  null test (FP vs FP): mean r {n['mean_r']:.6f}, min r {n['min_r']:.6f}, "
                         f"damaged {n['damaged_pct']:.3f}%: {'passed' if n['passed'] else 'FAILED'}")
    return "\n".join(lines)

"""Wall time of one sweep, local vs ray (a local 2-CPU Ray cluster), unsplit vs split over
configurations, and the overhead per job.

    .venv/bin/python benchmarks/bench_sweep.py [--models 2] [--tokens 1024] [--bits 8,4] [--layers 2]
        [--repeat 1] [--split] [--executors local,ray]

Builds tiny random models and exact SAEs (featsurv.testing), writes a sweep of MODELS models x 2
SAEs x (one rtn configuration per --bits value + 50% pruning), runs `featsurv sweep` in a fresh
process with each executor (with --split also with split = "configurations"), and prints the
wall times. Overhead per job: (ray wall - local wall / parallelism) / jobs, where the ideal
ray time is the local time divided by min(jobs, 2) workers; a measured, not a modelled, figure
for the Ray start-up and task dispatch on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from featsurv.testing import (CONTROL_VARS, build_tiny_model, build_tokenizer, write_corpus,
                              write_exact_sae)

FAMILIES = ("gpt_neox", "gemma2", "llama")
HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def build(root: Path, n_models: int, tokens: int, bits: str = "8,4", layers: int = 2) -> Path:
    corpus = write_corpus(root / "corpus.txt")
    tok = build_tokenizer(corpus, root / "tok")
    parts = ['[sweep]\nname = "bench"\n', f'[data]\ndataset = "{corpus}"\ntokens = {tokens}\ncontext = 32\n',
             "[options]\nbootstrap = 0\n"]
    for i in range(n_models):
        family = FAMILIES[i % len(FAMILIES)]
        model = build_tiny_model(family, root / f"m{i}", tok, seed=i, n_layers=layers)
        saes = [str(write_exact_sae(root / f"m{i}-{h}", 32, h)) for h in HOOKS]
        parts.append(f'[[models]]\nname = "m{i}"\npath = "{model}"\nsaes = {json.dumps(saes)}\n')
    parts.append(f'[[configurations]]\ncompressor = "rtn"\nparams = {{ bits = [{bits}] }}\n'
                 '[[configurations]]\ncompressor = "pruning"\nparams = { sparsity = 0.5 }\n')
    (root / "sweep.toml").write_text("\n".join(parts))
    return root / "sweep.toml"


def timed(spec: Path, out: Path, executor: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in CONTROL_VARS}
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    code = "import sys; from featsurv.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "sweep", str(spec), "--out", str(out), "--executor",
                          executor, "-q"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{executor} sweep failed:\n{res.stdout}\n{res.stderr}")
    return wall


def split_spec(spec: Path) -> Path:
    path = spec.with_name("sweep-split.toml")
    path.write_text(spec.read_text().replace("[sweep]\n", '[sweep]\nsplit = "configurations"\n', 1))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--bits", default="8,4", help="rtn bit-widths (one configuration each, plus 50%% pruning)")
    ap.add_argument("--layers", type=int, default=2, help="layers of each tiny model (a heavier pass)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--split", action="store_true", help='also time split = "configurations"')
    ap.add_argument("--executors", default="local,ray")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = build(root, args.models, args.tokens, args.bits, args.layers)
        specs = {"unsplit": spec, **({"split": split_spec(spec)} if args.split else {})}
        walls: dict[tuple[str, str], list[float]] = {}
        for r in range(args.repeat):
            for executor in args.executors.split(","):
                for mode, path in specs.items():
                    wall = timed(path, root / f"{executor}-{mode}-{r}", executor)
                    walls.setdefault((executor, mode), []).append(wall)
                    print(f"  run {r + 1}: {executor} {mode} {wall:.1f}s", flush=True)
        best = {key: min(v) for key, v in walls.items()}
        jobs, configs = args.models, len(args.bits.split(",")) + 1
        print(f"sweep: {jobs} models ({args.layers} layers) x 2 SAEs x {configs} configurations, {args.tokens} tokens, "
              f"{os.cpu_count()} cores")
        for (executor, mode), wall in best.items():
            print(f"{executor:5s} {mode:7s} wall {wall:6.1f}s")
        local, ray = best.get(("local", "unsplit")), best.get(("ray", "unsplit"))
        if local is not None and ray is not None:
            ideal = local / min(jobs, 2)
            print(f"ray overhead per job: {(ray - ideal) / jobs:.1f}s over the ideal {ideal:.1f}s with 2 workers "
                  "(start-up, import and model load per worker)")


if __name__ == "__main__":
    main()

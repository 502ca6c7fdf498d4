"""featsurv's audit against the bare limit and the reference study's loop, on one machine.

    .venv/bin/python benchmarks/bench_limit.py [--reps 3] [--work DIR] [--device cpu] [--dtype float32] [--quick]
        [--parts interleaved,startup,memory,widths,compare] [--json FILE]

Builds its own workload (benchmarks/limit_workload.py: a Pythia-70M-shaped random GPT-NeoX,
vocab 50304; standard ReLU SAEs of widths 4096..65536 at blocks.3.hook_resid_post; contexts of
128), then measures, every program in a fresh process:

- ``featsurv audit rtn -p bits=8,6,5,4,3 --tokens 4096`` (default options, but
  ``--min-explained-variance 0``: a random SAE cannot fit; the fit check still runs), the bare
  limit and the reference loop (benchmarks/limit_roles.py), interleaved with the order rotated
  each repetition; medians and paired (same-repetition) ratios of wall time, CPU time (user +
  system of the process) and compute (the FP pass and configurations, from each program's own
  timings), with the machine's load average around each run;
- start-up: ``featsurv --help``, and the time from launch to the first FP batch of an audit;
- peak RSS of an audit (one configuration) at 16k and 65k tokens;
- per-configuration time of the audit (and of the limit) against SAE width;
- the number of perplexity-only passes of ``featsurv compare rtn magnitude``.

Prints a report and writes it as JSON to ``WORK/bench_limit.json``. Targets (issue 16): audit
<= 1.15x the limit (wall and CPU), >= 1.8x faster than the reference loop, peak memory <= 1.1x
from 16k to 65k tokens, per-configuration cost sub-linear in SAE width.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import limit_workload as W  # noqa: E402

PY = sys.executable
# the featsurv command beside this Python (a venv), else the one on PATH (an install with --target)
FEATSURV = str(Path(PY).with_name("featsurv")) if Path(PY).with_name("featsurv").exists() else (
    shutil.which("featsurv") or "featsurv")
BITS = "8,6,5,4,3"


def run(cmd: list[str], *, env: dict | None = None, watch: str | None = None, tries: int = 3) -> dict:
    """Run ``cmd`` in a fresh process: wall, CPU (user + sys), peak RSS, load, output.

    With ``watch``, also the wall time at which a stderr line containing it appeared. A process
    ended by a signal from outside (a shared machine) is run again, up to ``tries`` times.
    """
    for attempt in range(tries):
        try:
            return _run_once(cmd, env, watch)
        except _Signalled:
            print(f"  (killed by a signal from outside; running again: {cmd[1]} {cmd[2]})", flush=True)
    return _run_once(cmd, env, watch)


class _Signalled(RuntimeError):
    pass


def _run_once(cmd: list[str], env: dict | None, watch: str | None) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE if watch else err, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        seen = None
        if watch:
            lines = []
            for line in proc.stderr:
                lines.append(line)
                if seen is None and watch in line:
                    seen = time.perf_counter() - t0
            err.write("".join(lines))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode < 0:
        raise _Signalled(proc.returncode)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "load": [load0, os.getloadavg()[0]], "stdout": stdout, "stderr": stderr, "seen_s": seen}


def audit_cmd(work: Path, out: Path, *, tokens: int = 4096, width: int = 16384, bits: str = BITS,
              device: str = "cpu", quiet: bool = True, command: str = "audit", extra: tuple[str, ...] = ()) -> list[str]:
    head = [FEATSURV, "audit", "rtn", "-p", f"bits={bits}"] if command == "audit" else [FEATSURV, "compare", "rtn", "magnitude"]
    return head + ["--model", str(work / "model"), "--sae", str(work / f"sae-{width}"), "--dataset",
                   str(work / "corpus.txt"), "--tokens", str(tokens), "--min-explained-variance", "0",
                   "--device", device, "--dtype", DTYPE, "--out", str(out)] + list(extra) + (["-q"] if quiet else [])


VARIANT: tuple[str, ...] = ()  # --variant: extra audit options of a fourth, informative program


def role_cmd(role: str, work: Path, *, tokens: int = 4096, width: int = 16384, bits: str = BITS,
             device: str = "cpu") -> list[str]:
    return [PY, str(HERE / "limit_roles.py"), role, str(work), "--tokens", str(tokens), "--width", str(width),
            "--bits", bits, "--device", device, "--dtype", DTYPE]


TOKENS = 4096
DTYPE = "float32"  # --dtype: the models' dtype in every program (the SAEs stay float32)


def program(name: str, work: Path, scratch: Path, device: str, **kw) -> dict:
    """One measured run of ``audit``, ``limit`` or ``reference``, with its own compute timings."""
    kw.setdefault("tokens", TOKENS)
    if name in ("audit", "variant"):
        out = scratch / f"{name}-{time.time_ns()}"
        res = run(audit_cmd(work, out, device=device, extra=VARIANT if name == "variant" else (), **kw))
        rec = json.loads((out / "run.json").read_text())
        t = rec["timings"]
        res.update(compute_s=t["fp_pass"] + t["configurations"], fp_s=t["fp_pass"],
                   configs_s=[c["seconds"] for c in rec["configurations"]])
        summary = json.loads((out / "summary.json").read_text())
        res["survived"] = [e["survived"] for e in summary["results"]]
        return res
    res = run(role_cmd(name, work, device=device, **kw))
    res.update(json.loads(res["stdout"].strip().splitlines()[-1]))
    return res


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def interleaved(work: Path, scratch: Path, reps: int, device: str) -> dict:
    names = ["audit", "limit", "reference"] + (["variant"] if VARIANT else [])
    runs = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for n in order:
            r = program(n, work, scratch, device)
            r.pop("stdout", None)
            r.pop("stderr", None)
            runs[n].append(r)
            print(f"  rep {rep + 1} {n:9s} wall {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  compute "
                  f"{r['compute_s']:6.1f} s  load {r['load'][0]:.1f}->{r['load'][1]:.1f}", flush=True)
    a, li, ref = runs["audit"], runs["limit"], runs["reference"]
    per_cfg = lambda r, skip=0: _med(r["configs_s"][skip:])  # noqa: E731
    ratios = {
        "audit/limit wall": [x["wall_s"] / y["wall_s"] for x, y in zip(a, li)],
        "audit/limit cpu": [x["cpu_s"] / y["cpu_s"] for x, y in zip(a, li)],
        "audit/limit compute": [x["compute_s"] / y["compute_s"] for x, y in zip(a, li)],
        "audit/limit per config": [per_cfg(x) / per_cfg(y) for x, y in zip(a, li)],
        "reference/audit wall": [y["wall_s"] / x["wall_s"] for x, y in zip(a, ref)],
        "reference/audit cpu": [y["cpu_s"] / x["cpu_s"] for x, y in zip(a, ref)],
        "reference/audit per config": [per_cfg(y, 1) / per_cfg(x) for x, y in zip(a, ref)],
    }
    if VARIANT:  # informative only: the targets are the default audit's
        v = runs["variant"]
        ratios.update({"variant/limit wall": [x["wall_s"] / y["wall_s"] for x, y in zip(v, li)],
                       "variant/limit cpu": [x["cpu_s"] / y["cpu_s"] for x, y in zip(v, li)],
                       "variant/limit compute": [x["compute_s"] / y["compute_s"] for x, y in zip(v, li)]})
    medians = {n: {k: _med([r[k] for r in runs[n]]) for k in ("wall_s", "cpu_s", "compute_s", "peak_rss_mib")}
               for n in names}
    for n in names:
        medians[n]["per_config_s"] = _med([per_cfg(r, 1 if n == "reference" else 0) for r in runs[n]])
    return {"runs": runs, "medians": medians, "ratios": {k: {"median": _med(v), "all": v} for k, v in ratios.items()}}


def startup(work: Path, scratch: Path, device: str, reps: int = 3) -> dict:
    helps = [run([FEATSURV, "--help"])["wall_s"] for _ in range(reps)]
    firsts = []
    for _ in range(max(1, reps - 1)):
        r = run(audit_cmd(work, scratch / f"first-{time.time_ns()}", tokens=TOKENS, bits="8", device=device,
                          quiet=False),
                watch="FP pass: ")  # the first progress line of the FP pass (after its first batch)
        firsts.append(r["seen_s"])
    return {"help_s": _med(helps), "help_all": helps, "first_fp_batch_s": _med(firsts), "first_all": firsts}


def memory(work: Path, scratch: Path, device: str, sizes: tuple[int, int]) -> dict:
    out = {}
    for n in sizes:
        r = run(audit_cmd(work, scratch / f"mem-{n}", tokens=n, bits="6", device=device))
        out[n] = r["peak_rss_mib"]
        print(f"  {n} tokens: peak RSS {r['peak_rss_mib']:.0f} MiB (wall {r['wall_s']:.0f} s)", flush=True)
    return {"tokens": list(sizes), "peak_rss_mib": out, "ratio_65k_16k": out[sizes[1]] / out[sizes[0]]}


def widths(work: Path, scratch: Path, device: str, ws: tuple[int, ...]) -> dict:
    rows = []
    for w in ws:
        a = program("audit", work, scratch, device, width=w, bits="6,4")
        li = program("limit", work, scratch, device, width=w, bits="6,4")
        rows.append({"width": w, "audit_per_config_s": _med(a["configs_s"]), "limit_per_config_s": _med(li["configs_s"])})
        print(f"  width {w:6d}: audit {rows[-1]['audit_per_config_s']:.2f} s/config, limit "
              f"{rows[-1]['limit_per_config_s']:.2f} s/config", flush=True)
    lw = [math.log(r["width"]) for r in rows]
    slope = lambda ys: statistics.linear_regression(lw, [math.log(y) for y in ys]).slope  # noqa: E731
    return {"rows": rows, "audit_exponent": slope([r["audit_per_config_s"] for r in rows]),
            "limit_exponent": slope([r["limit_per_config_s"] for r in rows])}


def compare_passes(work: Path, scratch: Path, device: str) -> dict:
    out = scratch / "compare"
    r = run(audit_cmd(work, out, device=device, command="compare"))
    comps = json.loads((out / "summary.json").read_text()).get("comparisons", [])
    return {"perplexity_only_passes": [len(c.get("path", [])) for c in comps], "wall_s": r["wall_s"]}


def machine() -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_at_start": os.getloadavg(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _interleaved_lines(res: dict) -> list[str]:
    m, r = res["interleaved"]["medians"], res["interleaved"]["ratios"]
    lines = [f"{'program':10s} {'wall s':>8s} {'cpu s':>8s} {'compute s':>10s} {'per config s':>13s} {'peak MiB':>9s}"]
    for n, v in m.items():
        lines.append(f"{n:10s} {v['wall_s']:8.1f} {v['cpu_s']:8.1f} {v['compute_s']:10.1f} {v['per_config_s']:13.2f} "
                     f"{v['peak_rss_mib']:9.0f}")
    lines += ["", "paired ratios (median of repetitions; all):"]
    lines += [f"  {k:28s} {v['median']:.3f}   {', '.join(f'{x:.3f}' for x in v['all'])}" for k, v in r.items()]
    loads = [x for runs in res["interleaved"]["runs"].values() for run_ in runs for x in run_["load"]]
    lines.append(f"  load average during the runs: {min(loads):.1f} .. {max(loads):.1f}")
    return lines


def report(res: dict) -> str:
    gpu = f", GPU {res['machine']['gpu']}" if res["machine"].get("gpu") else ""
    lines = [f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores{gpu}, torch {res['machine']['torch']}, "
             f"load at start {res['machine']['load_at_start'][0]:.1f}; --device {res.get('device', 'cpu')} "
             f"--dtype {res.get('dtype', 'float32')}", ""]
    if "interleaved" in res:
        lines += _interleaved_lines(res)
    if "startup" in res:
        s = res["startup"]
        lines.append(f"\nstart-up: featsurv --help {s['help_s']:.2f} s; launch to first FP batch {s['first_fp_batch_s']:.1f} s")
    if "memory" in res:
        mm = res["memory"]
        (t0, t1), peak = mm["tokens"], mm["peak_rss_mib"]
        lines.append(f"peak RSS: {t0} tokens {peak[t0]:.0f} MiB, {t1} tokens {peak[t1]:.0f} MiB "
                     f"(x{mm['ratio_65k_16k']:.3f})")
    if "widths" in res:
        wd = res["widths"]
        lines.append("per-configuration time against SAE width (audit / limit, s): " + "; ".join(
            f"{x['width']}: {x['audit_per_config_s']:.2f} / {x['limit_per_config_s']:.2f}" for x in wd["rows"]))
        lines.append(f"  exponent of a power-law fit: audit {wd['audit_exponent']:.2f}, limit {wd['limit_exponent']:.2f}")
    if "compare" in res:
        lines.append(f"compare rtn magnitude: {res['compare']['perplexity_only_passes']} perplexity-only passes")
    t = res["targets"]
    lines += ["", "targets: " + ", ".join(f"{k} {'held' if v else 'MISSED'}" for k, v in t.items())]
    return "\n".join(lines)


PARTS = ("interleaved", "startup", "memory", "widths", "compare")


def measure(args, parts: tuple[str, ...], ws: tuple[int, ...]) -> dict:
    """Run the chosen parts of the benchmark; returns the result dict (without targets)."""
    res: dict = {"machine": machine(), "device": args.device, "dtype": DTYPE, "command": " ".join(audit_cmd(args.work, Path("OUT"))),
                 "variant": " ".join(VARIANT)}
    with tempfile.TemporaryDirectory(prefix="bench-limit-") as tmp:
        scratch = Path(tmp)
        if "interleaved" in parts:
            print("interleaved runs:", flush=True)
            res["interleaved"] = interleaved(args.work, scratch, args.reps, args.device)
        if "startup" in parts:
            print("start-up ...", flush=True)
            res["startup"] = startup(args.work, scratch, args.device)
        if "memory" in parts:
            print("memory ...", flush=True)
            res["memory"] = memory(args.work, scratch, args.device,
                                   tuple(int(t) for t in args.memory_tokens.split(",")))
        if "widths" in parts:
            print("widths ...", flush=True)
            res["widths"] = widths(args.work, scratch, args.device, ws)
        if "compare" in parts:
            print("compare ...", flush=True)
            res["compare"] = compare_passes(args.work, scratch, args.device)
    return res


def targets(res: dict) -> dict[str, bool]:
    out = {}
    if "interleaved" in res:
        r = res["interleaved"]["ratios"]
        out.update({"audit <= 1.15x limit (wall)": r["audit/limit wall"]["median"] <= 1.15,
                    "audit <= 1.15x limit (cpu)": r["audit/limit cpu"]["median"] <= 1.15,
                    "reference >= 1.8x audit (wall)": r["reference/audit wall"]["median"] >= 1.8})
    if "memory" in res:
        t0, t1 = res["memory"]["tokens"]
        out[f"peak RSS {t1}/{t0} tokens <= 1.1"] = res["memory"]["ratio_65k_16k"] <= 1.1
    if "widths" in res:
        out["per-config cost sub-linear in width"] = res["widths"]["audit_exponent"] < 1.0
    return out


def main() -> int:
    global TOKENS, VARIANT, DTYPE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "featsurv-bench-limit")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the models' dtype in every program (bfloat16 on a GPU)")
    p.add_argument("--quick", action="store_true", help="only the interleaved comparison")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run (of {', '.join(PARTS)})")
    p.add_argument("--json", type=Path, default=None, help="where to write the result (WORK/bench_limit.json)")
    p.add_argument("--widths", default=",".join(str(w) for w in W.WIDTHS))
    p.add_argument("--tokens", type=int, default=TOKENS, help="audit tokens of the interleaved runs (4096)")
    p.add_argument("--memory-tokens", default="16384,65536")
    p.add_argument("--variant", default="", help="extra audit options of a fourth program in the interleaved part, "
                   "reported beside (not instead of) the default audit, e.g. '--contexts-k 0'")
    args = p.parse_args()
    VARIANT = tuple(args.variant.split())
    TOKENS = args.tokens
    DTYPE = args.dtype
    ws = tuple(int(w) for w in args.widths.split(","))
    parts = ("interleaved",) if args.quick else tuple(x for x in args.parts.split(",") if x)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; allowed: {', '.join(PARTS)}")
    print(f"building the workload in {args.work} ...", flush=True)
    W.build(args.work, tuple(sorted(set(ws) | {16384})))
    run([FEATSURV, "--help"])  # warm the page cache of the libraries
    res = measure(args, parts, ws)
    res["targets"] = targets(res)
    text = report(res)
    print("\n" + text)
    (args.json or args.work / "bench_limit.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

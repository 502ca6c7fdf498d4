"""Where an audit makes the host wait for the GPU: every synchronising CUDA call, by source line.

    python benchmarks/cuda_syncs.py [featsurv audit arguments ...]

Runs ``featsurv audit ARGS`` in this process with ``torch.cuda.set_sync_debug_mode("warn")``
(torch warns at every call that synchronises the host with the device) and prints one JSON line:
the number of synchronising calls per featsurv source line (the innermost featsurv frame of
each), with the number of forward batches, so per-batch waits show as counts that are
multiples of it. Needs a CUDA GPU.
"""
from __future__ import annotations

import collections
import json
import sys
import traceback
import warnings


def main(argv: list[str]) -> int:
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    counts: collections.Counter[str] = collections.Counter()
    batches = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/featsurv/" in f.filename or "/featsurv_plugins/" in f.filename or "/plugins/" in f.filename]
        where = f"{frames[-1].filename.rsplit('/', 2)[-2]}/{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" \
            if frames else f"{filename}:{lineno}"
        counts[where] += 1

    warnings.showwarning = show
    warnings.simplefilter("always")
    from featsurv import passes

    step = passes.run_pass

    def counted(bench, tokens, *a, **k):  # noqa: ANN001
        batches["forward batches"] += tokens.n_batches(bench.options.batch_size)
        return step(bench, tokens, *a, **k)

    passes.run_pass = counted
    from featsurv import configuration, fp_pass

    configuration.run_pass = fp_pass.run_pass = counted
    torch.cuda.set_sync_debug_mode("warn")
    from featsurv.cli import main as featsurv_main

    code = 0
    try:
        featsurv_main(["audit", *argv])
    except SystemExit as exc:  # click ends the command with sys.exit
        code = int(exc.code or 0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        print(json.dumps({"batches": batches["forward batches"], "syncs": sum(counts.values()),
                          "by_line": dict(counts.most_common(40))}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

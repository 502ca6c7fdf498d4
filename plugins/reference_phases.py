"""Plugin ``phases``: the reference study's remaining analyses as commands.

`featsurv analyze RUN [RUN2]` (phase 4's threshold grid and phase 5's tables and figures, from
finished runs) and `featsurv stability COMPRESSOR` (phase 4's token-budget, random-subset and
FP-vs-FP ablations). See docs/reproducing.md.
"""
from __future__ import annotations

from featsurv import hookimpl


@hookimpl
def register_commands(cli):
    from featsurv.cli.common import add_metric_options

    from .phase_commands import analyze_cmd, stability_cmd

    cli.add_command(analyze_cmd)
    cli.add_command(add_metric_options(stability_cmd))

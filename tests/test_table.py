"""The printed table: flags, intervals, comparisons, and published figures side by side."""
from click.testing import CliRunner
import click

from featsurv.cli.table import print_published, print_summary
from featsurv.presets import get_preset


def _summary():
    entry = {"label": "rtn int6 granularity=tl", "compressor": "rtn", "params": {"bits": 6, "granularity": "tl"},
             "hook": "blocks.4.hook_resid_post", "perplexity": 40.0, "perplexity_change": 0.005, "survived": 0.6,
             "blurred": 0.39, "damaged": 0.01, "mean_r": 0.88, "perplexity_misses_damage": True,
             "ci": {"survived": [0.58, 0.61]}}
    return {"baseline": {"perplexity": 39.8, "n_tokens": 1000, "saes": {}}, "options": {"survival_target": 0.9},
            "results": [entry]}


def _run(fn, *args):
    @click.command()
    def cmd():
        fn(*args)

    return CliRunner().invoke(cmd, []).output


def test_flagged_configuration_is_impossible_to_overlook():
    out = _run(print_summary, _summary(), None)
    assert "PERPLEXITY MISSES DAMAGE" in out and "1 configuration(s)" in out and "58.0%-61.0%" in out


def test_published_figures_are_printed_beside_the_run():
    out = _run(print_published, _summary(), get_preset("pythia-70m"))
    assert "arXiv 2606.03002" in out
    line = next(l for l in out.splitlines() if l.startswith("rtn int6"))
    assert "60.0% / 62.4%" in line and "1.0% / 1.0%" in line and "0.5% / 14.7%" in line

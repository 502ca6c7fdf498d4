"""The sae-lens source loads SAEs without sae-lens's training stack, and sae-lens stays whole."""
import json
import subprocess
import sys

LOAD = """
import json, sys
from featsurv.data_paths import resolve
from featsurv.loading import load_sae
from featsurv.plugins import get_registry
{before}
sae = load_sae(get_registry(), resolve("featsurv:saes/featsurv-tiny/blocks.1.hook_resid_post"))
out = {{"arch": sae.architecture, "training_loaded": sorted(m for m in ("wandb", "sae_lens.training.sae_trainer",
       "sae_lens.cache_activations_runner") if m in sys.modules)}}
import sae_lens
from sae_lens import HookedSAETransformer, StandardSAE, SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
out["same_class"] = type(sae.sae).__mro__.count(SAE) == 1 and SAE_CLASS_REGISTRY["topk"][0] is type(sae.sae)
out["registered"] = sorted(SAE_CLASS_REGISTRY)
out["training_registered"] = "standard" in SAE_TRAINING_CLASS_REGISTRY
out["version"] = sae_lens.__version__
print(json.dumps(out))
"""


def _run(before: str = "") -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD.format(before=before)], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_load_skips_the_training_stack_and_the_package_completes_later():
    """In a fresh interpreter: loading an SAE imports no training stack; sae-lens is whole afterwards."""
    from importlib import metadata

    import sae_lens  # this process's sae-lens, imported plainly or lazily: its registry is complete

    out = _run()
    assert out["arch"] == "topk"
    assert out["training_loaded"] == []  # wandb and the runners were not imported to load an SAE
    assert out["same_class"] and out["training_registered"]
    assert out["registered"] == sorted(sae_lens.registry.SAE_CLASS_REGISTRY)
    assert out["version"] == metadata.version("sae-lens")


def test_an_already_imported_sae_lens_is_used_as_it_is():
    import sae_lens
    from sae_lens import StandardSAE  # completes a lazily entered package

    from featsurv_plugins.sae_saelens import _sae_class

    assert _sae_class() is sae_lens.SAE and issubclass(StandardSAE, sae_lens.SAE)

import os

# Tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["featsurv.testing"]


import pytest


@pytest.fixture(scope="module")
def cli_base_args(tiny_models, tiny_sae, tiny_corpus):
    """Options for a small CLI audit of the tiny GPT-NeoX with an exact SAE."""
    return ["--model", str(tiny_models["gpt_neox"]), "--sae", str(tiny_sae(tiny_models["gpt_neox"])),
            "--dataset", str(tiny_corpus), "--tokens", "512", "--context", "32", "--bootstrap", "0", "-q"]


@pytest.fixture(scope="module")
def base(cli_base_args):
    """The small CLI audit options (an alias used by the error and compare tests)."""
    return cli_base_args


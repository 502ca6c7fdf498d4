import os

# The tests build tiny models offline; nothing touches the network (but the slow packaging test's pip).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# featsurv's fixtures for plugin authors: tiny_corpus, tiny_models, tiny_sae, register_plugin.
pytest_plugins = "featsurv.testing"

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs pip or a whole featsurv command (seconds to a minute)")


@pytest.fixture
def gptq_registry(register_plugin):
    """featsurv's registry with the ``gptq`` compressor in it (by hand from a bare source checkout)."""
    import featsurv_gptq
    from featsurv.plugins import get_registry

    registry = get_registry()
    if "gptq" not in registry.names("compressors"):
        register_plugin(featsurv_gptq, name="gptq", distribution="featsurv-hqq", version=featsurv_gptq.__version__)
    return registry

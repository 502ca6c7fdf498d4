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
def bnb_registry(register_plugin):
    """featsurv's registry with the ``bnb`` compressor in it (by hand from a bare source checkout)."""
    import featsurv_bnb
    from featsurv.plugins import get_registry

    registry = get_registry()
    if "bnb" not in registry.names("compressors"):
        register_plugin(featsurv_bnb, name="bnb", distribution="featsurv-bnb", version=featsurv_bnb.__version__)
    return registry

import os

# The tests build tiny models offline; nothing touches the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# featsurv's fixtures for plugin authors: tiny_corpus, tiny_models, tiny_sae, register_plugin.
pytest_plugins = "featsurv.testing"


import pytest


@pytest.fixture
def torchao_registry(register_plugin):
    """featsurv's registry with the ``torchao`` compressor in it.

    When the distribution is pip-installed, its entry point already registered it; from a bare
    source checkout, register the module by hand through featsurv's ``register_plugin`` fixture.
    """
    import featsurv_torchao
    from featsurv.plugins import get_registry

    registry = get_registry()
    if "torchao" not in registry.names("compressors"):
        register_plugin(featsurv_torchao, name="torchao", distribution="featsurv-torchao",
                        version=featsurv_torchao.__version__)
    return registry

"""SAE architectures through the saelens source; datasets through their real loaders; dtypes."""
import json

import numpy as np
import pytest
import torch

from featsurv.audit import make_options
from featsurv.loading import dataset_source, load_sae
from featsurv.plugins import get_registry
from featsurv.runs import run_audit


def _save(sae, path):
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    sae.save_model(path)
    return path


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_every_sae_architecture_loads_and_encodes(tmp_path, arch):
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    classes = {"standard": ("StandardSAE", "StandardSAEConfig", {}), "topk": ("TopKSAE", "TopKSAEConfig", {"k": 4}),
               "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig", {}), "gated": ("GatedSAE", "GatedSAEConfig", {})}
    cls_name, cfg_name, extra = classes[arch]
    cfg = getattr(sae_lens, cfg_name)(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"),
                                      **extra)
    path = _save(getattr(sae_lens, cls_name)(cfg), tmp_path / arch)
    loaded = load_sae(get_registry(), str(path))
    assert loaded.architecture == arch and loaded.hook_name == "blocks.0.hook_resid_post"
    f = loaded.encode(torch.randn(5, 8))
    assert f.shape == (5, 16)
    stats = loaded.feature_stats()
    assert stats["decoder_norm"].shape == (16,) and stats["encoder_norm"].shape == (16,)
    if arch == "jumprelu":
        assert stats["threshold"].shape == (16,)
    # the explicit source prefix works too
    assert load_sae(get_registry(), f"saelens:{path}").d_sae == 16


def test_hf_dataset_spec_uses_datasets_load_dataset_on_a_local_dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": f"line number {i}", "other": i} for i in range(5)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    source = dataset_source(get_registry(), f"hf:{folder}")
    assert source.name == "hf"
    assert list(source.documents(f"hf:{folder}")) == [r["text"] for r in rows]
    from featsurv.errors import FeatsurvError

    with pytest.raises(FeatsurvError, match="no field 'body'"):
        list(source.documents(f"hf:{folder}::train:body"))


def test_jsonl_and_embedded_datasets():
    registry = get_registry()
    docs = list(dataset_source(registry, "featsurv:heldout").documents("featsurv:heldout"))
    assert len(docs) > 100 and all(d.strip() for d in docs)


def test_bfloat16_model_audit_runs_and_fp_vs_fp_is_exact(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    opts = make_options(model=str(tiny_models["gemma2"]), saes=[str(tiny_sae(tiny_models["gemma2"]))],
                        dataset=str(tiny_corpus), n_tokens=512, context=32, dtype="bfloat16", bootstrap=0,
                        min_explained_variance=0.0)
    result = run_audit(opts, [("magnitude", {"sparsity": 0.0, "scope": "matrix"}),
                              ("rtn", {"bits": 4, "symmetric": True, "granularity": "channel"})], out_dir=tmp_path / "r")
    f = result.features
    fp = f[(f.config == "pruning s=0") & f.active]
    assert len(fp) > 0
    assert np.allclose(fp.r, 1.0)
    assert result.run["options"]["dtype"] == "bfloat16"


def test_center_activations_matches_an_sae_trained_on_centred_inputs(tiny_models, tiny_corpus, tmp_path):
    """An SAE that only reconstructs the centred subspace fails the fit check until --center-activations."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d = 32
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    centre = torch.eye(d) - torch.full((d, d), 1.0 / d)
    basis = torch.linalg.svd(centre)[0][:, : d - 1]  # orthonormal basis of the zero-mean subspace
    enc = torch.cat([basis, -basis], dim=1)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * (d - 1),
                                        metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    with torch.no_grad():
        sae.W_enc.copy_(enc)
        sae.W_dec.copy_(enc.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    path = tmp_path / "centred-sae"
    sae.save_model(path)
    kw = dict(model=str(tiny_models["gpt_neox"]), saes=[str(path)], dataset=str(tiny_corpus), n_tokens=256,
              context=32, bootstrap=0, min_explained_variance=0.999)
    cfg = [("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"})]
    ok = run_audit(make_options(**kw, center_activations=True), cfg, out_dir=tmp_path / "a")
    assert ok.summary["baseline"]["saes"]["blocks.1.hook_resid_post"]["explained_variance"] > 0.999
    # without centring, the mean direction is lost: how much depends on the model, so only check it drops
    loose = run_audit(make_options(**{**kw, "min_explained_variance": -1e9}), cfg, out_dir=tmp_path / "b")
    assert loose.summary["baseline"]["saes"]["blocks.1.hook_resid_post"]["explained_variance"] < 0.999


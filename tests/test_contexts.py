"""The contexts metric: the streamed top-k against a brute-force dense top-k, the compressed
activations at those positions against the compressed model's features there, the table schema,
and `featsurv features`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from featsurv import Batch
from featsurv_plugins.explorer.topk import StreamingTopK, dense_topk
from featsurv_plugins.metric_contexts import COLUMNS, Contexts

sys.path.insert(0, str(Path(__file__).parent))
from _contexts_host import run_with_contexts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- synthetic fixture
def synthetic(n_ctx=12, ctx_len=10, d=9, seed=0):
    """Dense FP and compressed features of kept positions, with ties, zeros and excluded positions."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(n_ctx, ctx_len, generator=gen) > 0.2
    keep[:, 0] = False  # a BOS position
    n = int(keep.sum())
    fp = torch.relu(torch.randn(n, d, generator=gen)) * (torch.rand(n, d, generator=gen) < 0.4)
    fp = torch.round(fp * 4) / 4  # many exact ties
    fp[:, 0] = 0.0  # a dead feature
    fp[:, 1] = 0.0
    fp[[3, 7], 1] = 2.0  # fewer firings than k, tied
    comp = torch.relu(fp + 0.3 * torch.randn(n, d, generator=gen))
    comp = torch.round(comp * 4) / 4
    ids = torch.randint(5, 50, (n_ctx, ctx_len), generator=gen)
    ctx_of = keep.nonzero()[:, 0]
    pos_of = keep.nonzero()[:, 1]
    return keep, fp, comp, ids, ctx_of, pos_of


def batches_of(keep, ids, bs):
    row = 0
    for i, start in enumerate(range(0, keep.shape[0], bs)):
        kb = keep[start:start + bs]
        m = int(kb.sum())
        yield slice(row, row + m), Batch(i, start, kb.sum(1).tolist(), kb.nonzero()[:, 1], ids[start:start + bs])
        row += m


def dense_window(values, keep, ctx, pos, feat, w):
    """Brute force: the feature's values over pos-w..pos+w of one context (NaN: not kept/outside)."""
    row_of = -np.ones(keep.shape, dtype=int)
    row_of[keep.numpy()] = np.arange(int(keep.sum()))
    out = []
    for p in range(pos - w, pos + w + 1):
        if 0 <= p < keep.shape[1] and row_of[ctx, p] >= 0:
            out.append(float(values[row_of[ctx, p], feat]))
        else:
            out.append(float("nan"))
    return out


@pytest.fixture(params=["numpy", "torch"])
def backend(request, monkeypatch):
    """Both merge paths: NumPy (CPU tensors) and torch (other devices; run here on the CPU)."""
    from featsurv_plugins.explorer import topk

    monkeypatch.setattr(topk, "NUMPY_ON_CPU", request.param == "numpy")
    return request.param


@pytest.mark.parametrize("bs", [1, 3, 5])
def test_streaming_topk_equals_dense_topk(bs, backend):
    keep, fp, comp, ids, ctx_of, pos_of = synthetic()
    k, w, c = 4, 2, keep.shape[1]
    metric = Contexts()
    acc = metric.fp_accumulator(fp.shape[1], {"k": k, "window": w})
    for rows, batch in batches_of(keep, ids, bs):
        acc.update(fp[rows], batch)
    res = acc.result()
    keys = (ctx_of * c + pos_of).numpy()
    want = dense_topk(fp.numpy(), keys, k)
    e = res.entries
    got = {f: sorted(((int(r), int(kk), float(v)) for ff, r, kk, v in zip(e.feature, e.rank, e.key, e.value) if ff == f))
           for f in range(fp.shape[1])}
    for f in range(fp.shape[1]):
        assert [(kk, v) for _, kk, v in got[f]] == want[f], f  # same positions, same order, same values
    assert not got[0] and len(got[1]) == 2  # dead feature: nothing; two firings: two entries
    # the windows travel with their entries: FP activations and token ids around each position
    for i in range(len(e)):
        ctx, pos, f = int(e.key[i]) // c, int(e.key[i]) % c, int(e.feature[i])
        np.testing.assert_array_equal(e.payload["fp_window"][i], dense_window(fp, keep, ctx, pos, f, w))
        expect_ids = [int(ids[ctx, p]) if 0 <= p < c else -1 for p in range(pos - w, pos + w + 1)]
        assert e.payload["ids"][i].tolist() == expect_ids


def test_compressed_side_equals_the_compressed_features_there(backend):
    keep, fp, comp, ids, ctx_of, pos_of = synthetic(seed=1)
    k, w, c, d = 3, 1, keep.shape[1], fp.shape[1]
    metric = Contexts()
    acc = metric.fp_accumulator(d, {"k": k, "window": w})
    for rows, batch in batches_of(keep, ids, 4):
        acc.update(fp[rows], batch)
    fp_res = acc.result()
    facc = metric.feature_accumulator(d, {"k": k}, fp_result=fp_res)
    for rows, batch in batches_of(keep, ids, 4):
        facc.update(fp[rows], comp[rows], batch)
    res = facc.result({"firing_rate": (fp > 0).float().mean(0).numpy()})
    table = res.tables["contexts"]
    assert tuple(table.columns) == COLUMNS
    row_of = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(ctx_of, pos_of))}
    fp_rows = table[table["kind"] == "fp_top"]
    assert len(fp_rows) == len(fp_res.entries)
    for rec in fp_rows.to_dict("records"):
        i, f = row_of[(rec["context"], rec["position"])], rec["feature"]
        assert rec["fp_act"] == float(fp[i, f]) and rec["compressed_act"] == float(comp[i, f])
        np.testing.assert_array_equal(rec["compressed_window"], dense_window(comp, keep, rec["context"], rec["position"], f, w))
        np.testing.assert_array_equal(rec["fp_window"], dense_window(fp, keep, rec["context"], rec["position"], f, w))
    # the compressed model's own top-k: the dense oracle on the compressed features
    want = dense_topk(comp.numpy(), (ctx_of * c + pos_of).numpy(), k)
    ct = table[table["kind"] == "compressed_top"]
    fp_sets = {f: {(r["context"], r["position"]) for r in fp_rows[fp_rows["feature"] == f].to_dict("records")}
               for f in range(d)}
    overlap = res.per_feature["top_overlap"]
    for f in range(d):
        rows = ct[ct["feature"] == f].sort_values("rank")
        assert [(r["context"] * c + r["position"], r["compressed_act"]) for r in rows.to_dict("records")] == want[f]
        for r in rows.to_dict("records"):
            i = row_of[(r["context"], r["position"])]
            assert r["fp_act"] == float(fp[i, f])
            assert r["in_both"] == ((r["context"], r["position"]) in fp_sets[f])
        shared = len(fp_sets[f] & {(r["context"], r["position"]) for r in rows.to_dict("records")})
        if fp_sets[f]:
            assert overlap[f] == pytest.approx(shared / len(fp_sets[f]))
        else:
            assert np.isnan(overlap[f])
    # ranks within (feature, kind) are 0..n-1; rows are ordered feature, fp_top first, rank
    for (f, kind), g in table.groupby(["feature", "kind"]):
        assert g["rank"].tolist() == list(range(len(g)))
    kinds = table["kind"].tolist()  # the fp_top block, then the compressed_top block
    assert kinds == sorted(kinds, key=lambda x: x != "fp_top") and set(kinds) == {"fp_top", "compressed_top"}
    for _, block in table.groupby("kind", sort=False):
        assert list(zip(block["feature"], block["rank"])) == sorted(zip(block["feature"], block["rank"]))


def test_topk_memory_is_d_by_k():
    tk = StreamingTopK(d=50, k=3)
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        v = torch.relu(torch.randn(64, 50, generator=gen))
        tk.update(v, torch.arange(64) + 64 * i, lambda r, f: {"x": torch.zeros(len(r), 5)})
    assert tk.values.shape == (50, 3) and tk.keys.shape == (50, 3) and tk.payload["x"].shape == (50, 3, 5)


def test_payloads_follow_their_entries_through_pool_growth_and_compaction(backend):
    """Many batches, each entering many entries: the payload pool fills, then is compacted in
    place; every kept entry still carries the payload computed when it entered."""
    d, k, t = 7, 3, 16
    tk = StreamingTopK(d=d, k=k)
    gen = torch.Generator().manual_seed(3)
    all_v, all_keys, grown = [], [], set()
    for i in range(60):
        v = torch.relu(torch.randn(t, d, generator=gen)) * (1 + i / 10)  # rising: many enter late
        keys = torch.arange(t) + t * i
        all_v.append(v), all_keys.append(keys)

        def payload(rows, feats, keys=keys):
            return {"key": np.stack([keys.numpy()[rows], feats], axis=1), "x": (keys.numpy()[rows] * 10.0 + feats)[:, None]}

        tk.update(v, keys, payload)
        grown.add(next(iter(tk._pool.values())).shape[0])
        assert tk._used <= 2 * d * k
    # allocated for 1.25 d k, grown only when more entered at once than the room left, compacted in place
    assert min(grown) == d * k + d * k // 4 and max(grown) <= 2 * d * k and tk.compactions > 5
    e = tk.entries()
    want = dense_topk(torch.cat(all_v).numpy(), torch.cat(all_keys).numpy(), k)
    for f in range(d):
        assert [(int(kk), float(vv)) for ff, kk, vv in zip(e.feature, e.key, e.value) if ff == f] == want[f]
    np.testing.assert_array_equal(e.payload["key"], np.stack([e.key, e.feature], axis=1))
    np.testing.assert_array_equal(e.payload["x"][:, 0], e.key * 10.0 + e.feature)
    full = tk.payload["x"]  # [d, k, 1], NaN where a slot is empty
    assert full.shape == (d, k, 1) and np.isnan(full[tk.values == 0]).all()


def test_metric_declares_its_options_and_is_registered():
    from featsurv.plugins import get_registry

    metric = get_registry().get("metrics", "contexts")
    opts = {p.name: p for p in metric.options}
    assert opts["k"].default == 20 and opts["window"].default == 8 and opts["k"].flag == "contexts-k"
    assert metric.feature_accumulator(8, {}) is None  # a host without FP accumulators gets nothing
    out = subprocess.run([sys.executable, "-c", "from featsurv.cli import main; main(['--help'])"],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert "features" in out.stdout, out.stdout + out.stderr


def test_schema_is_documented():
    doc = (ROOT / "docs" / "results-contexts.md").read_text()
    for col in COLUMNS + ("config", "hook"):
        assert f"`{col}`" in doc, col


# --------------------------------------------------------------------------- a real model
@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_models, tiny_sae, tiny_corpus):
    from featsurv.audit import AuditOptions

    model = tiny_models["gpt_neox"]
    opts = AuditOptions(model=str(model), saes=[str(tiny_sae(model))], dataset=str(tiny_corpus), n_tokens=512,
                        context=32, batch_size=4, metric_options={"survival": {"bootstrap": 0}})
    out = tmp_path_factory.mktemp("ctxrun") / "run"
    result, contexts = run_with_contexts(opts, [("rtn", {"bits": 3})], out, k=4, window=3)
    return out, result, contexts


def test_on_a_real_model_positions_and_activations(tmp_path, tiny_models, tiny_sae, tiny_corpus):
    """Through the host on a tiny GPT-NeoX: the FP top-k equals the dense FP top-k, and the
    compressed activations at those positions equal the compressed model's SAE features there
    (the dense features come from a probe metric in the same audit)."""
    from featsurv.audit import AuditOptions

    model = tiny_models["gpt_neox"]
    opts = AuditOptions(model=str(model), saes=[str(tiny_sae(model))], dataset=str(tiny_corpus), n_tokens=512,
                        context=32, batch_size=3, metric_options={"survival": {"bootstrap": 0}})
    result, table = run_with_contexts(opts, [("rtn", {"bits": 3})], tmp_path / "run", k=5, window=2, probe=True)
    (label, hook), (fp, comp) = next(iter(result.extra["dense"].items()))
    keep = result.extra["keep"]
    ctx_of, pos_of = keep.nonzero()[:, 0], keep.nonzero()[:, 1]
    c = keep.shape[1]
    keys = (ctx_of * c + pos_of).numpy()
    fp_rows = table[(table["kind"] == "fp_top") & (table["config"] == label) & (table["hook"] == hook)]
    want = dense_topk(fp.numpy(), keys, 5)
    for f in range(fp.shape[1]):
        rows = fp_rows[fp_rows["feature"] == f].sort_values("rank")
        assert [(r["context"] * c + r["position"], r["fp_act"]) for r in rows.to_dict("records")] == want[f]
    row_of = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(ctx_of, pos_of))}
    sel = [row_of[(a, b)] for a, b in zip(fp_rows["context"], fp_rows["position"])]
    np.testing.assert_array_equal(fp_rows["compressed_act"].to_numpy(),
                                  comp[sel, fp_rows["feature"].to_numpy().copy()].numpy())
    assert (fp_rows["compressed_act"] != fp_rows["fp_act"]).any()  # int3 changes the features
    ct = table[(table["kind"] == "compressed_top") & (table["config"] == label)]
    want_c = dense_topk(comp.numpy(), keys, 5)
    for f in range(comp.shape[1]):
        rows = ct[ct["feature"] == f].sort_values("rank")
        assert [(r["context"] * c + r["position"], r["compressed_act"]) for r in rows.to_dict("records")] == want_c[f]
    # windows: the token ids of the audit contexts, decoded text from the model's tokenizer
    tok, ids_all = result.extra["tokenizer"], result.extra["contexts_ids"]
    for rec in fp_rows.head(20).to_dict("records"):
        ctx, pos = rec["context"], rec["position"]
        lo, hi = max(0, pos - 2), min(c, pos + 3)
        ids = ids_all[ctx, lo:hi].tolist()
        assert [i for i in list(rec["window_ids"]) if i >= 0] == ids
        assert rec["text"] == "".join(tok.decode([i]) for i in ids)
        assert rec["window_tokens"][rec["target"]] == tok.decode([int(ids_all[ctx, pos])])
    # the host wrote it all: the table, the per-feature overlap, the summary, the report's link
    out = tmp_path / "run"
    assert len(pd.read_parquet(out / "contexts.parquet")) == len(table)
    assert "contexts.top_overlap" in pd.read_parquet(out / "features.parquet").columns
    entry = json.loads((out / "summary.json").read_text())["results"][0]
    assert entry["metrics"]["contexts"]["k"] == 5 and entry["metrics"]["contexts"]["n_rows"] == len(table)
    assert 'href="explorer.html"' in (out / "report.html").read_text() and (out / "explorer.html").is_file()


def test_run_directory_holds_the_contexts_table(real_run):
    out, result, contexts = real_run
    back = pd.read_parquet(out / "contexts.parquet")
    assert set(COLUMNS) | {"config", "hook"} <= set(back.columns) and len(back) == len(contexts)
    assert set(back["kind"]) == {"fp_top", "compressed_top"}
    assert "contexts.top_overlap" in result.features.columns
    assert (out / "explorer.html").is_file()


def test_features_command(real_run):
    from featsurv.cli import cli  # through the group: invoking the command alone changes its cached help option

    out, result, contexts = real_run
    fp = contexts[contexts["kind"] == "fp_top"]
    feature = int(fp.sort_values("fp_act").iloc[-1]["feature"])
    res = CliRunner().invoke(cli, ["features", str(out), "--feature", str(feature), "--contexts", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"feature {feature} @ ")
    assert "rtn int3 r=" in res.output and "top FP contexts" in res.output and "top contexts under rtn int3" in res.output
    first = fp[fp["feature"] == feature].sort_values("rank").iloc[0]
    tok = first["window_tokens"][first["target"]]
    assert f"[[{tok}]]" in res.output  # the activating token is marked
    js = CliRunner().invoke(cli, ["features", str(out), "--worst", "3", "--json"])
    assert js.exit_code == 0, js.output
    recs = json.loads(js.output)
    assert len(recs) == 3
    active = result.features[result.features["active"]]
    assert [r["feature"] for r in recs] == active.sort_values(["r", "feature"], kind="mergesort")["feature"].head(3).tolist()
    assert all(re.search(r"\[\[.*\]\]", e["text"]) for r in recs for e in r["fp_top"])
    for bad, needle in (([str(out), "--feature", "99999"], "Unknown feature id(s) 99999"),
                        ([str(out), "--hook", "blocks.9.hook_resid_post"], "Unknown hook"),
                        ([str(out), "--config", "nope"], "Unknown configuration")):
        r = CliRunner().invoke(cli, ["features", *bad])
        assert r.exit_code == 2 and needle in r.output, r.output


def test_neuronpedia_id_from_saelens_metadata(tmp_path, tiny_models):
    """sae-lens keeps the id in cfg.metadata.neuronpedia_id; the SAE source hands it on."""
    from featsurv.testing import write_exact_sae
    from featsurv_plugins.sae_saelens import SaeLensSource

    d = write_exact_sae(tmp_path / "sae", 32, "blocks.1.hook_resid_post")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["metadata"]["neuronpedia_id"] = "tiny-model/1-res-test"
    (d / "cfg.json").write_text(json.dumps(cfg))
    assert SaeLensSource().load(str(d)).neuronpedia_id == "tiny-model/1-res-test"
    assert SaeLensSource().load(str(write_exact_sae(tmp_path / "plain", 32, "blocks.1.hook_resid_post"))).neuronpedia_id is None


def test_contexts_k_zero_keeps_no_contexts_and_the_same_survival(tmp_path, tiny_models, tiny_sae, tiny_corpus):
    """``--contexts-k 0``: no top-k, no contexts.parquet, an explorer without contexts; every other
    result as with contexts."""
    from featsurv.cli import cli

    model = tiny_models["gpt_neox"]
    base = ["audit", "rtn", "-p", "bits=4", "--model", str(model), "--sae", str(tiny_sae(model)), "--dataset",
            str(tiny_corpus), "--tokens", "512", "--context", "32", "--bootstrap", "0", "-q"]
    runs = {}
    for k in ("0", "3"):
        res = CliRunner().invoke(cli, [*base, "--contexts-k", k, "--out", str(tmp_path / k)])
        assert res.exit_code == 0, res.output
        runs[k] = json.loads((tmp_path / k / "summary.json").read_text())["results"][0]
    assert not (tmp_path / "0" / "contexts.parquet").exists() and (tmp_path / "3" / "contexts.parquet").is_file()
    assert "contexts" not in runs["0"].get("metrics", {}) and runs["3"]["metrics"]["contexts"]["k"] == 3
    assert "no contexts (the contexts metric did not run)" in (tmp_path / "0" / "report.html").read_text()
    assert (tmp_path / "0" / "explorer.html").is_file()
    for key in ("survived", "blurred", "damaged", "mean_r", "perplexity"):
        assert runs["0"][key] == runs["3"][key], key
    a = pd.read_parquet(tmp_path / "0" / "features.parquet")
    b = pd.read_parquet(tmp_path / "3" / "features.parquet")
    np.testing.assert_array_equal(a["r"].to_numpy(), b["r"].to_numpy())
    assert "contexts.top_overlap" not in a.columns

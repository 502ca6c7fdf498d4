"""Hooks, their documentation and their tests stay in step.

- every hook specification in ``featsurv.hookspecs`` has a section in docs/plugins/hooks.md
  headed by its signature (built here with ``inspect.signature``), showing its full annotated
  signature, when it fires, and an example plugin;
- every hook specification has an entry in ``HOOK_EXERCISES`` below, which loads the documented
  example as a plugin and checks that it works through the host (a new hookspec without an entry
  fails ``test_every_hookspec_is_exercised``);
- every ``# example plugin:`` block in docs/plugins/*.md loads without a warning;
- the tutorial's distribution (pyproject entry point + module) is discovered and its compressor
  runs ``featsurv compare toy rtn``; the links between the pages resolve;
- ``featsurv plugins --json`` lists the example distribution featsurv-torchao when it is installed.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from featsurv import hookspecs
from featsurv.plugins import (
    PluginWarning,
    Registry,
    build_registry,
    get_registry,
    reset_registry,
)
from featsurv.testing import run_featsurv

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins"
HOOKS_MD = DOCS / "hooks.md"

HOOKSPECS: dict[str, Callable[..., Any]] = {
    name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "featsurv_spec")}


# --------------------------------------------------------------------------- helpers
def _annotation(ann: Any) -> str:
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def heading_signature(fn: Callable[..., Any]) -> str:
    """``register_compressors(register)``: the name and parameters (defaults kept, annotations dropped)."""
    sig = inspect.signature(fn)
    bare = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                       return_annotation=inspect.Signature.empty)
    return f"{fn.__name__}{bare}"


def full_signature(fn: Callable[..., Any]) -> str:
    """``def register_compressors(register: Callable[[Any], None]) -> None``."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {_annotation(p.annotation)}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = "" if sig.return_annotation is inspect.Signature.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"def {fn.__name__}({', '.join(params)}){ret}"


def sections(text: str) -> dict[str, str]:
    """``## heading`` -> the text up to the next ``## `` heading."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def code_blocks(text: str, lang: str = "python") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def example_plugins(text: str) -> dict[str, str]:
    """``# example plugin: FILE.py`` blocks -> {file name: source}."""
    found = {}
    for block in code_blocks(text):
        m = re.match(r"# example plugin: (\S+\.py)\n", block)
        if m:
            found[m.group(1)] = block
    return found


def load_example(source_name: str, source: str, folder: Path) -> Registry:
    """Load one documented example as a ``--plugins-dir`` plugin; any plugin warning fails the test."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / source_name).write_text(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        registry = build_registry(plugins_dir=folder)
    plugin = Path(source_name).stem
    assert plugin in registry.plugins, f"{source_name} was not loaded"
    return registry


def hook_example(hook: str) -> tuple[str, str]:
    body = sections(HOOKS_MD.read_text())[heading_signature(HOOKSPECS[hook])]
    examples = example_plugins(body)
    assert len(examples) == 1, f"the section of {hook} in hooks.md needs exactly one '# example plugin:' block"
    return next(iter(examples.items()))


@pytest.fixture(autouse=True)
def clean_controls(clean_plugin_controls):
    yield


def _featsurv(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_featsurv(*args, env_extra=env_extra, timeout=300)


# --------------------------------------------------------------------------- hooks.md <-> hookspecs
def test_hookspecs_are_found():
    assert {"register_compressors", "register_model_adapters", "register_sae_sources", "register_metrics",
            "register_datasets", "register_commands"} <= set(HOOKSPECS)
    assert heading_signature(hookspecs.register_compressors) == "register_compressors(register)"
    assert full_signature(hookspecs.register_compressors) == \
        "def register_compressors(register: Callable[[Any], None]) -> None"


@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_every_hookspec_has_a_section_with_its_signature(hook):
    fn = HOOKSPECS[hook]
    text = HOOKS_MD.read_text()
    secs = sections(text)
    heading = heading_signature(fn)
    assert heading in secs, f"docs/plugins/hooks.md needs a heading '## {heading}'"
    body = secs[heading]
    assert any(block.strip() == full_signature(fn) for block in code_blocks(body)), \
        f"the section '## {heading}' must show the signature in a python block: {full_signature(fn)}"
    for part in ("**Parameters.**", "**When it fires.**", "# example plugin:"):
        assert part in body, f"the section '## {heading}' lacks {part!r}"
    for name in inspect.signature(fn).parameters:
        assert f"`{name}`" in body, f"the section '## {heading}' does not describe the parameter {name!r}"


def test_no_section_for_a_hook_that_does_not_exist():
    documented = {h.split("(")[0] for h in sections(HOOKS_MD.read_text()) if re.match(r"^\w+\(.*\)$", h)}
    assert documented == set(HOOKSPECS), f"stale or missing hook sections: {documented ^ set(HOOKSPECS)}"


# --------------------------------------------------------------------------- every hook is exercised
def _exercise_compressors(registry: Registry, folder: Path, request) -> None:
    from featsurv import WeightTarget

    comp = registry.get("compressors", "noise")
    assert registry.plugins["noise"].provides == {"compressors": ["noise"]}
    layer = torch.nn.Linear(16, 8)
    param, fp = layer.weight, layer.weight.detach().clone()
    torch.manual_seed(0)
    comp.compress([WeightTarget("w", layer, "mlp_in", 0)], {"scale": 0.1})
    assert layer.weight is param and not torch.equal(param.detach(), fp)
    assert (param.detach() - fp).std() < 0.2 * fp.std()


def _exercise_model_adapters(registry: Registry, folder: Path, request) -> None:
    from transformers import AutoModelForCausalLM

    from featsurv.capture import capture
    from featsurv.loading import pick_adapter

    try:
        from transformers import PhiConfig
    except ImportError:
        pytest.skip("this transformers has no PhiConfig")
    config = PhiConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=4)
    adapter = pick_adapter(registry, config, None)
    assert adapter.name == "phi", "the documented adapter outranks `generic` for its model type"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    hooks = [f"blocks.{L}.hook_{k}" for L in range(3) for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad(), capture(adapter, model, hooks) as acts:
        hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    for L in range(3):
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"], hidden[L])
        if L < 2:
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], hidden[L + 1])
        # parallel attention and MLP both add to the residual stream
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"],
                                   acts[f"blocks.{L}.hook_resid_pre"] + acts[f"blocks.{L}.hook_attn_out"]
                                   + acts[f"blocks.{L}.hook_mlp_out"], rtol=1e-5, atol=1e-5)
    roles = [(t.name, t.role) for t in adapter.compressible_weights(model) if t.layer == 0]
    assert roles == [("model.layers.0.self_attn.q_proj", "q"), ("model.layers.0.self_attn.k_proj", "k"),
                     ("model.layers.0.self_attn.v_proj", "v"), ("model.layers.0.self_attn.dense", "o"),
                     ("model.layers.0.mlp.fc1", "mlp_in"), ("model.layers.0.mlp.fc2", "mlp_out")]


def _exercise_sae_sources(registry: Registry, folder: Path, request) -> None:
    import numpy as np

    from featsurv.loading import load_sae

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    path = folder / "relu_sae.npz"
    np.savez(path, W_enc=np.concatenate([q, -q], 1), b_enc=np.zeros(32), W_dec=np.concatenate([q.T, -q.T], 0),
             b_dec=np.zeros(16), hook="blocks.1.hook_resid_post")
    for spec in (str(path), f"npz:{path}"):
        sae = load_sae(registry, spec)
        assert (sae.d_in, sae.d_sae, sae.hook_name, sae.source) == (16, 32, "blocks.1.hook_resid_post", "npz")
        x = torch.randn(5, 16)
        torch.testing.assert_close(sae.decode(sae.encode(x)), x, rtol=1e-4, atol=1e-4)


def _exercise_metrics(registry: Registry, folder: Path, request) -> None:
    from featsurv.audit import AuditSession, make_options
    from featsurv.progress import Progress
    from featsurv.runs import run_audit

    metric = registry.get("metrics", "lost_firing")
    assert metric.default is False
    acc = metric.feature_accumulator(3, {})
    fp = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    from featsurv import Batch

    acc.update(fp, torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]), Batch(0, 0, [2]))
    result = acc.result({})
    assert result.per_feature["lost_share"].tolist() == [0.5, 1.0, 0.0]
    # and through a real audit, asked for with --metric
    tiny_models, tiny_sae, tiny_corpus = (request.getfixturevalue(n) for n in ("tiny_models", "tiny_sae", "tiny_corpus"))
    model = tiny_models["llama"]
    options = make_options(model=str(model), saes=[str(tiny_sae(model))], dataset=str(tiny_corpus), n_tokens=256,
                           bootstrap=0, metrics=["lost_firing"])
    session = AuditSession(options, registry, Progress(quiet=True))
    run = run_audit(options, [("rtn", {"bits": 3, "symmetric": True, "granularity": "channel"})],
                    out_dir=folder / "run", session=session)
    entry = json.loads((folder / "run" / "summary.json").read_text())["results"][0]
    assert 0.0 <= entry["mean_lost_share"] <= 1.0 and isinstance(entry["n_switched_off"], int)
    assert "lost_firing.lost_share" in run.features.columns
    # the whole way through the CLI, with no host change: option, summary field, table column, report section
    from click.testing import CliRunner

    from featsurv.cli import cli

    out = folder / "cli-run"
    res = CliRunner().invoke(cli, ["--plugins-dir", str(folder), "audit", "rtn", "-p", "bits=3", "--model", str(model),
                                   "--sae", str(tiny_sae(model)), "--dataset", str(tiny_corpus), "--tokens", "256",
                                   "--bootstrap", "0", "--metric", "lost_firing", "--metric-option",
                                   "lost_firing.min_share=0.2", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.output.splitlines() if line.startswith("configuration"))
    assert header.split()[-1] == "lost"
    row = next(line for line in res.output.splitlines() if line.startswith("rtn int3"))
    cli_entry = json.loads((out / "summary.json").read_text())["results"][0]
    assert row.split()[-1] == f"{100 * cli_entry['mean_lost_share']:.1f}%"
    assert json.loads((out / "run.json").read_text())["metric_options"]["lost_firing"] == {"min_share": 0.2}
    share = run.features["lost_firing.lost_share"].to_numpy()
    assert cli_entry["n_switched_off"] == int((share > 0.2).sum())  # same tokens, same seed: same shares
    html = (out / "report.html").read_text()
    assert "<h2>Switched-off features</h2>" in html and f"{cli_entry['n_switched_off']} switched off" in html
    bad = CliRunner().invoke(cli, ["--plugins-dir", str(folder), "audit", "rtn", "--metric", "lost_firing",
                                   "--metric-option", "lost_firing.min_share=2", "--out", str(folder / "bad")])
    assert bad.exit_code == 2 and "'min_share'" in bad.output and not (folder / "bad").exists()


def _exercise_datasets(registry: Registry, folder: Path, request) -> None:
    from featsurv.loading import dataset_source

    path = folder / "docs.lines"
    path.write_text("first document\n\n  second document  \nthird\n")
    source = dataset_source(registry, f"lines:{path}")
    assert source.name == "lines"
    assert list(source.documents(f"lines:{path}")) == ["first document", "second document", "third"]


def _exercise_commands(registry: Registry, folder: Path, request) -> None:
    out = _featsurv("--plugins-dir", str(folder), "hello", "docs")
    assert out.returncode == 0, out.stderr
    n = len(registry.names("compressors"))
    assert out.stdout.strip() == f"hello docs: {n} compressors are installed"
    helped = _featsurv("--plugins-dir", str(folder), "--help")
    assert "hello" in helped.stdout


#: hook name -> check of its documented example, loaded as a plugin through the host.
HOOK_EXERCISES: dict[str, Callable[[Registry, Path, Any], None]] = {
    "register_compressors": _exercise_compressors,
    "register_model_adapters": _exercise_model_adapters,
    "register_sae_sources": _exercise_sae_sources,
    "register_metrics": _exercise_metrics,
    "register_datasets": _exercise_datasets,
    "register_commands": _exercise_commands,
}


def test_every_hookspec_is_exercised():
    missing = set(HOOKSPECS) - set(HOOK_EXERCISES)
    assert not missing, (f"hookspecs without a test: {sorted(missing)}. Add a section with an example plugin to "
                         "docs/plugins/hooks.md and an entry to HOOK_EXERCISES in tests/test_hooks_documented.py")
    assert not set(HOOK_EXERCISES) - set(HOOKSPECS), "HOOK_EXERCISES names a hook that no longer exists"


@pytest.mark.parametrize("hook", sorted(HOOK_EXERCISES))
def test_documented_example_works_through_the_host(hook, tmp_path, request):
    if hook not in HOOKSPECS:
        pytest.fail(f"{hook} is no longer a hookspec")
    name, source = hook_example(hook)
    impls = re.findall(r"^def (\w+)\(", source, re.M)
    assert hook in impls, f"the example for {hook} does not implement it"
    registry = load_example(name, source, tmp_path / "plugins")
    HOOK_EXERCISES[hook](registry, tmp_path / "plugins", request)


# --------------------------------------------------------------------------- every docs example loads
def _all_examples() -> list[Any]:
    out = []
    for page in sorted(DOCS.glob("*.md")):
        for name, source in example_plugins(page.read_text()).items():
            out.append(pytest.param(page.name, name, source, id=f"{page.name}:{name}"))
    return out


@pytest.mark.parametrize("page,name,source", _all_examples())
def test_every_example_plugin_in_the_docs_loads(page, name, source, tmp_path):
    registry = load_example(name, source, tmp_path)
    provides = registry.plugins[Path(name).stem].provides
    has_command = "register_commands" in source
    assert provides or has_command, f"{page}: {name} registers nothing"


def test_adapter_check_snippet_runs():
    """The 'Checking an adapter' snippet of adapters.md runs against its Phi example."""
    pytest.importorskip("transformers").PhiConfig
    text = (DOCS / "adapters.md").read_text()
    phi = example_plugins(text)["phi_adapter.py"]
    (snippet,) = [b for b in code_blocks(text) if "output_hidden_states=True" in b]
    namespace: dict[str, Any] = {"__name__": "adapters_md"}
    exec(compile(phi, "adapters.md:phi_adapter.py", "exec"), namespace)
    torch.manual_seed(0)
    exec(compile(snippet, "adapters.md:check", "exec"), namespace)
    assert namespace["targets"][0].role == "q"


# --------------------------------------------------------------------------- the tutorial
def _tutorial() -> tuple[dict[str, Any], str, str]:
    text = (DOCS / "tutorial.md").read_text()
    (pyproject,) = [b for b in code_blocks(text, "toml") if "[project.entry-points.featsurv]" in b]
    (module,) = [b for b in code_blocks(text) if "@hookimpl" in b]
    (test,) = [b for b in code_blocks(text) if "def test_" in b]
    return tomllib.loads(pyproject), module, test


@pytest.fixture
def toy_site(tmp_path, monkeypatch) -> Path:
    """Install the tutorial's distribution as pip would (dist-info with its entry points), on sys.path."""
    project, module, _ = _tutorial()
    meta = project["project"]
    site = tmp_path / "site"
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    eps = meta["entry-points"]["featsurv"]
    (info / "entry_points.txt").write_text("[featsurv]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    (mod_name,) = project["tool"]["setuptools"]["py-modules"]
    (site / f"{mod_name}.py").write_text(module)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, mod_name, raising=False)
    reset_registry()
    return site


def test_tutorial_project_declares_the_entry_point():
    project, module, _ = _tutorial()
    meta = project["project"]
    assert meta["entry-points"]["featsurv"] == {"toy": "featsurv_toy"}
    assert not any(dep.split("[")[0].strip().lower().startswith("torch") for dep in meta["dependencies"]), \
        "the tutorial must not teach depending on torch"
    assert "import torch" not in module.split("class ")[0], "the tutorial module must import torch lazily"


def test_tutorial_distribution_is_discovered_and_its_test_passes(toy_site):
    registry = get_registry()
    info = registry.plugins["toy"]
    assert (info.distribution, info.provides) == ("featsurv-toy", {"compressors": ["toy"]})
    _, _, test = _tutorial()
    namespace: dict[str, Any] = {}
    exec(compile(test, "tutorial.md", "exec"), namespace)
    for name, fn in namespace.items():
        if name.startswith("test_"):
            fn()


def test_tutorial_compare_toy_rtn(toy_site, tiny_models, tiny_sae, tiny_corpus, tmp_path):
    from click.testing import CliRunner

    from featsurv.cli import cli

    model = tiny_models["llama"]
    res = CliRunner().invoke(cli, ["compare", "toy", "rtn", "--model", str(model), "--sae", str(tiny_sae(model)),
                                   "--dataset", str(tiny_corpus), "--tokens", "256", "--bootstrap", "0",
                                   "--steps", "3", "-q", "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    (comparison,) = json.loads((tmp_path / "cmp" / "summary.json").read_text())["comparisons"]
    assert comparison["a"] == "toy mantissa_bits=2" and comparison["b"].startswith("rtn int")


@pytest.mark.slow
def test_tutorial_plugin_is_listed_by_the_cli(toy_site):
    out = _featsurv("plugins", "--json", env_extra={"PYTHONPATH": os.pathsep.join(
        [str(toy_site), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert out.returncode == 0, out.stderr
    assert {"name": "toy", "distribution": "featsurv-toy", "version": "0.1.0",
            "provides": {"compressors": ["toy"]}} in json.loads(out.stdout)


# --------------------------------------------------------------------------- links between the pages
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_resolve(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (DOCS / page).parent / path if path else DOCS / page
        assert file.exists(), f"{page}: broken link {target}"
        if anchor and file.suffix == ".md":
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
            assert anchor in anchors, f"{page}: no heading for the anchor in {target}"


def test_index_links_every_page():
    index = (DOCS / "index.md").read_text()
    for page in ("tutorial.md", "hooks.md", "adapters.md", "troubleshooting.md"):
        assert f"]({page})" in index, f"docs/plugins/index.md does not link {page}"


# --------------------------------------------------------------------------- the example distribution
def _torchao_plugin_importable() -> str | None:
    """None when featsurv-torchao is installed and importable, else why not."""
    from importlib import metadata

    try:
        metadata.distribution("featsurv-torchao")
    except metadata.PackageNotFoundError:
        return "featsurv-torchao is not installed (make install runs pip install -e ./distributions/featsurv-torchao)"
    try:
        import featsurv_torchao  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"featsurv-torchao is installed but not importable: {type(exc).__name__}: {exc}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_torchao_plugin_importable() is not None and not os.environ.get("CI"),  # CI installs it
                    reason=str(_torchao_plugin_importable()))
def test_cli_lists_the_example_distribution():
    out = _featsurv("plugins", "--json")
    assert out.returncode == 0, out.stderr
    listed = {p["name"]: p for p in json.loads(out.stdout)}
    assert listed["torchao"]["distribution"] == "featsurv-torchao"
    assert listed["torchao"]["provides"] == {"compressors": ["torchao"]}
    assert "Failed to load" not in out.stderr  # torchao's CPU-only import noise is filtered

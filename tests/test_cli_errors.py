"""Every user error: one paragraph naming the bad value, exit code 2, no traceback, nothing written."""
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.testing import write_exact_sae


def run(args):
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def base_args(cli_base_args):
    return cli_base_args


def invoke(args):
    return CliRunner().invoke(cli, args)


def swap(args, flag, value):
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def check_error(result, *needles, out_dir=None):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, result.output
    if out_dir is not None:
        assert not out_dir.exists()
        assert not any(out_dir.parent.glob(f".{out_dir.name}*"))


def test_unknown_compressor_lists_available(base_args, tmp_path):
    out = tmp_path / "r"
    check_error(invoke(["audit", "nosuch", *base_args, "--out", str(out)]), "'nosuch'", "pruning, rtn",
                "featsurv plugins", out_dir=out)


@pytest.mark.parametrize("param,needle", [
    ("bits=1", "'bits'"), ("bits=abc", "'abc'"), ("granularity=row", "'row'"), ("foo=3", "'foo'"),
    ("bits", "KEY=VALUE"), ("symmetric=maybe", "'maybe'"),
])
def test_bad_parameters(base_args, tmp_path, param, needle):
    out = tmp_path / "r"
    check_error(invoke(["audit", "rtn", "-p", param, *base_args, "--out", str(out)]), needle, out_dir=out)


def test_unknown_adapter_metric_dataset_and_sae(base_args, tmp_path):
    out = tmp_path / "r"
    check_error(invoke(["audit", "rtn", *base_args, "--adapter", "nosuch", "--out", str(out)]),
                "model adapter 'nosuch'", "gemma2, generic, gpt2, gpt_neox", out_dir=out)
    check_error(invoke(["audit", "rtn", *base_args, "--metric", "nosuch", "--out", str(out)]),
                "metric 'nosuch'", out_dir=out)
    check_error(invoke(["audit", "rtn", *swap(base_args, "--dataset", "weird:thing"), "--out", str(out)]),
                "'weird:thing'", "featsurv:heldout", out_dir=out)
    check_error(invoke(["audit", "rtn", *swap(base_args, "--dataset", str(tmp_path / "missing.txt")), "--out", str(out)]),
                "missing.txt", "does not exist", out_dir=out)
    check_error(invoke(["audit", "rtn", *swap(base_args, "--sae", str(tmp_path / "no-sae")), "--out", str(out)]),
                "no-sae", "SAE", out_dir=out)
    check_error(invoke(["audit", "rtn", *swap(base_args, "--model", str(tmp_path)), "--out", str(out)]),
                "Cannot load model", out_dir=out)


def test_empty_and_short_datasets(base_args, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("only a handful of words here")
    out = tmp_path / "r"
    check_error(invoke(["audit", "rtn", *swap(base_args, "--dataset", str(empty)), "--out", str(out)]),
                "too short", out_dir=out)
    check_error(invoke(["audit", "rtn", *swap(base_args, "--dataset", str(short)), "--out", str(out)]),
                "too short", "--tokens", out_dir=out)


def test_sae_that_does_not_fit_the_model(base_args, tiny_models, tmp_path):
    out = tmp_path / "r"
    narrow = write_exact_sae(tmp_path / "narrow", 16, "blocks.1.hook_resid_post")
    check_error(invoke(["audit", "rtn", *swap(base_args, "--sae", str(narrow)), "--out", str(out)]),
                "d_in=16", "width 32", out_dir=out)
    deep = write_exact_sae(tmp_path / "deep", 32, "blocks.9.hook_resid_post")
    check_error(invoke(["audit", "rtn", *swap(base_args, "--sae", str(deep)), "--out", str(out)]),
                "blocks.9.hook_resid_post", "layers 0..1", out_dir=out)


def test_fit_check_stops_a_mispaired_sae(base_args, tmp_path):
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    with torch.no_grad():
        sae.W_dec.mul_(5.0)  # a reconstruction far from the activations
    path = tmp_path / "bad-sae"
    sae.save_model(path)
    out = tmp_path / "r"
    result = invoke(["audit", "rtn", *swap(base_args, "--sae", str(path)), "--out", str(out)])
    check_error(result, "explains only", "BOS", "--min-explained-variance 0", out_dir=out)
    ok = invoke(["audit", "rtn", *swap(base_args, "--sae", str(path)), "--min-explained-variance", "-1e9",
                 "--out", str(out)])
    assert ok.exit_code == 0, ok.output


@pytest.mark.slow
def test_help_does_not_import_heavy_packages():
    code = ("import sys; from featsurv.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'sae_lens', 'sklearn', 'lightgbm', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_out_never_replaces_a_folder_of_other_files(base, tmp_path, monkeypatch):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    res = run(["audit", "rtn", "-p", "bits=4", *base, "--out", str(user)])
    assert res.exit_code == 2 and "other files" in res.output
    assert (user / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(user)
    assert run(["audit", "rtn", "-p", "bits=4", *base, "--out", "."]).exit_code == 2
    # an earlier result is replaced
    out = tmp_path / "res"
    assert run(["audit", "rtn", "-p", "bits=4", *base, "--out", str(out)]).exit_code == 0
    assert run(["audit", "rtn", "-p", "bits=5", *base, "--out", str(out)]).exit_code == 0
    assert json.loads((out / "summary.json").read_text())["results"][0]["label"] == "rtn int5"



@pytest.mark.parametrize("extra,needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--ppl-window", "4096", "--perplexity", "sliding"], "exceeds"),
    (["--context", "1024"], "exceeds"),
    (["--scope", "attn,foo"], "attn,foo"),
])
def test_more_user_errors_are_clean(base, tmp_path, extra, needle):
    args = list(base)
    if "--context" in extra:
        i = args.index("--context")
        del args[i:i + 2]
        i = args.index("--tokens")
        args[i + 1] = "4096"
    res = run(["audit", "rtn", *args, *extra, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()



@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clean_error(base, tmp_path):
    res = run(["audit", "rtn", *base, "--device", "cuda", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no CUDA device" in res.output



def test_non_utf8_dataset_is_a_clean_error(base, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    args = list(base)
    args[args.index("--dataset") + 1] = str(bad)
    res = run(["audit", "rtn", *args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "not UTF-8" in res.output



# --------------------------------------------------------------------------- a missing package
def test_a_missing_module_is_named_with_what_to_install_not_called_a_bug(monkeypatch):
    from featsurv import outdir
    from featsurv.errors import describe_crash

    monkeypatch.setattr(outdir, "WRITTEN", [])  # no result written earlier in this process

    try:
        try:
            import featsurv_no_such_module_xyz  # noqa: F401
        except ModuleNotFoundError as inner:
            raise RuntimeError("loading the SAE failed") from inner
    except RuntimeError as exc:
        text = describe_crash(exc)
    assert "needs the Python module 'featsurv_no_such_module_xyz', which is not installed" in text
    assert "pip install featsurv-no-such-module-xyz" in text and sys.executable in text
    assert "a bug" not in text and "Nothing was written." in text
    try:
        raise ValueError("not an import problem")
    except ValueError as exc:
        assert "bug in featsurv" in describe_crash(exc)  # everything else is still reported as a bug


class _NeedsMissingPackage:
    from featsurv import hookimpl

    @hookimpl
    def register_compressors(self, register):
        from featsurv_plugins.compress_rtn import RTN

        class NeedsPackage(RTN):
            name = "needs_package"

            def compress(self, targets, p):
                import featsurv_no_such_backend  # noqa: F401 - the backend library is not installed

        register(NeedsPackage())


def test_a_plugin_whose_library_is_missing_says_so_and_exits_1(base_args, register_plugin, tmp_path, capsys, monkeypatch):
    from featsurv.cli import main

    monkeypatch.delenv("FEATSURV_DEBUG", raising=False)
    register_plugin(_NeedsMissingPackage(), name="needs-package", distribution="needs-package-dist", version="1.0")
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "needs_package", *base_args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "plugin 'needs-package' (distribution 'needs-package-dist' 1.0) needs the Python module " \
           "'featsurv_no_such_backend', which is not installed" in err
    assert "pip install featsurv-no-such-backend" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()

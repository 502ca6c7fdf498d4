"""`featsurv sweep`: validation, a local sweep, resume after SIGKILL, the Ray executor (real local cluster)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.testing import CONTROL_VARS

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
CONFIGS = """
[[configurations]]
compressor = "rtn"
params = { bits = [8, 4] }

[[configurations]]
compressor = "pruning"
params = { sparsity = 0.5 }
"""


def sweep_text(models: dict[str, Path], saes: dict[str, list[Path]], configs: str = CONFIGS, extra: str = "") -> str:
    parts = ['[sweep]\nname = "t"\nseed = 0\n', '[data]\ntokens = 256\ncontext = 32\nbatch_size = 4\n',
             "[options]\nbootstrap = 0\n" + extra]
    for name, path in models.items():
        sae_list = ", ".join(json.dumps(str(s)) for s in saes[name])
        parts.append(f'[[models]]\nname = "{name}"\npath = {json.dumps(str(path))}\ndtype = "float32"\n'
                     f'device = "cpu"\nsaes = [{sae_list}]\n')
    return "\n".join(parts) + configs


@pytest.fixture(scope="module")
def grid(tiny_models, tiny_sae):
    models = {"neox": tiny_models["gpt_neox"], "gemma": tiny_models["gemma2"]}
    saes = {name: [tiny_sae(path, hook) for hook in HOOKS] for name, path in models.items()}
    return models, saes


@pytest.fixture(scope="module")
def sweep_file(grid, tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "sweep.toml"
    path.write_text(sweep_text(*grid))
    return path


@pytest.fixture(scope="module")
def local_sweep(sweep_file, tmp_path_factory):
    """An uninterrupted local sweep (the reference for resume and Ray)."""
    out = tmp_path_factory.mktemp("local") / "s"
    res = CliRunner().invoke(cli, ["sweep", str(sweep_file), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return out, res.output


def label(compressor, **params):
    """The label featsurv gives a configuration (the compressor's own, defaults filled in)."""
    from featsurv.plugins import get_registry

    comp = get_registry().get("compressors", compressor)
    return comp.label({**{p.name: p.default for p in comp.params}, **params})


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def env_for(**extra):
    env = {k: v for k, v in os.environ.items() if k not in CONTROL_VARS}
    env.update(extra)
    return env


def featsurv_proc(*args, env):
    code = "import sys; from featsurv.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep never reached the hold point"
        time.sleep(0.1)
    return int(path.read_text())


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "sweep.parquet")


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("configs,needle", [
    ('[[configurations]]\ncompressor = "nosuch"\n', "[[configurations]] #1 (nosuch): Unknown compressor 'nosuch'"),
    ('[[configurations]]\ncompressor = "rtn"\nparams = { bits = [8, 99] }\n', "Bad value 99 for parameter 'bits'"),
    ('[[configurations]]\ncompressor = "rtn"\nparams = { bitz = 8 }\n', "Unknown parameter 'bitz'"),
    ('[[configurations]]\ncompressor = "rtn"\nparams = { bits = 8 }\n[[configurations]]\ncompressor = "rtn"\n'
     'params = { bits = 8 }\n', "[[configurations]]: configuration 'rtn int8' appears twice"),
])
def test_bad_configuration_is_exit_2_naming_the_entry(grid, tmp_path, configs, needle):
    spec = tmp_path / "s.toml"
    spec.write_text(sweep_text(*grid, configs=configs))
    res = invoke("sweep", spec, "--out", tmp_path / "out")
    assert res.exit_code == 2 and needle in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_missing_sae_and_wrong_width_and_bad_option_are_exit_2(grid, tmp_path, tiny_models, tiny_sae):
    models, saes = grid
    bad = {**saes, "gemma": [tmp_path / "nowhere"]}
    spec = tmp_path / "s.toml"
    spec.write_text(sweep_text(models, bad))
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "[[models]] #2 (gemma) saes[0]: SAE" in res.output and "does not exist" in res.output
    import shutil

    wide = tmp_path / "wide"
    shutil.copytree(saes["neox"][0], wide)
    cfg = json.loads((wide / "cfg.json").read_text())
    cfg["d_in"] = 48
    (wide / "cfg.json").write_text(json.dumps(cfg))
    spec.write_text(sweep_text(models, {**saes, "neox": [wide]}))
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "#1 (neox) saes[0]" in res.output and "48-wide" in res.output, res.output
    spec.write_text(sweep_text(models, saes).replace('dtype = "float32"', 'dtype = "float8"', 1))
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "[[models]] #1 (neox)" in res.output and "dtype" in res.output, res.output
    spec.write_text(sweep_text(models, saes, extra="colour = 3\n"))
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "Unknown option 'colour'" in res.output, res.output
    spec.write_text("[sweep\n")
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "not valid TOML" in res.output


def test_plan_prints_jobs_count_and_estimate(sweep_file, tmp_path):
    res = invoke("sweep", sweep_file, "--plan", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert res.output.count("\njob ") + res.output.startswith("job ") == 2
    # 256 tokens / 32 = 8 contexts, 2 batches of 4; 1 FP + 3 configurations = 4 passes per job
    assert "2 job(s), 6 piece(s)" in res.output and "8 passes" in res.output and "~16 forward calls" in res.output
    assert not (tmp_path / "o").exists()


def test_ray_executor_without_ray_is_a_clear_exit_2(sweep_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    res = invoke("sweep", sweep_file, "--executor", "ray", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "featsurv[ray]" in res.output, res.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- local sweep
def test_local_sweep_writes_every_piece_and_sweep_parquet(local_sweep, grid):
    from featsurv.results import load_run

    out, output = local_sweep
    df = table(out)
    assert len(df) == 2 * 2 * 3  # models x hook points x configurations
    assert set(df["model"]) == {"neox", "gemma"} and set(df["hook"]) == set(HOOKS)
    assert set(df["config"]) == {label("rtn", bits=8), label("rtn", bits=4), label("pruning", sparsity=0.5)}
    assert {"survived", "perplexity_change", "param.bits", "layer"} <= set(df.columns)
    assert not [c for c in df.columns if "seconds" in c]
    pieces = sorted((out / "pieces").glob("*/*"))
    assert len(pieces) == 6
    for piece in pieces:
        run = load_run(piece)  # verified against its manifest
        assert len(run.features) == 2 * 64  # two hook points x d_sae
    # every row is the value of its piece's summary (an independent read)
    piece = next(p for p in pieces if p.parent.name.startswith("neox") and p.name.startswith("rtn-int4"))
    entry = next(e for e in json.loads((piece / "summary.json").read_text())["results"] if e["hook"] == HOOKS[1])
    row = df[(df.model == "neox") & (df.config == label("rtn", bits=4)) & (df.hook == HOOKS[1])].iloc[0]
    assert row["survived"] == pytest.approx(entry["survived"]) and row["param.bits"] == 4
    int8, int4 = (df[df.config == label("rtn", bits=b)]["mean_r"].to_numpy() for b in (8, 4))
    assert (int8 >= int4).all() and int8.mean() > int4.mean()  # fewer bits, more change


def test_rerun_skips_everything_and_changed_file_needs_force(local_sweep, sweep_file, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(local_sweep[0], out)
    before = table(out)
    res = invoke("sweep", sweep_file, "--out", out, "-q")
    assert res.exit_code == 0 and "6 finished piece(s) skipped (verified), 0 computed" in res.output, res.output
    pd.testing.assert_frame_equal(table(out), before)
    changed = tmp_path / "changed.toml"
    changed.write_text(sweep_file.read_text().replace("bits = [8, 4]", "bits = [8, 3]"))
    res = invoke("sweep", changed, "--out", out, "-q")
    assert res.exit_code == 2 and "changed since" in res.output and "--force" in res.output
    res = invoke("sweep", changed, "--out", out, "-q", "--force")
    assert res.exit_code == 0 and "4 finished piece(s) skipped (verified), 2 computed" in res.output, res.output
    assert set(table(out)["config"]) == {label("rtn", bits=8), label("rtn", bits=3), label("pruning", sparsity=0.5)}


def test_corrupt_piece_is_recomputed(local_sweep, sweep_file, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(local_sweep[0], out)
    piece = sorted((out / "pieces").glob("*/*"))[0]
    data = (piece / "features.parquet").read_bytes()
    (piece / "features.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (sorted((out / "pieces").glob("*/*"))[1] / "manifest.json").unlink()  # partial (never finished)
    res = invoke("sweep", sweep_file, "--out", out, "-q")
    assert res.exit_code == 0 and "4 finished piece(s) skipped (verified), 2 computed" in res.output, res.output
    cols = [c for c in table(out).columns]
    pd.testing.assert_frame_equal(table(out)[cols], table(local_sweep[0])[cols])


def test_killed_sweep_resumes_without_recomputing(local_sweep, sweep_file, tmp_path):
    out, hold = tmp_path / "s", tmp_path / "hold"
    proc = featsurv_proc("sweep", sweep_file, "--out", out, env=env_for(FEATSURV_SWEEP_HOLD=f"2:{hold}"))
    pid = wait_for(hold, proc)  # the sweep process holds after its 2nd piece
    assert pid == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = {p: (p / "manifest.json").stat().st_mtime_ns for p in (out / "pieces").glob("*/*")
            if (p / "manifest.json").exists()}
    assert len(done) == 2 and not (out / "sweep.parquet").exists()
    res = invoke("sweep", sweep_file, "--out", out, "-q")
    assert res.exit_code == 0 and "2 finished piece(s) skipped (verified), 4 computed" in res.output, res.output
    assert all((p / "manifest.json").stat().st_mtime_ns == t for p, t in done.items())  # not rewritten
    pd.testing.assert_frame_equal(table(out), table(local_sweep[0]))


def test_gate_and_sweep_report_on_a_sweep(local_sweep, tmp_path):
    out = local_sweep[0]
    res = invoke("gate", out, "--min-survival", "0")
    assert res.exit_code == 0 and "(12 of 12 configurations pass)" in res.output, res.output
    assert f"neox: {label('rtn', bits=4)} @ blocks.1.hook_resid_post" in res.output
    res = invoke("gate", out, "--min-survival", "1.0")
    assert res.exit_code == 1
    report = tmp_path / "rep"
    res = invoke("sweep-report", out, "--out", report)
    assert res.exit_code == 0, res.output
    html = (report / "report.html").read_text()
    assert "fig_heatmap_neox.png" in html and "fig_survived_vs_bits.png" in html
    assert (report / "fig_heatmap_gemma.png").stat().st_size > 1000


# --------------------------------------------------------------------------- ray
def _need_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("ray is not installed (pip install 'featsurv[ray]'; make test installs it)")


@pytest.mark.slow
def test_ray_sweep_with_a_killed_worker_matches_local(local_sweep, sweep_file, tmp_path):
    _need_ray()
    out, hold = tmp_path / "s", tmp_path / "hold"
    env = env_for(FEATSURV_SWEEP_HOLD=f"1:{hold}", RAY_USAGE_STATS_ENABLED="0")
    proc = featsurv_proc("sweep", sweep_file, "--out", out, "--executor", "ray", env=env)
    pid = wait_for(hold, proc, timeout=400)  # a Ray worker holds after its first piece
    assert pid != proc.pid
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stdout + stderr
    skipped = int(stdout.split("sweep: ")[1].split(" finished")[0])
    assert skipped == 1  # the retried job skipped the piece its killed worker had saved
    assert "6 computed" not in stdout
    pd.testing.assert_frame_equal(table(out), table(local_sweep[0]))
    assert (out / "sweep.parquet").read_bytes() == (local_sweep[0] / "sweep.parquet").read_bytes()


def _failing_sweep(grid, tmp_path) -> Path:
    models, saes = grid
    text = sweep_text(models, saes, configs='[[configurations]]\ncompressor = "rtn"\nparams = { bits = 8 }\n')
    text = text.replace('device = "cpu"\n', 'device = "cpu"\nhooks = ["blocks.7.hook_resid_post", "blocks.8.hook_resid_post"]\n', 1)
    spec = tmp_path / "fail.toml"
    spec.write_text(text)
    return spec


def test_a_job_with_a_user_error_is_reported_and_the_others_finish(grid, tmp_path):
    res = invoke("sweep", _failing_sweep(grid, tmp_path), "--out", tmp_path / "o", "-q")
    assert res.exit_code == 2, res.output
    assert "job neox-" in res.output and "failed:" in res.output and "blocks.7" in res.output, res.output
    assert "0 finished piece(s) skipped (verified), 1 computed, of 2" in res.output
    assert not (tmp_path / "o" / "sweep.parquet").exists()


@pytest.mark.slow
def test_ray_job_with_a_user_error_is_reported_not_retried(grid, tmp_path):
    _need_ray()
    proc = featsurv_proc("sweep", _failing_sweep(grid, tmp_path), "--out", tmp_path / "o", "--executor", "ray",
                         "-q", env=env_for(RAY_USAGE_STATS_ENABLED="0"))
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 2, stdout + stderr
    assert "failed:" in stderr and "blocks.7" in stderr and "Traceback" not in stderr
    assert "1 computed, of 2" in stdout
    assert len(list((tmp_path / "o" / "pieces").glob("*/*/manifest.json"))) == 1


def test_ctrl_c_stops_after_the_current_piece(local_sweep, sweep_file, tmp_path):
    out, hold = tmp_path / "s", tmp_path / "hold"
    proc = featsurv_proc("sweep", sweep_file, "--out", out, env=env_for(FEATSURV_SWEEP_HOLD=f"1:{hold}"))
    wait_for(hold, proc)  # held after its first piece
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    hold.unlink()  # let it go on: it must stop before the next piece
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout + stderr
    assert "stopping after the current piece" in stderr and "re-run the same command to resume" in stderr
    assert len(list((out / "pieces").glob("*/*/manifest.json"))) == 1 and not (out / "sweep.parquet").exists()
    res = invoke("sweep", sweep_file, "--out", out, "-q")
    assert res.exit_code == 0 and "1 finished piece(s) skipped (verified), 5 computed" in res.output, res.output
    pd.testing.assert_frame_equal(table(out), table(local_sweep[0]))


# --------------------------------------------------------------------------- split over configurations
def split_file(sweep_file: Path, tmp_path: Path, where: str = "sweep") -> Path:
    """The same sweep with split = "configurations" sweep-wide (or on the first model only)."""
    text = sweep_file.read_text()
    if where == "sweep":
        text = text.replace('[sweep]\n', '[sweep]\nsplit = "configurations"\n', 1)
    else:
        text = text.replace('device = "cpu"\n', 'device = "cpu"\nsplit = "configurations"\n', 1)
    path = tmp_path / "split.toml"
    path.write_text(text)
    return path


def piece_bytes(out: Path, name: str = "features.parquet") -> dict[str, bytes]:
    return {str(p.relative_to(out)): (p / name).read_bytes() for p in sorted((out / "pieces").glob("*/*"))}


@pytest.fixture(scope="module")
def split_sweep(sweep_file, tmp_path_factory):
    """The reference sweep run with split = "configurations" (local executor)."""
    root = tmp_path_factory.mktemp("split")
    spec, out = split_file(sweep_file, root), root / "s"
    res = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return spec, out


def test_bad_split_value_is_exit_2(grid, sweep_file, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(sweep_file.read_text().replace("[sweep]\n", '[sweep]\nsplit = "models"\n', 1))
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "[sweep] split: 'models' is not a split mode" in res.output, res.output
    assert "configurations" in res.output
    spec.write_text(sweep_file.read_text().replace('device = "cpu"\n', 'device = "cpu"\nsplit = true\n', 1))
    res = invoke("sweep", spec, "--plan")
    assert res.exit_code == 2 and "[[models]] #1 (neox) split: True is not a split mode" in res.output, res.output


def test_plan_shows_split_jobs(sweep_file, tmp_path):
    res = invoke("sweep", split_file(sweep_file, tmp_path, where="model"), "--plan")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("job ")]
    assert "split: FP state saved once, 3 piece task(s)" in lines[0] and "split" not in lines[1]
    assert "4 passes" in lines[0]  # still one FP pass per job: 1 + 3 configurations


def test_split_sweep_is_byte_identical_to_the_unsplit_one(split_sweep, local_sweep):
    from featsurv.fp_state import ARRAYS_FILE, STATE_FILE

    spec, out = split_sweep
    ref = local_sweep[0]
    assert (out / "sweep.parquet").read_bytes() == (ref / "sweep.parquet").read_bytes()
    assert piece_bytes(out) == piece_bytes(ref) and len(piece_bytes(out)) == 6  # same piece folders, same bytes
    assert piece_bytes(out, "contexts.parquet") == piece_bytes(ref, "contexts.parquet")
    states = sorted((out / "fp").glob("*"))
    assert [s.name for s in states] == sorted(p.name for p in (ref / "pieces").glob("*"))
    for state in states:
        assert {STATE_FILE, ARRAYS_FILE, "manifest.json"} == {p.name for p in state.iterdir()}
    for piece in (out / "pieces").glob("*/*"):  # every piece loaded the FP state: no FP pass of its own
        timings = json.loads((piece / "run.json").read_text())["timings"]
        assert "fp_state_load" in timings and "fp_pass" not in timings, timings
    for piece in (ref / "pieces").glob("*/*"):
        assert "fp_pass" in json.loads((piece / "run.json").read_text())["timings"]


def test_corrupt_fp_state_is_recomputed_and_unsplit_pieces_are_shared(split_sweep, local_sweep, tmp_path):
    import shutil

    from featsurv.fp_state import ARRAYS_FILE
    from featsurv.sweep.split import state_verified

    spec, src = split_sweep
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    state = sorted((out / "fp").glob("*"))[0]
    data = (state / ARRAYS_FILE).read_bytes()
    corrupt = data[:-100] + bytes(100)  # same size, other bytes
    (state / ARRAYS_FILE).write_bytes(corrupt)
    shutil.rmtree(sorted((out / "pieces" / state.name).glob("*"))[0])  # one piece of that job to redo
    res = invoke("sweep", spec, "--out", out, "-q")
    assert res.exit_code == 0 and "5 finished piece(s) skipped (verified), 1 computed" in res.output, res.output
    assert state_verified(state, state.name) and (state / ARRAYS_FILE).read_bytes() != corrupt  # recomputed
    assert piece_bytes(out) == piece_bytes(local_sweep[0])
    # the same grid unsplit (with --force, the file changed) reuses every piece: the job ids are the same
    res = invoke("sweep", local_sweep[0] / "sweep.toml", "--out", out, "-q")
    assert res.exit_code == 2 and "changed since" in res.output
    res = invoke("sweep", local_sweep[0] / "sweep.toml", "--out", out, "-q", "--force")
    assert res.exit_code == 0 and "6 finished piece(s) skipped (verified), 0 computed" in res.output, res.output


def test_piece_task_runs_the_fp_pass_itself_when_the_state_is_unusable(split_sweep, local_sweep, tmp_path):
    import shutil

    from featsurv.sweep.jobs import Job
    from featsurv.sweep.split import run_piece

    spec, src = split_sweep
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    index = json.loads((out / "sweep.json").read_text())
    job_id, key = index["jobs"][0]["id"], index["jobs"][0]["pieces"][1]
    shutil.rmtree(out / "pieces" / job_id / key)
    (out / "fp" / job_id / "manifest.json").unlink()  # an unfinished FP state
    from featsurv.sweep.spec import load_spec
    from featsurv.sweep.jobs import plan_jobs

    job = next(j for j in plan_jobs(load_spec(spec)) if j.id == job_id)
    assert isinstance(job, Job) and job.split
    report = run_piece(job.to_dict(), key, str(out))
    assert report["computed"] == [key] and report["fp_state_loaded"] is False
    piece = f"pieces/{job_id}/{key}"
    assert piece_bytes(out)[piece] == piece_bytes(local_sweep[0])[piece]
    timings = json.loads((out / piece / "run.json").read_text())["timings"]
    assert "fp_pass" in timings and "fp_state_load" not in timings


@pytest.mark.slow
def test_ray_split_sweep_with_a_killed_piece_worker_matches_local(split_sweep, local_sweep, tmp_path):
    _need_ray()
    spec = split_sweep[0]
    out, hold = tmp_path / "s", tmp_path / "hold"
    env = env_for(FEATSURV_SWEEP_HOLD=f"1:{hold}", RAY_USAGE_STATS_ENABLED="0")
    proc = featsurv_proc("sweep", spec, "--out", out, "--executor", "ray", env=env)
    pid = wait_for(hold, proc, timeout=400)  # a piece task's worker holds after saving its piece
    assert pid != proc.pid
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stdout + stderr
    assert "1 finished piece(s) skipped (verified), 5 computed, of 6" in stdout, stdout  # the retry skipped it
    assert (out / "sweep.parquet").read_bytes() == (local_sweep[0] / "sweep.parquet").read_bytes()
    assert piece_bytes(out) == piece_bytes(local_sweep[0])
    assert len(list((out / "fp").glob("*/manifest.json"))) == 2


def test_killed_split_sweep_resumes_reusing_the_fp_state(split_sweep, local_sweep, tmp_path):
    spec = split_sweep[0]
    out, hold = tmp_path / "s", tmp_path / "hold"
    proc = featsurv_proc("sweep", spec, "--out", out, env=env_for(FEATSURV_SWEEP_HOLD=f"2:{hold}"))
    wait_for(hold, proc)  # held after the 2nd piece task of the first job
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    states = {p: (p / "manifest.json").stat().st_mtime_ns for p in (out / "fp").glob("*")}
    assert len(states) == 1  # the first job's FP state, saved before its piece tasks
    res = invoke("sweep", spec, "--out", out, "-q")
    assert res.exit_code == 0 and "2 finished piece(s) skipped (verified), 4 computed" in res.output, res.output
    assert all((p / "manifest.json").stat().st_mtime_ns == t for p, t in states.items())  # reused, not recomputed
    assert (out / "sweep.parquet").read_bytes() == (local_sweep[0] / "sweep.parquet").read_bytes()
    assert piece_bytes(out) == piece_bytes(local_sweep[0])

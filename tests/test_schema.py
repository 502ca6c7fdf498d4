"""The results schema: docs/results.md lists every key and column a run writes; schema_version and
run_id are stored and repeated; inactive features have no band; rows carry their parameters; other
schema versions are migrated (1) or refused (newer, mixed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import featsurv
from featsurv import manifest as M
from featsurv.cli import cli
from featsurv.schema import SCHEMA_VERSION

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"


@pytest.fixture(scope="module")
def stored(tiny_models, tiny_sae, tiny_corpus, tmp_path_factory):
    """A compare with --predict and bootstrap intervals (every built-in key appears); min_firing_rate 0.5
    leaves about half of the exact SAE's features inactive."""
    model = tiny_models["gpt_neox"]
    out = tmp_path_factory.mktemp("schema") / "run"
    featsurv.compare("rtn", "pruning", a_params={"bits": 3}, model=model, saes=tiny_sae(model, context_size=256),
                     dataset=tiny_corpus, n_tokens=2048, steps=2, bootstrap=20, predict=True, min_firing_rate=0.5,
                     metric_options={"predictor": {"folds": 3}}, out=out, progress=False)
    return out


def documented() -> set[str]:
    """Names in backticks in the first cell of every table row of docs/results.md."""
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_every_key_and_column_is_documented(stored):
    names = documented()
    run = json.loads((stored / "run.json").read_text())
    summary = json.loads((stored / "summary.json").read_text())
    keys = set(run) | set(summary) | set(summary["baseline"])
    keys |= {k for sae in summary["baseline"]["saes"].values() for k in sae}
    keys |= {k for e in summary["results"] for k in e} | {k for c in summary["comparisons"] for k in c}
    keys |= {k for p in summary["predictors"].values() for k in p}
    columns = set(pq.read_schema(stored / "features.parquet").names)
    generic = {c for c in columns if c.startswith("param.")}
    assert generic and "param.NAME" in names
    assert sorted(keys - names) == [] and sorted(columns - generic - names) == []
    for fname in (p.name for p in stored.iterdir()):
        assert fname in names or fname.startswith("fig_"), fname


def test_versions_ids_bands_and_parameters_are_stored(stored):
    run = json.loads((stored / "run.json").read_text())
    summary = json.loads((stored / "summary.json").read_text())
    meta = pq.read_schema(stored / "features.parquet").metadata
    assert run["schema_version"] == summary["schema_version"] == SCHEMA_VERSION == int(meta[b"featsurv.schema_version"])
    rid = run["run_id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", rid)
    assert summary["run_id"] == rid == meta[b"featsurv.run_id"].decode()
    df = pd.read_parquet(stored / "features.parquet")
    assert (df["run_id"] == rid).all()
    assert df.loc[~df["active"], "band"].isna().all() and df.loc[df["active"], "band"].notna().all()
    assert (~df["active"]).any()  # the check above is not vacuous
    for entry in summary["results"]:
        rows = df[(df["config"] == entry["label"]) & (df["hook"] == entry["hook"])]
        assert rows.groupby("band").size().to_dict() == {b: n for b, n in entry["counts"].items() if n}
        assert {json.dumps(entry["params"])} == set(rows["params"])
        assert set(rows["compressor"]) == {entry["compressor"]}
        for name, value in entry["params"].items():
            assert rows[f"param.{name}"].tolist() == [value] * len(rows), name
    rtn = df[df["compressor"] == "rtn"]
    assert str(df["param.bits"].dtype) == "Int64" and (rtn["param.bits"] == 3).all()
    assert df.loc[df["compressor"] == "pruning", "param.bits"].isna().all()
    assert list(df.columns[:4]) == ["run_id", "config", "compressor", "params"]


def seal(folder: Path, src: Path) -> None:
    """Write the folder's manifest over its current files (roles as in ``src``'s), as featsurv would."""
    roles = {n: e["role"] for n, e in json.loads((src / "manifest.json").read_text())["files"].items()
             if (folder / n).is_file()}
    M.write(folder, M.build(folder, "run", roles))


def write_as_version_1(src: Path, dst: Path) -> None:
    """The folder as featsurv wrote it before schema_version: no version, no run_id or params columns,
    and a band for every feature."""
    dst.mkdir()
    for name in ("run.json", "summary.json"):
        data = json.loads((src / name).read_text())
        data.pop("schema_version"), data.pop("run_id")
        (dst / name).write_text(json.dumps(data))
    df = pd.read_parquet(src / "features.parquet")
    df = df.drop(columns=["run_id", "params", *[c for c in df.columns if c.startswith("param.")]])
    df["band"] = df["band"].fillna("damaged")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), dst / "features.parquet")
    seal(dst, src)


def test_a_version_1_run_is_migrated_in_memory(stored, tmp_path):
    old = tmp_path / "v1"
    write_as_version_1(stored, old)
    before = (old / "features.parquet").read_bytes()
    run, now = featsurv.load_run(old), featsurv.load_run(stored)
    assert run.schema_version == 1 and now.schema_version == SCHEMA_VERSION and run.id is None
    df, ref = run.features(), now.features()
    assert df["band"].isna().tolist() == ref["band"].isna().tolist()
    assert run.bands().equals(now.bands())
    assert df["params"].tolist() == ref["params"].tolist()
    params = [c for c in ref.columns if c.startswith("param.")]
    assert sorted(params) == sorted(c for c in df.columns if c.startswith("param."))
    for column in params:
        pd.testing.assert_series_equal(df[column], ref[column])
    assert df["run_id"].isna().all()
    assert (old / "features.parquet").read_bytes() == before  # nothing rewritten


@pytest.mark.parametrize("version, needle", [(SCHEMA_VERSION + 1, "newer than the schema"),
                                             ("2", "not a featsurv results schema"), (0, "not a featsurv")])
def test_another_schema_is_refused_clearly(stored, tmp_path, version, needle):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in stored.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    summary = json.loads((bad / "summary.json").read_text())
    summary["schema_version"] = version
    (bad / "summary.json").write_text(json.dumps(summary))
    seal(bad, stored)
    with pytest.raises(featsurv.FeatsurvError, match=needle):
        featsurv.load_run(bad)
    for command in (["report", str(bad)], ["gate", str(bad)]):
        res = CliRunner().invoke(cli, command)
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output


def test_a_folder_mixing_two_schemas_is_refused(stored, tmp_path):
    mixed = tmp_path / "mixed"
    write_as_version_1(stored, mixed)
    summary = json.loads((stored / "summary.json").read_text())
    (mixed / "summary.json").write_text(json.dumps(summary))  # version 2 beside a version-1 table
    seal(mixed, stored)
    with pytest.raises(featsurv.FeatsurvError, match="schema 1 but summary.json has 2"):
        featsurv.load_run(mixed)

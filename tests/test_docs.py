"""Docs that are generated from code stay in step with it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_doc_is_up_to_date():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] or "docs/cli.md is stale: run `python scripts/gen_cli_docs.py`"


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## ")]
    assert "make demo" in head and "make test" in head


def test_architecture_lists_every_host_module():
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted((root / "featsurv").rglob("*.py")):
        rel = path.relative_to(root / "featsurv").as_posix()
        if rel.startswith("cli/") and rel not in ("cli/common.py", "cli/table.py"):
            continue  # commands are listed by `featsurv --help` and docs/cli.md
        if rel == "report/__init__.py" or (f"`{rel}`" not in text and f"`{rel.split('/')[-1]}`" not in text):
            if rel != "report/__init__.py":
                missing.append(rel)
    assert missing == []

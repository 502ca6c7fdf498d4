"""Build featsurv's default text corpus from the Python standard library's own prose.

Sources (both ship with every CPython installation, PSF licence):

* the docstrings of the pure-Python standard-library modules, read by *parsing*
  (``ast``) the ``.py`` files of the running interpreter's stdlib directory (no
  stdlib module is imported, so nothing with side effects runs);
* ``pydoc_data.topics.topics`` (the text behind ``help('TOPIC')``), also read with
  ``ast`` from ``pydoc_data/topics.py``.

Every docstring / topic is one *document*. Whitespace is normalised (each
paragraph becomes one line, paragraphs are separated by a single newline),
doctest blocks are removed, short or code-like documents are dropped and exact
duplicates are kept once. Documents are separated by one blank line.

The train / held-out split is made by *source unit* (a module, or one pydoc
topic), with a SHA-256 hash of the unit name, so that no text of a held-out
module is ever seen in training.

Outputs:
    build/corpus/train.txt               (regenerated; git-ignored)
    featsurv/data/corpus/heldout.txt     (shipped)
    featsurv/data/corpus/SOURCE.md       (provenance, licence, counts)

Usage (from the repository root):
    .venv/bin/python scripts/build_corpus.py [--train-out P] [--heldout-out P]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import platform
import re
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_HELDOUT_TXT, DEFAULT_TRAIN_TXT, log, rel  # noqa: E402

# Parts of the stdlib tree that are not library prose (test suites, bundled
# third-party wheels, build configuration, demo scripts) or not stdlib at all.
EXCLUDED_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "__phello__",
    "ensurepip",
    "turtledemo",
    "pydoc_data",  # handled separately (topics)
}
EXCLUDED_DIR_PREFIXES = ("config-",)
# Modules whose "docstrings" are data, not prose.
EXCLUDED_MODULES = {"this", "antigravity", "__hello__", "_sysconfigdata__linux_x86_64-linux-gnu"}

MIN_WORDS = 8
MIN_LETTER_RATIO = 0.62  # letters / non-space characters; below this it is code or tables
HELDOUT_PER_MILLE = 60  # ~6 % of source units go to the held-out split
HELDOUT_MAX_BYTES = 150_000


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def iter_stdlib_files(root: Path):
    files = []
    for path in root.rglob("*.py"):
        rel_parts = path.relative_to(root).parts
        if any(p in EXCLUDED_DIRS or p.startswith(EXCLUDED_DIR_PREFIXES) for p in rel_parts[:-1]):
            continue
        if path.name.startswith("_sysconfigdata"):
            continue
        name = module_name(root, path)
        if name in EXCLUDED_MODULES or not name:
            continue
        files.append((name, path))
    return sorted(files)


def docstrings_of(source: str) -> list[str]:
    """Docstrings of the module and of every class / function in it, in source order."""
    tree = ast.parse(source)
    out = []
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append((getattr(node, "lineno", 0), doc))
    # ast.walk is breadth-first; sort by line so the order follows the file.
    out.sort(key=lambda t: t[0])
    return [d for _, d in out]


def topics_of(topics_py: Path) -> dict[str, str]:
    tree = ast.parse(topics_py.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no 'topics' dict in {topics_py}")


_DOCTEST_START = re.compile(r"^\s*(>>>|\.\.\.\s)")
_RULE = re.compile(r"^\s*([-=*~^#+_.])\1{2,}\s*$")  # reST underlines / rules


def normalize(text: str) -> str:
    """Drop doctest blocks and rules; one line per paragraph; collapse whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    paragraphs: list[str] = []
    current: list[str] = []
    in_doctest = False
    for line in text.split("\n"):
        if not line.strip():
            in_doctest = False
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        if _DOCTEST_START.match(line):
            in_doctest = True
        if in_doctest or _RULE.match(line):
            continue
        current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    paragraphs = [" ".join(p.split()) for p in paragraphs]
    return "\n".join(p for p in paragraphs if p)


def keep(doc: str) -> bool:
    """Prose test: enough words, mostly letters, (nearly) all ASCII."""
    if len(doc.split()) < MIN_WORDS:
        return False
    chars = [c for c in doc if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    non_ascii = sum(not c.isascii() for c in doc)
    return letters / len(chars) >= MIN_LETTER_RATIO and non_ascii <= 0.01 * len(doc)


def is_heldout(unit: str) -> bool:
    h = int.from_bytes(hashlib.sha256(unit.encode("utf-8")).digest()[:8], "big")
    return h % 1000 < HELDOUT_PER_MILLE


def collect_units(root: Path):
    """[(unit_name, [documents])] in sorted unit order."""
    units: list[tuple[str, list[str]]] = []
    n_files = n_parse_errors = 0
    for name, path in iter_stdlib_files(root):
        n_files += 1
        try:
            source = path.read_text(encoding="utf-8")
            docs = docstrings_of(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            n_parse_errors += 1
            continue
        units.append((name, docs))
    topics = topics_of(root / "pydoc_data" / "topics.py")
    for key in sorted(topics):
        units.append((f"pydoc_data.topics:{key}", [topics[key]]))
    units.sort(key=lambda u: u[0])
    return units, n_files, n_parse_errors, len(topics)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-out", type=Path, default=DEFAULT_TRAIN_TXT)
    ap.add_argument("--heldout-out", type=Path, default=DEFAULT_HELDOUT_TXT)
    ap.add_argument("--source-md", type=Path, default=None,
                    help="provenance file (default: SOURCE.md next to --heldout-out)")
    ap.add_argument("--stdlib", type=Path, default=None,
                    help="stdlib directory to read (default: the running interpreter's)")
    args = ap.parse_args(argv)

    root = args.stdlib or stdlib_dir()
    log(f"reading the standard library at {root}")
    units, n_files, n_parse_errors, n_topics = collect_units(root)
    log(f"{n_files} module files ({n_parse_errors} unparsable, skipped), {n_topics} pydoc topics")

    seen: set[str] = set()
    train_docs: list[str] = []
    heldout_units: list[tuple[str, list[str]]] = []
    n_raw = n_short = n_dup = 0
    train_units = 0
    for unit, raw_docs in units:
        docs = []
        for raw in raw_docs:
            n_raw += 1
            doc = normalize(raw)
            if not keep(doc):
                n_short += 1
                continue
            if doc in seen:
                n_dup += 1
                continue
            seen.add(doc)
            docs.append(doc)
        if not docs:
            continue
        if is_heldout(unit):
            heldout_units.append((unit, docs))
        else:
            train_units += 1
            train_docs.extend(docs)

    # Keep the shipped held-out file small: whole units, in hash order, up to the cap.
    heldout_units.sort(key=lambda u: hashlib.sha256(u[0].encode()).hexdigest())
    heldout_docs: list[str] = []
    heldout_kept_units: list[str] = []
    size = 0
    n_heldout_dropped = 0
    for unit, docs in heldout_units:
        unit_size = sum(len(d.encode("utf-8")) + 2 for d in docs)
        if size + unit_size > HELDOUT_MAX_BYTES:
            n_heldout_dropped += 1
            continue
        heldout_kept_units.append(unit)
        heldout_docs.extend(docs)
        size += unit_size
    heldout_kept_units.sort()
    # Present held-out documents in unit-name order (as the training file is).
    order = {u: i for i, u in enumerate(heldout_kept_units)}
    heldout_docs = [d for u, ds in sorted(
        ((u, ds) for u, ds in heldout_units if u in order), key=lambda t: order[t[0]]
    ) for d in ds]

    train_text = "\n\n".join(train_docs) + "\n"
    heldout_text = "\n\n".join(heldout_docs) + "\n"
    args.train_out.parent.mkdir(parents=True, exist_ok=True)
    args.heldout_out.parent.mkdir(parents=True, exist_ok=True)
    args.train_out.write_text(train_text, encoding="utf-8")
    args.heldout_out.write_text(heldout_text, encoding="utf-8")

    h_train = hashlib.sha256(train_text.encode()).hexdigest()
    h_held = hashlib.sha256(heldout_text.encode()).hexdigest()
    stats = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "units": len(units),
        "train_units": train_units,
        "heldout_units": len(heldout_kept_units),
        "heldout_units_over_cap": n_heldout_dropped,
        "raw_docs": n_raw,
        "dropped_short_or_code": n_short,
        "dropped_duplicate": n_dup,
        "train_docs": len(train_docs),
        "heldout_docs": len(heldout_docs),
        "train_bytes": len(train_text.encode()),
        "heldout_bytes": len(heldout_text.encode()),
        "train_words": len(train_text.split()),
        "heldout_words": len(heldout_text.split()),
    }
    source_md = args.source_md or args.heldout_out.parent / "SOURCE.md"
    source_md.write_text(render_source_md(stats, heldout_kept_units, h_train, h_held),
                         encoding="utf-8")

    for k, v in stats.items():
        log(f"  {k}: {v}")
    print(f"train:    {rel(args.train_out)}  {stats['train_docs']} docs, "
          f"{stats['train_bytes']} bytes, sha256 {h_train[:16]}")
    print(f"held-out: {rel(args.heldout_out)}  {stats['heldout_docs']} docs, "
          f"{stats['heldout_bytes']} bytes, sha256 {h_held[:16]}")
    print(f"provenance: {rel(source_md)}")
    return 0


def render_source_md(stats: dict, heldout_units: list[str], h_train: str, h_held: str) -> str:
    units = ", ".join(f"`{u}`" for u in heldout_units)
    return f"""# featsurv default corpus: provenance

Generated by `scripts/build_corpus.py`; do not edit by hand.

* **Source**: the Python {stats['python']} ({stats['implementation']}) standard library:
  docstrings of the pure-Python stdlib modules (read with `ast` from the `.py` sources,
  test suites, `ensurepip`, `turtledemo` and `site-packages` excluded) and the pydoc topic
  texts in `pydoc_data.topics.topics`.
* **Licence**: Python Software Foundation License Version 2 (the licence of the CPython
  source and documentation these texts come from); redistribution is permitted with the
  PSF copyright notice: Copyright (c) 2001-2023 Python Software Foundation; All Rights
  Reserved.
* **Processing**: one docstring or topic per document; doctest blocks and reST rules
  removed; each paragraph on one line; documents with fewer than {MIN_WORDS} words or
  mostly non-letters (code, tables) dropped; exact duplicates kept once. Documents are
  separated by one blank line.
* **Split**: by source unit (a module, or one pydoc topic): a unit is held out when
  `int(sha256(name)[:8 bytes]) % 1000 < {HELDOUT_PER_MILLE}`. Held-out text is never seen by
  the tokenizer, the model or the SAEs. The shipped held-out file is capped at
  {HELDOUT_MAX_BYTES} bytes (whole units in hash order; {stats['heldout_units_over_cap']}
  held-out unit(s) over the cap were left out of both files).

| split | units | documents | bytes | words | sha256 |
| --- | ---: | ---: | ---: | ---: | --- |
| train (`build/corpus/train.txt`, not shipped) | {stats['train_units']} | {stats['train_docs']} | {stats['train_bytes']} | {stats['train_words']} | `{h_train[:16]}` |
| held-out (`heldout.txt`) | {stats['heldout_units']} | {stats['heldout_docs']} | {stats['heldout_bytes']} | {stats['heldout_words']} | `{h_held[:16]}` |

Raw docstrings/topics read: {stats['raw_docs']}; dropped as short or code-like:
{stats['dropped_short_or_code']}; dropped as duplicates: {stats['dropped_duplicate']}.
A different Python version gives a (slightly) different corpus.

Held-out units: {units}.
"""


if __name__ == "__main__":
    raise SystemExit(main())

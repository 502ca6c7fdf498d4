"""Dataset sources: local text/JSONL files, Hugging Face datasets, and the embedded corpus.

- ``PATH.txt`` (or any text file): documents separated by blank lines;
- ``PATH.jsonl``: one JSON object per line, its ``text`` field;
- ``hf:NAME[:CONFIG[:SPLIT[:FIELD]]]``: ``datasets.load_dataset`` (split default ``train``,
  field default ``text``), each row a document (WikiText rows are lines);
- ``featsurv:heldout``: the held-out split of the embedded corpus (Python docstrings, PSF licence).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from featsurv import DatasetSource, FeatsurvError, hookimpl


def _paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        if block.strip():
            yield block.strip()


def _read_file(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise FeatsurvError(f"Dataset file {str(path)!r} does not exist",
                            hint="Pass an existing .txt or .jsonl file, hf:NAME[:CONFIG[:SPLIT]], or featsurv:heldout")
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    yield from _paragraphs(text)


def _not_utf8(path: Path, exc: UnicodeDecodeError, offset: int = 0, line: int | None = None) -> FeatsurvError:
    where = f"line {line}, " if line is not None else ""
    return FeatsurvError(f"Dataset file {str(path)!r} is not UTF-8 text ({exc.reason} at {where}byte {offset + exc.start})",
                         hint="Convert it to UTF-8 (e.g. iconv -t utf-8) and run again")


def _read_jsonl(path: Path) -> Iterator[str]:
    """One document per line: the ``text`` string of each JSON object (blank lines skipped)."""
    offset = 0
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc, offset, i) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise FeatsurvError(f"Line {i} of {str(path)!r} is not valid JSON (expected an object with a 'text' field)",
                                    hint="Write one {\"text\": ...} object per line") from None
            if not isinstance(record, dict) or "text" not in record:
                raise FeatsurvError(f"Line {i} of {str(path)!r} is not a JSON object with a 'text' field",
                                    hint="Write one {\"text\": ...} object per line") from None
            text = record["text"]
            if not isinstance(text, str):
                raise FeatsurvError(f"Line {i} of {str(path)!r} has a 'text' that is {type(text).__name__} "
                                    f"{json.dumps(text)[:60]}, not a string",
                                    hint="Write one {\"text\": \"...\"} object per line, its text a JSON string")
            yield text


class LocalText(DatasetSource):
    name = "file"
    description = "A local .txt (documents separated by blank lines) or .jsonl ({'text': ...} per line) file"

    def can_load(self, spec: str) -> bool:
        if Path(spec).is_file():
            return True
        head, sep, _ = spec.partition(":")
        prefixed = bool(sep) and len(head) > 1 and "/" not in head  # NAME:... belongs to another source
        return not prefixed and Path(spec).suffix in (".txt", ".jsonl", ".text", ".md")

    def documents(self, spec: str) -> Iterator[str]:
        return _read_file(Path(spec))


class Embedded(DatasetSource):
    name = "featsurv"
    description = "featsurv:heldout, the embedded held-out corpus (stdlib docstrings, PSF licence)"

    def can_load(self, spec: str) -> bool:
        return spec.startswith("featsurv:")

    def documents(self, spec: str) -> Iterator[str]:
        from featsurv.data_paths import data_root

        name = spec.split(":", 1)[1]
        path = data_root() / "corpus" / f"{name}.txt"
        if not path.is_file():
            available = sorted(p.stem for p in (data_root() / "corpus").glob("*.txt"))
            raise FeatsurvError(f"Unknown embedded dataset {spec!r}", allowed=[f"featsurv:{a}" for a in available])
        return _read_file(path)


class HuggingFace(DatasetSource):
    name = "hf"
    description = "hf:NAME[:CONFIG[:SPLIT[:FIELD]]], loaded with datasets.load_dataset (needs the hub or its cache)"

    def can_load(self, spec: str) -> bool:
        return spec.startswith("hf:")

    def documents(self, spec: str) -> Iterator[str]:
        parts = spec[3:].split(":")
        if not parts[0]:
            raise FeatsurvError(f"Bad Hugging Face dataset spec {spec!r}", allowed="hf:NAME[:CONFIG[:SPLIT[:FIELD]]]")
        name, config, split, field = (parts + [None, None, None])[:4]
        split, field = split or "train", field or "text"
        try:
            from datasets import load_dataset

            ds = load_dataset(name, config or None, split=split)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise FeatsurvError(f"Cannot load dataset {spec!r}: {first}",
                                hint="Check the name, config and split; downloads need network access "
                                     "(HF_HUB_OFFLINE=1 uses the local cache only)") from None
        if field not in ds.column_names:
            raise FeatsurvError(f"Dataset {spec!r} has no field {field!r}", allowed=ds.column_names)
        for row in ds:
            yield row[field]


@hookimpl
def register_datasets(register):
    register(LocalText())
    register(Embedded())
    register(HuggingFace())

"""Input corpora: list, check and stream documents from local files, globs, dirs or s3:// prefixes.

Formats by extension: .txt/.md/.py (one file = one document), .jsonl/.json (one record per line),
.parquet (one record per row). `stdlib` names the embedded default corpus: the Python standard
library sources of the running interpreter (tests and IDLE excluded), present on every machine.
Everything that can be checked before compute is checked in `list_sources` / `check_columns`.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llada_core import storage

TEXT_EXT = {".txt": "text", ".md": "text", ".py": "text"}
RECORD_EXT = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
FORMATS = TEXT_EXT | RECORD_EXT
STDLIB = "stdlib"
_GLOB_CHARS = set("*?[")


class DataError(ValueError):
    """Bad input data; raised before anything is written."""


@dataclass(frozen=True)
class SourceFile:
    uri: str  # local absolute path or s3://bucket/key
    fmt: str  # text | jsonl | parquet
    size: int
    mtime_ns: int = 0  # when listed: a prepared range is reused only for the same files, unchanged


def _fmt_of(path: str) -> str | None:
    return FORMATS.get(os.path.splitext(path)[1].lower())


def stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3")
    out = []
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, root).split(os.sep)
        if not any(part in skip for part in rel[:-1]):
            out.append(path)
    return sorted(out)


def check_input_exists(value: str | None) -> str | None:
    """Config validator: a local, non-glob input must exist (s3://, globs and `stdlib` are checked when
    listed)."""
    if value and value != STDLIB and not storage.is_s3(value) and not any(c in value for c in _GLOB_CHARS):
        if not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"path does not exist: {value}")
    return value


def _local_candidates(spec: str) -> list[str]:
    if spec == STDLIB:
        return stdlib_files()
    path = os.path.expanduser(spec)
    if any(c in path for c in _GLOB_CHARS):
        return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    if os.path.isdir(path):
        found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
        return sorted(p for p in found if _fmt_of(p))
    if os.path.isfile(path):
        return [path]
    raise DataError(f"input not found: {spec}")


def _s3_candidates(spec: str) -> list[tuple[str, int, int]]:
    fs, path = storage.resolve(spec)
    pattern = None
    if any(c in path for c in _GLOB_CHARS):
        base = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
        pattern, path = path, base
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            infos = [info]
        elif info.type == pafs.FileType.NotFound:
            raise DataError(f"input not found: {spec}")
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise DataError(f"cannot read {spec}: {exc}") from None
    files = [(i.path, i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File]
    if pattern:
        files = [f for f in files if fnmatch.fnmatchcase(f[0], pattern)]
    else:
        files = [f for f in files if _fmt_of(f[0]) or info.type == pafs.FileType.File]
    return sorted((f"s3://{p}", s, m) for p, s, m in files)


def list_sources(spec: str) -> list[SourceFile]:
    """All input files of a spec, sorted (the order fixes document order, hence determinism)."""
    if storage.is_s3(spec):
        candidates = _s3_candidates(spec)
    else:
        candidates = [(os.path.abspath(p), (st := os.stat(p)).st_size, st.st_mtime_ns) for p in _local_candidates(spec)]
    out = []
    for uri, size, mtime_ns in candidates:
        fmt = _fmt_of(uri)
        if fmt is None:
            raise DataError(f"unsupported file type: {uri} (supported: {', '.join(sorted(FORMATS))})")
        out.append(SourceFile(uri, fmt, size, mtime_ns))
    if not out:
        raise DataError(f"no input files match {spec} (supported: {', '.join(sorted(FORMATS))})")
    if all(f.size == 0 for f in out):
        raise DataError(f"input {spec} is empty: {len(out)} file(s), 0 bytes")
    return out


def _record_columns(src: SourceFile) -> set[str] | None:
    fs, path = storage.resolve(src.uri)
    if src.fmt == "parquet":
        with fs.open_input_file(path) as fh:
            return set(pq.read_schema(fh).names)
    with fs.open_input_stream(path) as stream:
        for line in _lines(stream):
            if line.strip():
                try:
                    return set(json.loads(line))
                except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
                    raise DataError(f"{src.uri}: first record is not a JSON object ({exc})") from None
    return None  # empty file


def check_columns(sources: list[SourceFile], alternatives: list[tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Every record file must have one of the column sets in `alternatives` (checked on the schema /
    first record, before any compute). Returns the set each file provides, by URI."""
    matched = {}
    for src in sources:
        if src.fmt == "text":
            if alternatives != [("text",)]:
                raise DataError(f"{src.uri}: plain text files cannot provide columns {alternatives[0]}")
            matched[src.uri] = ("text",)
            continue
        cols = _record_columns(src)
        found = [a for a in alternatives if cols is None or set(a) <= cols]
        if not found:
            want = " or ".join("/".join(a) for a in alternatives)
            raise DataError(f"{src.uri}: missing column(s): needs {want}, has {sorted(cols)}")
        matched[src.uri] = found[0]
    return matched


def _lines(stream) -> Iterator[bytes]:
    pending = b""
    while chunk := stream.read(storage.CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def iter_records(src: SourceFile, columns: tuple[str, ...], batch_rows: int = 1024) -> Iterator[dict]:
    """Yield each document of a file as {column: value}, or {"__bad_utf8__": True} for a record
    that is not valid UTF-8 (the caller skips or fails by policy)."""
    fs, path = storage.resolve(src.uri)
    if src.fmt == "text":
        data = storage.read_bytes(fs, path)
        try:
            yield {"text": data.decode("utf-8")}
        except UnicodeDecodeError:
            yield {"__bad_utf8__": True}
    elif src.fmt == "jsonl":
        with fs.open_input_stream(path) as stream:
            for lineno, line in enumerate(_lines(stream), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    yield {"__bad_utf8__": True}
                    continue
                except json.JSONDecodeError as exc:
                    raise DataError(f"{src.uri}:{lineno}: invalid JSON ({exc})") from None
                missing = [c for c in columns if c not in record]
                if missing:
                    raise DataError(f"{src.uri}:{lineno}: missing column(s) {missing}")
                _check_strings(record, columns, f"{src.uri}:{lineno}")
                yield {c: record[c] for c in columns}
    else:
        with fs.open_input_file(path) as fh:
            reader = pq.ParquetFile(fh)
            row = 0
            for batch in reader.iter_batches(batch_size=batch_rows, columns=list(columns)):
                for i, record in enumerate(batch.to_pylist()):
                    _check_strings(record, columns, f"{src.uri}: row {row + i}")
                    yield record
                row += batch.num_rows


def _check_strings(record: dict, columns: tuple[str, ...], where: str) -> None:
    """Text columns hold strings (`messages` is a list of turns, checked by the chat template)."""
    for c in columns:
        if c != "messages" and not isinstance(record[c], str):
            raise DataError(f"{where}: column {c!r} is {type(record[c]).__name__} ({str(record[c])[:40]!r}), "
                            "expected a string")

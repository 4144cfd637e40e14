"""One way to reach artifacts on local disk or S3 (pyarrow filesystems), with atomic writes.

Directory artifacts (checkpoints, tokenizers, task files, HF exports...) are built in a node-local
directory and published with `output_dir`: locally an atomic rename; on S3 every file is uploaded,
then a commit marker (COMMIT: every file's size and sha256) is written last, so a half-uploaded
directory never looks finished. `local_copy` gives a reader a local directory: the path itself, or for
S3 a copy in the node-local cache (LLADA_CACHE_DIR, default ~/.cache/llada) keyed by the commit
marker's digest (files verified against it) or, for a prefix without one (a user's upload), by the
listing of names, sizes and modification times. Nothing assumes that two nodes share a disk.

S3 settings come from the standard AWS variables: credentials from the SDK's default chain,
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for S3-compatible stores (MinIO, moto), region from
`AWS_REGION` / `AWS_DEFAULT_REGION`. Transient S3 errors are retried by the SDK with backoff
(`LLADA_S3_MAX_ATTEMPTS`, default 6).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

CHUNK = 8 << 20


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(
            max_attempts=int(os.environ.get("LLADA_S3_MAX_ATTEMPTS", "6"))),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/key URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def absolute(uri: str) -> str:
    """A local path made absolute against this process's cwd (done once, on the driver); URIs as they are."""
    return uri if "://" in str(uri) else os.path.abspath(os.path.expanduser(str(uri)))


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def sha256_of(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a local file, streamed."""
    return sha256_of(pafs.LocalFileSystem(), str(path))


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Atomic: a local write goes to a temp file and is renamed; an S3 PUT is atomic per object."""
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@contextmanager
def atomic_local_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Build a directory under a hidden temp name beside `final`; on success rename it into place
    (an existing `final` is replaced only with `replace=True`), on failure remove it."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} exists; refusing to overwrite")
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


COMMIT = ".llada-commit.json"


def cache_root() -> Path:
    return Path(os.environ.get("LLADA_CACHE_DIR") or Path.home() / ".cache" / "llada")


def delete(uri: str) -> None:
    """Remove a file or directory artifact (the commit marker first: it stops looking finished)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif info.type == pafs.FileType.Directory:
        if exists(fs, f"{path}/{COMMIT}"):
            fs.delete_file(f"{path}/{COMMIT}")
        fs.delete_dir(path)


def artifact_exists(uri: str) -> bool:
    """A published artifact is at `uri` (local: the path exists; S3: a file, or a committed directory)."""
    fs, path = resolve(uri)
    if not is_s3(uri):
        return exists(fs, path)
    return fs.get_file_info(path).type == pafs.FileType.File or exists(fs, f"{path}/{COMMIT}")


def size_of(uri: str) -> int:
    """Bytes of a file, or of every file below a directory."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return info.size
    return sum(i.size for i in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
               if i.type == pafs.FileType.File)


def list_dirs(uri: str) -> list[str]:
    """URIs of the sub-directories of `uri` (sorted); empty when it does not exist."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(join(uri, i.base_name) for i in infos if i.type == pafs.FileType.Directory)


@contextmanager
def output_dir(uri: str | Path, replace: bool = True) -> Iterator[Path]:
    """A node-local directory to build an artifact in; on success it is published at `uri` (see the
    module doc), on failure nothing is. An existing artifact at `uri` is replaced only with `replace`."""
    uri = str(uri)
    if not is_s3(uri):
        with atomic_local_dir(uri, replace=replace) as tmp:
            yield tmp
        return
    fs, base = resolve(uri)
    if not replace and exists(fs, f"{base}/{COMMIT}"):
        raise FileExistsError(f"{uri} exists; refusing to overwrite")
    tmp = Path(tempfile.mkdtemp(prefix="llada-out-"))
    try:
        yield tmp
        delete(uri)
        files = {}
        for local in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = local.relative_to(tmp).as_posix()
            files[rel] = _upload(local, fs, f"{base}/{rel}")
        write_bytes(fs, f"{base}/{COMMIT}", json.dumps({"files": files}, indent=1, sort_keys=True).encode())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _upload(local: Path, fs: pafs.FileSystem, path: str) -> dict:
    digest, size = hashlib.sha256(), 0
    with open(local, "rb") as src, fs.open_output_stream(path) as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _download(fs: pafs.FileSystem, path: str, local: Path) -> str:
    """Stream one object to a local file; its sha256."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as src, open(local, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def local_copy(uri: str | Path, committed: bool = False) -> Path:
    """A local path with the contents of the file or directory artifact at `uri` (see the module doc).
    `committed`: a directory must be one of our published artifacts (S3: its commit marker exists)."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri)
    fs, base = resolve(uri)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        files, key = {info.base_name: None}, _listing_key([info])
        base = base.rsplit("/", 1)[0]
    else:
        try:
            marker = read_bytes(fs, f"{base}/{COMMIT}")
            files = {rel: meta["sha256"] for rel, meta in json.loads(marker)["files"].items()}
            key = hashlib.sha256(marker).hexdigest()
        except FileNotFoundError:
            if committed:
                raise FileNotFoundError(f"{uri}: not a finished artifact (no {COMMIT})") from None
            infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
                     if i.type == pafs.FileType.File]
            if not infos:
                raise FileNotFoundError(f"{uri}: no such file or directory") from None
            files, key = {i.path[len(base):].lstrip("/"): None for i in infos}, _listing_key(infos)
    final = cache_root() / key[:40]
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_local_dir(final) as tmp:
                for rel, sha in files.items():
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    got = _download(fs, f"{base}/{rel}", tmp / rel)
                    if sha is not None and got != sha:
                        raise OSError(f"{uri}/{rel}: sha256 does not match its commit marker (corrupted upload)")
        except FileExistsError:  # another process of this node fetched it first
            pass
    return final / info.base_name if info.type == pafs.FileType.File else final


def _listing_key(infos: list[pafs.FileInfo]) -> str:
    return hashlib.sha256(json.dumps(sorted((i.path, i.size, str(i.mtime)) for i in infos)).encode()).hexdigest()

"""One way to reach artifacts on local disk or S3 (pyarrow filesystems), with atomic writes.

S3 settings come from the standard AWS variables: credentials from the SDK's default chain,
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for S3-compatible stores (MinIO, moto), region from
`AWS_REGION` / `AWS_DEFAULT_REGION`. Transient S3 errors are retried by the SDK with backoff
(`LLADA_S3_MAX_ATTEMPTS`, default 6).
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def sha256_of(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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

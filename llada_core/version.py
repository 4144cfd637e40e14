"""What code produced an artifact: package version + git commit + dirty flag (when in a checkout)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    try:
        package = metadata.version("llada-pipeline")
    except metadata.PackageNotFoundError:
        package = "unknown"
    sha = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if sha else None
    return {"package": package, "git_sha": sha, "git_dirty": dirty}

"""What a person sees in the MLflow UI for a finished run: a real `mlflow server` on the run's SQLite
database and a real headless Chromium (Debian's `chromium` package) rendering the experiment page.

    python bench/mlflow_ui.py [--db work/mlflow.db] [--experiment llada-tiny-cpu]

Prints, for the experiment's plain link and for the training-view link the project prints
(`?workflowType=machine_learning`), which view opens and whether the pipeline run and its node runs
are listed; exits 1 when the training-view link does not show the runs table with the pipeline run.
A bench script, not a test: it needs Chromium (`apt-get install chromium`, ~300 MB) and a finished run.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visible_text(url: str, chromium: str) -> str:
    """The page's text after its scripts ran (Chromium's DOM dump), tags collapsed to ' | '."""
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=25000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"(\s*\|\s*)+", " | ", html.unescape(re.sub(r"<[^>]+>", " | ", text)))


def describe(text: str, parent_name: str) -> dict:
    title = re.search(r"\| (\w[\w ]*) - Experiment \d+ - MLflow \|", text)
    runs = re.search(r"\| (\d+) \| matching runs", text)
    return {"view": title.group(1) if title else "?", "runs_table": "| Run Name |" in text,
            "pipeline_run_listed": parent_name in text, "matching_runs": int(runs.group(1)) if runs else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="work/mlflow.db")
    ap.add_argument("--experiment", default="llada-tiny-cpu")
    ap.add_argument("--chromium", default="chromium")
    args = ap.parse_args()
    if not shutil.which(args.chromium):
        print(f"error: {args.chromium} not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if not Path(args.db).is_file():
        print(f"error: no MLflow database at {args.db} (run `make demo` first)", file=sys.stderr)
        return 2
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{Path(args.db).resolve()}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        client = MlflowClient(base)
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            print(f"error: no experiment {args.experiment!r} in {args.db}", file=sys.stderr)
            return 2
        parents = client.search_runs([exp.experiment_id], "tags.`llada.kind` = 'pipeline'")
        children = client.search_runs([exp.experiment_id], "tags.`llada.kind` = 'node'")
        parent = parents[0]
        print(f"experiment {exp.name} (id {exp.experiment_id}), tag mlflow.experimentKind="
              f"{exp.tags.get('mlflow.experimentKind')}: {len(parents)} pipeline run(s), {len(children)} node runs; "
              f"summary metrics on {parent.info.run_name}: {len(parent.data.metrics)} "
              f"({', '.join(sorted(parent.data.metrics)[:4])}, ...)")
        ok = True
        for label, url in (("plain link", f"{base}/#/experiments/{exp.experiment_id}"),
                           ("training-view link", f"{base}/#/experiments/{exp.experiment_id}"
                                                  "?workflowType=machine_learning")):
            seen = describe(visible_text(url, args.chromium), parent.info.run_name)
            print(f"{label}: {seen}")
            if label.startswith("training"):
                ok = seen["view"] == "Runs" and seen["runs_table"] and seen["pipeline_run_listed"]
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())

"""Real services on 127.0.0.1 for the multi-process tests: an S3 endpoint (moto server) and an
`mlflow server` process whose artifact store is that S3."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(bucket: str = "llada"):
    """A moto S3 server with one bucket; yields the AWS environment that reaches it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing-secret", region_name="us-east-1").create_bucket(Bucket=bucket)
    try:
        yield env
    finally:
        moto.stop()


@contextmanager
def mlflow_server(db: Path, artifacts: str, env: dict):
    """`mlflow server` (SQLite backend, artifacts proxied to `artifacts`); yields its URI."""
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", artifacts,
         "--workers", "1"],
        env=os.environ | env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    try:
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

"""bench/gpu_check.py runs on a GPU machine this suite never has: here it must refuse plainly without
CUDA, and its whole flow (Trainer steps, hand-off, SFT on it, decoding) must run on the CPU rows."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: the check itself runs")
def test_without_cuda_it_says_so_and_exits_non_zero():
    out = run()
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("error: no CUDA GPU visible (torch.cuda.is_available() is False): "
                                                    "bench/gpu_check.py needs one")


@pytest.mark.slow  # a few Trainer steps in a fresh interpreter
def test_its_cpu_rows_run_the_whole_flow():
    out = run("--allow-cpu", "--seq-len", "64", "--micro-batch", "2", "--steps", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("tiny")}
    assert set(rows) == {"cpt", "hand-off", "sft", "decode"}
    assert "weights bit-identical" in rows["hand-off"]

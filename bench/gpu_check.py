"""One-GPU readiness check of the training path the CPU suite cannot run (bf16, CUDA, flex attention).

  .venv/bin/python bench/gpu_check.py [--steps 4] [--seq-len 1024] [--peak-tflops N]

On one CUDA GPU, for the tiny preset and a ~1B-parameter MoE variant of it, in bf16 through the
real Trainer (megatron-core, DDP, Adam): CPT block-diffusion steps with the SDPA and the flex
attention backends, the hand-off (the training checkpoint, streamed into the consolidated checkpoint
on the driver path, read back by a fresh SFT trainer as its init checkpoint: weights compared bit
for bit), an SFT step on it, and a few decoding blocks. Prints tokens/s, MFU against the GPU's
dense bf16 peak and peak GPU memory per row; exits non-zero when a step fails or a check differs.
Without CUDA it says so and exits 1 (`--allow-cpu` runs the tiny fp32 SDPA rows, to test the script).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|cuda_graph_scope).*")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_step import step_flops  # noqa: E402

# dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s without sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
ONE_B = ["hidden_size=1536", "num_layers=12", "num_heads=12", "num_kv_heads=4", "head_dim=128",
         "ffn_hidden_size=4096", "num_experts=32", "moe_topk=4", "router_num_groups=4", "router_group_topk=2",
         "moe_ffn_hidden_size=512", "shared_expert_ffn_hidden_size=512", "vocab_size=32768"]


def write_datasets(root: Path, seq_len: int, vocab: int, rows: int = 64) -> tuple[str, str]:
    """A packed pretraining dataset and an SFT dataset of random ids with a real tokenizer's specials."""
    from llada_core.data.shards import DatasetWriter
    from llada_core.data.tokenizer import train_bpe
    from stages.prepare_instruct import schema_of

    tok = train_bpe(iter(["a small corpus for the tokenizer of the gpu check"] * 10), 300)
    special = {r: {"token": tok.special[r], "id": tok.id_of(r)} for r in tok.special}
    rng = np.random.default_rng(0)
    out = []
    for kind in ("pretrain", "sft"):
        schema = (pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.int32()))])
                  if kind == "pretrain" else schema_of("sft"))
        w = DatasetWriter(str(root / kind), schema, rows_per_shard=32)
        w.open()
        for _ in range(rows):
            ids = rng.integers(300, vocab, seq_len).astype(np.int32)
            if kind == "pretrain":
                w.add("train", input_ids=ids, doc_ids=(np.arange(seq_len) >= seq_len // 2).astype(np.int32))
            else:
                w.add("train", input_ids=ids[: seq_len // 2], prompt_len=seq_len // 8)
        for name, data in tok.files().items():
            w.write_file(f"tokenizer/{name}", data)
        w.commit({"kind": kind, "seq_len": seq_len,
                  "tokenizer": {"digest": tok.digest, "vocab_size": tok.vocab_size, "special_tokens": special}})
        out.append(str(root / kind))
    return out[0], out[1]


def training(name: str, data: str, kind: str, overrides: list[str], micro_batch: int, steps: int, bf16: bool,
             **extra):
    from llada_core.trainer.config import TrainingConfig

    return TrainingConfig.model_validate({
        "name": name, "objective": {"kind": kind, "block_size": 32}, "data": data, "model": "tiny",
        "model_overrides": overrides, "micro_batch": micro_batch, "grad_accum": 1, "steps": steps,
        "precision": "bf16" if bf16 else "fp32", "checkpoint_every": 10**6,
        "optim": {"lr": 1e-4, "warmup_steps": 0, "decay": "constant"}, **extra})


def timed_steps(trainer, steps: int) -> dict:
    """The first step is a warm-up (flex compiles its kernels there); the rest are averaged."""
    trainer.train_step()
    sync()
    rows = [trainer.train_step() for _ in range(max(steps - 1, 1))]
    return {"step_time": sum(r["step_time"] for r in rows) / len(rows),
            "tokens_per_s": sum(r["tokens_per_s"] for r in rows) / len(rows), "loss": rows[-1]["loss"]}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def peak_flops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def check_variant(label: str, overrides: list[str], args, data: str, sft: str, work: Path, bf16: bool) -> list[str]:
    from llada_core.checkpoint import CheckpointReader
    from llada_core.consolidate import consolidate
    from llada_core.data.tokenizer import load_tokenizer
    from llada_core.sampler import generate
    from llada_core.trainer.loop import Trainer

    failures, peak = [], peak_flops(args)
    backends = ["sdpa", "flex"] if torch.cuda.is_available() else ["sdpa"]
    for backend in backends:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        over = overrides + [f"attention_backend={backend}", f"max_position={max(args.seq_len, 256)}"]
        try:
            trainer = Trainer(training(f"cpt-{label}-{backend}", data, "cpt", over, args.micro_batch, args.steps, bf16))
            m = timed_steps(trainer, args.steps)
            flops = step_flops(trainer.model.cfg, args.micro_batch, 2 * args.seq_len)
            mfu = flops / m["step_time"] / peak if peak else None
            print(f"{label:<6}{'cpt ' + backend:<10}{trainer.model.cfg.total_params() / 1e9:>7.2f}B"
                  f"{m['tokens_per_s']:>12,.0f}{(f'{mfu:.1%}' if mfu else 'n/a'):>8}{peak_gib():>9.2f}"
                  f"{m['loss']:>9.3f}", flush=True)
        except Exception:  # one failing row must not hide the others
            failures.append(f"{label} cpt {backend}: {traceback.format_exc(limit=3)}")
            continue
        if backend != "sdpa":
            del trainer
            continue
        try:  # the hand-off: training checkpoint -> consolidated checkpoint -> a fresh SFT trainer's init
            ckpt = trainer.save(work / f"{label}-state")
            t0 = time.perf_counter()
            consolidated = consolidate(ckpt, str(work / f"{label}-consolidated"), trainer.model.cfg,
                                       load_tokenizer(Path(data, "tokenizer")), {"stage": "gpu-check"})
            seconds = time.perf_counter() - t0
            saved = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items() if "_extra_state" not in k}
            model_cfg = trainer.model.cfg
            del trainer
            sft_trainer = Trainer(training(f"sft-{label}", sft, "sft", [], args.micro_batch, 2, bf16,
                                           init_checkpoint=consolidated))
            loaded = {k: v.detach().cpu() for k, v in sft_trainer.model.state_dict().items() if "_extra_state" not in k}
            same = loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
            print(f"{label:<6}{'hand-off':<10}{'':>8}{'':>12}{'':>8}{peak_gib():>9.2f}  consolidated in "
                  f"{seconds:.1f} s, {'weights bit-identical' if same else 'WEIGHTS DIFFER'}", flush=True)
            if not same:
                failures.append(f"{label} hand-off: the SFT trainer's weights differ from the saved ones")
            m = timed_steps(sft_trainer, 2)
            print(f"{label:<6}{'sft':<10}{'':>8}{m['tokens_per_s']:>12,.0f}{'':>8}{peak_gib():>9.2f}"
                  f"{m['loss']:>9.3f}", flush=True)
            model = sft_trainer.model.eval()
            tok = CheckpointReader(consolidated).tok
            device = next(model.parameters()).device
            t0 = time.perf_counter()
            with torch.no_grad():
                result = generate(model, list(range(300, 364)), mask_id=tok.id_of("mask"), eos_id=tok.id_of("eos"),
                                  max_new_tokens=128, max_len=model_cfg.max_position, block_size=32, threshold=0.9,
                                  device=device)
            sync()
            secs = time.perf_counter() - t0
            print(f"{label:<6}{'decode':<10}{'':>8}{len(result.tokens) / secs:>12,.0f}{'':>8}{peak_gib():>9.2f}"
                  f"  {len(result.tokens)} tokens in {result.forward_passes} forwards", flush=True)
            del sft_trainer, model
        except Exception:
            failures.append(f"{label} hand-off/sft/decode: {traceback.format_exc(limit=3)}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    ap.add_argument("--allow-cpu", action="store_true", help="no CUDA: run the tiny fp32 SDPA rows (tests the script)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("error: no CUDA GPU visible (torch.cuda.is_available() is False): bench/gpu_check.py needs one",
              file=sys.stderr)
        return 1
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    device = torch.cuda.get_device_name() if cuda else "CPU (--allow-cpu: tiny rows only, fp32)"
    print(f"device: {device}; torch {torch.__version__}; bf16 peak "
          f"{(peak_flops(args) or 0) / 1e12:.0f} TFLOP/s; seq_len {args.seq_len}, micro-batch {args.micro_batch}")
    print(f"{'model':<6}{'row':<10}{'params':>8}{'tokens/s':>12}{'MFU':>8}{'GPU GiB':>9}{'loss':>9}")
    t0 = time.perf_counter()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, sft = write_datasets(work, args.seq_len, 32768)
        variants = {"tiny": ["vocab_size=32768"], "1b": ONE_B} if cuda else {"tiny": ["vocab_size=32768"]}
        for label, overrides in variants.items():
            failures += check_variant(label, overrides, args, data, sft, work, bf16=cuda)
    print(f"total {time.perf_counter() - t0:.0f} s")
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

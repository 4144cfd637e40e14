"""Peak host memory of the stage hand-off, per process: the previous path and today's side by side.

  .venv/bin/python bench/handoff_memory.py [--work /tmp/handoff] [--keep]

A synthetic wide Ling-shaped MoE (~0.5B parameters, fp32: ~2 GB) on CPU. Each case runs in fresh
processes (world 2: two gloo ranks spawned by the case's process) and reports, per process, the peak
RSS (VmHWM, restarted once the rank's model is built) above the RSS it had before the case began
(imports and process group done, no model), next to its own shard (the rank's weights; 0 for a
process that only converts):
  save     end of a stage: "previous" all-gathers every shard onto every rank (all_gather_object) and
           rank 0 writes the consolidated checkpoint; "today" each rank writes its own slices
           (dist-checkpointing) and the node's driver streams them into the consolidated checkpoint;
  load     the next stage's rank takes its shard of a consolidated checkpoint, under the same layout (1)
           and others (TP=2, EP=2): "previous" reads the whole checkpoint, then slices it; "today"
           reads only its slices; "today (state)" continues from the TP=2 training checkpoint on EP=2;
  export   HF export; import   import-hf of a bf16 HF checkpoint ("previous" wrote fp32);
  merge    top-k merge of 3 candidates (the averaging; ranking them is an eval of one model at a time).
The previous code paths are reproduced here (from commit 3c7fac0) as the baseline.
Columns: `model` = the rank's RSS once its model is built (above the runtime), `peak` = its high-water
mark during the case, `added` = peak - model (what the hand-off itself costs).
Target: each process peaks at most 1.2x its own shard + the largest tensor + 256 MB of read buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|cuda_graph_scope).*")
WIDE = ["hidden_size=2048", "num_layers=6", "num_heads=16", "num_kv_heads=4", "head_dim=128", "ffn_hidden_size=5632",
        "num_experts=8", "moe_topk=2", "router_num_groups=4", "router_group_topk=2", "moe_ffn_hidden_size=1024",
        "shared_expert_ffn_hidden_size=1024", "vocab_size=32768", "max_position=256"]
LAYOUTS = {"1": {"world_size": 1}, "tp2": {"world_size": 2, "tp": 2}, "ep2": {"world_size": 2, "ep": 2}}
BUFFER = 256 << 20
CASES = [("save", "previous", "1"), ("save", "today", "1"), ("save", "previous", "tp2"), ("save", "today", "tp2"),
         ("load", "previous", "1"), ("load", "today", "1"), ("load", "previous", "tp2"), ("load", "today", "tp2"),
         ("load", "previous", "ep2"), ("load", "today", "ep2"), ("load", "today (state)", "ep2"),
         ("export", "previous", "1"), ("export", "today", "1"), ("import", "previous", "1"), ("import", "today", "1"),
         ("merge", "previous", "1"), ("merge", "today", "1")]


def rss() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def model_cfg():
    from llada_core.model.config import load_preset

    return load_preset("tiny", WIDE)


class BufferedParts:
    """The previous checkpoint writer: a part's tensors collected in a dict (up to SHARD_BYTES), then save_file."""

    def __init__(self, directory, max_bytes, name, metadata=None):
        self.directory, self.max_bytes, self.name, self.metadata = Path(directory), max_bytes, name, metadata
        self.where, self.total, self._part, self._size, self._n = {}, 0, {}, 0, 0

    def add(self, key, tensor):
        self._part[key] = tensor.detach().contiguous()
        self._size += tensor.numel() * tensor.element_size()
        self.total += tensor.numel() * tensor.element_size()
        if self._size >= self.max_bytes:
            self._flush()

    def _flush(self):
        from safetensors.torch import save_file

        if self._part:
            save_file(self._part, str(self.directory / self.name(self._n)), metadata=self.metadata)
            self.where.update(dict.fromkeys(self._part, self.name(self._n)))
            self._part, self._size, self._n = {}, 0, self._n + 1

    def close(self):
        self._flush()
        return [self.name(i) for i in range(self._n)]


def use_previous_writer():
    import llada_core.checkpoint as checkpoint

    checkpoint.PartWriter = BufferedParts


def own_bytes(model) -> int:
    return sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if not k.endswith("_extra_state"))


def rank_case(rank: int, world: int, port: int, case: str, path: str, layout: str, work: str) -> None:
    """One rank of a case; writes {base, peak, own} to WORK/report-RANK.json."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1 if world > 1 else 2)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from megatron.core import dist_checkpointing

    from llada_core.checkpoint import copy_into, load_checkpoint, save_checkpoint
    from llada_core.data.tokenizer import load_tokenizer
    from llada_core.model.build import LladaModel
    from llada_core.model.hf_io import expected_shapes
    from llada_core.parallel.layout import ParallelLayout
    from llada_core.parallel.reshard import current_coords, shard_state, unshard_state
    from llada_core.parallel.setup import init_parallel

    init_parallel(ParallelLayout(**LAYOUTS[layout]), seed=0)
    w = Path(work)
    base = rss()["VmRSS"]
    model = LladaModel(model_cfg(), ParallelLayout(**LAYOUTS[layout]))
    own = own_bytes(model)
    # the peak of building the model (megatron's CPU init makes a master copy per tensor) is not the
    # hand-off's: the high-water mark restarts at the model's resident size (Linux clear_refs "5")
    Path("/proc/self/clear_refs").write_text("5")
    resident = rss()["VmRSS"]  # the model as built (megatron's CPU init keeps more than the weights)
    if case == "save" and path == "previous":
        use_previous_writer()
        local = {k: v.detach() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
        gathered = [None] * world
        dist.all_gather_object(gathered, (current_coords(), local))
        if rank == 0:
            full = unshard_state(dict(gathered), model.cfg, list(expected_shapes(model.cfg)))
            save_checkpoint(w / f"out-{layout}", model.cfg, full.items(), load_tokenizer(w / "tokenizer"), {})
    elif case == "save":
        msd = model.gpt.sharded_state_dict(metadata={"non_homogeneous_layers": True})
        (w / f"state-{layout}").mkdir(exist_ok=True)
        dist_checkpointing.save(msd, str(w / f"state-{layout}"))
    elif case == "load" and path == "previous":
        cfg, full, _, _ = load_checkpoint(w / "ckpt")
        copy_into(model, shard_state(full, cfg, current_coords()).items())
    elif path == "today (state)":
        msd = model.gpt.sharded_state_dict(metadata={"non_homogeneous_layers": True})
        model.gpt.load_state_dict(dist_checkpointing.load(msd, str(w / "state-tp2")), strict=True)
    else:  # what the trainer does with an init checkpoint
        from llada_core.trainer.loop import _load_sharded

        _load_sharded(model, str(w / "ckpt"))
    dist.barrier()
    report = {"base": base, "peak": rss()["VmHWM"], "own": own, "process": f"rank {rank}", "resident": resident}
    (w / f"report-{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def tool_case(case: str, path: str, work: str) -> dict:
    """A one-process case (driver consolidation, export, import, merge)."""
    import torch

    torch.set_num_threads(2)
    from llada_core.checkpoint import load_checkpoint, save_checkpoint
    from llada_core.consolidate import consolidate
    from llada_core.data.tokenizer import load_tokenizer
    from llada_core.merge import merge_top_k
    from llada_core.model.hf_config import to_hf_config
    from llada_core.model.hf_io import megatron_to_hf
    from stages.model_hf import export_hf, import_hf

    w = Path(work)
    base = rss()["VmRSS"]
    if path == "previous":
        use_previous_writer()
    if case == "save":  # today's driver: the TP=2 training checkpoint -> the consolidated checkpoint
        consolidate(w / "state-tp2", str(w / "out-driver"), model_cfg(), load_tokenizer(w / "tokenizer"), {})
    elif case == "export" and path == "previous":
        from safetensors.torch import save_file

        cfg, state, _, _ = load_checkpoint(w / "ckpt")
        (w / "export-prev").mkdir()
        save_file(megatron_to_hf(state, cfg, to_hf_config(cfg)["model_type"]), str(w / "export-prev" / "m.safetensors"))
    elif case == "export":
        export_hf(w / "ckpt", w / "export-today")
    elif case == "import":
        import_hf(w / "hf-bf16", w / f"import-{path}", dtype=torch.float32 if path == "previous" else None)
    elif case == "merge" and path == "previous":
        cfg, total, tok, _ = load_checkpoint(w / "cand-0")
        total = {k: t.double() for k, t in total.items()}
        for i in (1, 2):
            for k, t in load_checkpoint(w / f"cand-{i}")[1].items():
                total[k] += t.double()
        save_checkpoint(w / "merge-prev", cfg, ((k, (t / 3).float()) for k, t in total.items()), tok, {})
    else:
        merge_top_k({str(w / f"cand-{i}"): float(i) for i in range(3)}, w / "merge-today", k=3)
    return {"base": base, "peak": rss()["VmHWM"], "own": 0, "process": "driver" if case == "save" else "tool",
            "resident": base}


def setup(work: Path) -> dict:
    """The consolidated checkpoint, 3 merge candidates and a bf16 HF checkpoint of the wide model."""
    import torch

    from llada_core.checkpoint import CheckpointReader, save_checkpoint
    from llada_core.data.tokenizer import train_bpe
    from llada_core.model.build import LladaModel
    from llada_core.parallel.setup import init_single_process
    from stages.model_hf import export_hf

    init_single_process(seed=0)
    tok = train_bpe(iter(["a tokenizer for the hand-off benchmark"] * 10), 300)
    tok.save(work / "tokenizer")
    model = LladaModel(model_cfg())
    state = {k: v.detach() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    save_checkpoint(work / "ckpt", model.cfg, state.items(), tok, {})
    largest = max(v.numel() * v.element_size() for v in state.values())
    params = sum(v.numel() for v in state.values())
    del model
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        noisy = ((k, v + 0.01 * torch.randn(v.shape, generator=g)) for k, v in state.items())
        save_checkpoint(work / f"cand-{i}", model_cfg(), noisy, tok, {})
    save_checkpoint(work / "ckpt-bf16", model_cfg(), ((k, v.bfloat16()) for k, v in state.items()), tok, {})
    del state
    export_hf(work / "ckpt-bf16", work / "hf-bf16")
    assert CheckpointReader(work / "ckpt").cfg == model_cfg()
    return {"params": params, "largest": largest}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: str, path: str, layout: str, work: Path) -> list[dict]:
    for f in work.glob("report-*.json"):
        f.unlink()
    cmd = [sys.executable, __file__, "--work", str(work), "--case", case, "--path", path, "--layout", layout]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "2"})
    reports = [json.loads(f.read_text()) for f in sorted(work.glob("report-*.json"))]
    if case == "save" and path == "today" and layout == "tp2":  # + the driver that consolidates it
        subprocess.run(cmd[:-2] + ["--layout", "driver"], check=True)
        reports += [json.loads((work / "report-driver.json").read_text())]
    return reports


def child(args) -> None:
    work = Path(args.work)
    if args.layout == "driver" or args.case in ("export", "import", "merge"):
        report = tool_case(args.case, args.path, args.work)
        (work / f"report-{'driver' if args.layout == 'driver' else 0}.json").write_text(json.dumps(report))
        return
    world = LAYOUTS[args.layout]["world_size"]
    port = free_port()
    if world == 1:
        rank_case(0, 1, port, args.case, args.path, args.layout, args.work)
    else:
        import torch.multiprocessing as mp

        mp.spawn(rank_case, args=(world, port, args.case, args.path, args.layout, args.work), nprocs=world)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/llada-handoff-bench")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--case"), ap.add_argument("--path"), ap.add_argument("--layout")
    args = ap.parse_args()
    if args.case:
        return child(args)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    facts = setup(work)
    gib = 1 << 30
    print(f"model: {facts['params'] / 1e9:.2f}B params, fp32 {facts['params'] * 4 / gib:.2f} GiB; largest tensor "
          f"{facts['largest'] / gib:.3f} GiB; target per process: 1.2 x own shard + largest tensor + 0.25 GiB")
    print(f"{'case':<8}{'path':<15}{'layout':<7}{'process':<9}{'own GiB':>8}{'model GiB':>10}{'peak GiB':>9}"
          f"{'added':>7}{'x own':>7}{'target':>8}  within")
    for case, path, layout in CASES:
        for r in run_case(case, path, layout, work):
            peak = (r["peak"] - r["base"]) / gib
            target = (1.2 * r["own"] + facts["largest"] + BUFFER) / gib
            ratio = f"{peak / (r['own'] / gib):.2f}" if r["own"] else "-"
            model, added = (r["resident"] - r["base"]) / gib, (r["peak"] - r["resident"]) / gib
            print(f"{case:<8}{path:<15}{layout:<7}{r['process']:<9}{r['own'] / gib:>8.2f}{model:>10.2f}{peak:>9.2f}"
                  f"{added:>7.2f}{ratio:>7}{target:>8.2f}  {'yes' if peak <= target else 'NO'}", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

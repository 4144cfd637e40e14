"""Evaluation of a consolidated checkpoint in one process (the eval and merge nodes):

- ELBO perplexity: exp of the block-diffusion loss (Eq. 1, a per-token upper bound of the NLL) on a
  held-out split, with noise seeded per row so every model sees the same masks;
- task accuracy: exact match of the parallel decoder's answers (threshold + block) on held-out
  verifiable tasks, with TPF (tokens per forward pass) and decode tokens/s;
- preference accuracy: share of held-out pairs whose policy ELBO prefers chosen over rejected.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from llada_core.checkpoint import CheckpointReader, load_streamed
from llada_core.data.shards import read_manifest, read_split
from llada_core.data.synthetic import check_answer
from llada_core.model.build import LladaModel
from llada_core.objectives.block_diffusion import block_diffusion_loss
from llada_core.objectives.common import row_noise, sample_generator
from llada_core.objectives.dpo import elbo
from llada_core.objectives.sft import pad_examples
from llada_core.parallel.layout import ParallelLayout
from llada_core.parallel.setup import init_single_process
from llada_core.sampler import generate_text


def load_model(path: str):
    """(model in eval mode, tokenizer) from a consolidated checkpoint."""
    init_single_process()
    reader = CheckpointReader(path)
    model = LladaModel(reader.cfg, ParallelLayout(world_size=1))
    load_streamed(model, reader)
    return model.eval().requires_grad_(False), reader.tok


@torch.no_grad()
def elbo_perplexity(model, dataset: str, split: str = "val", block_size: int = 32, max_rows: int = 32,
                    batch: int = 8, seed: int = 0) -> float:
    manifest = read_manifest(dataset)
    mask_id = manifest["tokenizer"]["special_tokens"]["mask"]["id"]
    table = read_split(dataset, split).slice(0, max_rows)
    x0_all = torch.tensor(table.column("input_ids").to_pylist(), dtype=torch.long)
    doc_all = torch.tensor(table.column("doc_ids").to_pylist(), dtype=torch.long)
    total, tokens = 0.0, 0
    for i in range(0, len(x0_all), batch):
        x0, doc = x0_all[i:i + batch], doc_all[i:i + batch]
        noise = row_noise(doc >= 0, [sample_generator(seed, i + j) for j in range(len(x0))])
        out = block_diffusion_loss(model, x0, doc, block_size, mask_id, noise=noise)
        n = int((doc >= 0).sum())
        total, tokens = total + float(out.loss) * n, tokens + n
    return math.exp(total / max(tokens, 1))


def _read_jsonl(path: str, n: int) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n]


@torch.no_grad()
def task_accuracy(model, tok, tasks_jsonl: str, n: int = 100, threshold: float = 0.95, block_size: int = 32,
                  max_new_tokens: int = 32) -> dict:
    rows = _read_jsonl(tasks_jsonl, n)
    correct, tokens, passes, seconds, per_task = 0, 0, 0, 0.0, {}
    for row in rows:
        t0 = time.perf_counter()
        answer, result = generate_text(model, tok, row["prompt"], max_new_tokens=max_new_tokens,
                                       max_len=model.cfg.max_position, block_size=block_size, threshold=threshold)
        seconds += time.perf_counter() - t0
        ok = check_answer(row["prompt"], answer.strip())
        correct += ok
        tokens, passes = tokens + len(result.tokens), passes + result.forward_passes
        hits, total = per_task.get(row.get("task", "?"), (0, 0))
        per_task[row.get("task", "?")] = (hits + ok, total + 1)
    copy = sum(check_answer(r["prompt"], r["prompt"].split(": ", 1)[-1]) for r in rows)  # echo the input
    return {"accuracy": correct / max(len(rows), 1), "tpf": tokens / max(passes, 1),
            "tokens_per_s": tokens / max(seconds, 1e-9), "n": len(rows), "threshold": threshold,
            "copy_baseline": copy / max(len(rows), 1),
            "per_task": {k: h / t for k, (h, t) in sorted(per_task.items())}}


@torch.no_grad()
def preference_accuracy(model, dataset: str, split: str = "val", block_size: int = 32, max_rows: int = 64,
                        seed: int = 0) -> float:
    """Share of pairs with ELBO(chosen) > ELBO(rejected), one shared noise draw per pair (as in DPO)."""
    manifest = read_manifest(dataset)
    special = manifest["tokenizer"]["special_tokens"]
    rows = read_split(dataset, split).slice(0, max_rows).to_pylist()
    wins = 0
    for i, r in enumerate(rows):
        chosen = pad_examples([(r["chosen_ids"], r["prompt_len"])], block_size, special["pad"]["id"],
                              special["mask"]["id"])
        rejected = pad_examples([(r["rejected_ids"], r["prompt_len"])], block_size, special["pad"]["id"],
                                special["mask"]["id"])
        g = sample_generator(seed, i)
        state = g.get_state()
        e_c = elbo(model, chosen, row_noise(chosen.response, [g]), block_size, special["mask"]["id"])
        g.set_state(state)
        e_r = elbo(model, rejected, row_noise(rejected.response, [g]), block_size, special["mask"]["id"])
        wins += int(e_c.item() > e_r.item())
    return wins / max(len(rows), 1)

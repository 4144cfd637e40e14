"""Evaluation of a consolidated checkpoint in one process (the eval and merge nodes):

- ELBO perplexity: exp of the block-diffusion loss (Eq. 1, a per-token upper bound of the NLL) on a
  held-out split, with noise seeded per row so every model sees the same masks;
- task accuracy: exact match of the parallel decoder's answers (threshold + block) on held-out
  verifiable tasks, with TPF (tokens per forward pass) and decode tokens/s, overall and per task;
  the same with one token per forward left to right (the AR-style baseline on the same model);
- preference accuracy: share of held-out pairs whose policy ELBO prefers chosen over rejected, with
  DPO's own noise band and EOS tail, each ELBO over a complementary pair of draws.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from llada_core.checkpoint import CheckpointReader, load_streamed
from llada_core.data.chat import encode_prompt
from llada_core.data.shards import read_manifest, read_split
from llada_core.data.synthetic import check_answer
from llada_core.model.build import LladaModel
from llada_core.objectives.block_diffusion import block_diffusion_loss
from llada_core.objectives.common import row_noise, sample_generator
from llada_core.objectives.dpo import elbo
from llada_core.objectives.sft import ResponseConfig, complementary, pad_examples
from llada_core.parallel.layout import ParallelLayout
from llada_core.parallel.setup import init_single_process
from llada_core.sampler import generate_batch


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


def _summary(hits: int, tokens: int, forwards: int, seconds: float, n: int) -> dict:
    """The rates and the counts they come from (so tasks can be pooled)."""
    return {"accuracy": hits / max(n, 1), "tpf": tokens / max(forwards, 1), "tokens_per_s": tokens / max(seconds, 1e-9),
            "n": n, "hits": hits, "tokens": tokens, "forwards": forwards, "seconds": seconds}


def pooled(per_task: dict[str, dict], tasks=None) -> dict:
    """The summary of several tasks' decodes (all of them, or those in `tasks`) from their counts."""
    rows = [v for k, v in per_task.items() if tasks is None or k in tasks]
    return _summary(*(sum(r[k] for r in rows) for k in ("hits", "tokens", "forwards", "seconds", "n")))


@torch.no_grad()
def task_accuracy(model, tok, tasks_jsonl: str, n: int = 100, threshold: float = 0.95, block_size: int = 32,
                  max_new_tokens: int = 32, left_to_right: bool = False, batch: int = 64,
                  edit_threshold: float | None = None, edit_steps: int = 16) -> dict:
    """Exact match, TPF and decode tokens/s on the first n held-out tasks, overall and per task; the
    prompts of a task are decoded together (`generate_batch`), so tokens/s is per task as well."""
    rows = _read_jsonl(tasks_jsonl, n)
    stops = (tok.id_of("eot"), tok.id_of("eos"))
    per_task: dict[str, dict] = {}
    for task in sorted({r.get("task", "?") for r in rows}):
        mine = [r for r in rows if r.get("task", "?") == task]
        counts = [0, 0, 0, 0.0]
        for i in range(0, len(mine), batch):
            chunk = mine[i : i + batch]
            prompts = [encode_prompt(tok, [{"role": "user", "content": r["prompt"]}]) for r in chunk]
            t0 = time.perf_counter()
            results = generate_batch(model, prompts, mask_id=tok.id_of("mask"), eos_id=stops[1], stop_ids=stops[:1],
                                     max_new_tokens=max_new_tokens, max_len=model.cfg.max_position,
                                     block_size=block_size, threshold=threshold, left_to_right=left_to_right,
                                     edit_threshold=edit_threshold, edit_steps=edit_steps)
            counts[3] += time.perf_counter() - t0
            for r, res in zip(chunk, results, strict=True):
                answer = tok.decode([t for t in res.tokens if t not in stops])
                counts[0] += check_answer(r["prompt"], answer.strip())
                counts[1] += len(res.tokens)
                counts[2] += res.forward_passes
        per_task[task] = _summary(*counts, len(mine))
    copy = sum(check_answer(r["prompt"], r["prompt"].split(": ", 1)[-1]) for r in rows)  # echo the input
    editing = {"edit_threshold": edit_threshold, "edit_steps": edit_steps} if edit_threshold is not None else {}
    return pooled(per_task) | {"threshold": threshold, "left_to_right": left_to_right,
                               "copy_baseline": copy / max(len(rows), 1), "per_task": per_task} | editing


@torch.no_grad()
def preference_accuracy(model, dataset: str, pairs: ResponseConfig, split: str = "val", max_rows: int = 64,
                        seed: int = 0) -> float:
    """Share of pairs whose ELBO prefers chosen over rejected (a tie counts half), with the block,
    mask-ratio band and EOS tail DPO trains with (`pairs`). Each ELBO is estimated over a complementary
    pair of draws (a mask and its inverse over the response, as SFT trains: every response token masked
    exactly once), shared by chosen and rejected. With one draw, whether the draw masked the symbol the
    two responses differ in decided most pairs, and near-perfect models all scored alike."""
    manifest = read_manifest(dataset)
    special = {k: v["id"] for k, v in manifest["tokenizer"]["special_tokens"].items()}
    tail = {"eos_id": special["eos"]} if pairs.eos_tail else {"mask_id": special["mask"]}
    rows = read_split(dataset, split).slice(0, max_rows).to_pylist()
    wins = 0.0
    for i, r in enumerate(rows):
        g = sample_generator(seed, i)
        state = g.get_state()
        elbos = []
        for key in ("chosen_ids", "rejected_ids"):
            b = pad_examples([(r[key], r["prompt_len"])], pairs.block_size, special["pad"], **tail)
            g.set_state(state)
            both, noise = complementary(b, row_noise(b.response, [g], pairs.alpha_min, pairs.alpha_max))
            elbos.append(elbo(model, both, noise, pairs.block_size, special["mask"]).sum().item())
        wins += 1.0 if elbos[0] > elbos[1] else 0.5 if elbos[0] == elbos[1] else 0.0
    return wins / max(len(rows), 1)

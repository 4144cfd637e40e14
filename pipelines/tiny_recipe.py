"""The recipe end to end, as one readable script. Today: the data stages; the training stages
(CPT warm-up/stable/decay, SFT, CAP, DPO, eval, export) attach here as they land.

  synthetic tasks ─┐
  pretrain corpus ─┴─> prepare pretrain (trains the tokenizer) ─> prepare SFT, prepare DPO
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from llada_core.cluster import ensure_ray
from llada_core.config import canonical_json, config_digest
from llada_core.data.synthetic import write_task_files
from pipelines.recipe_config import RecipeConfig
from tasks import prepare_data, prepare_instruct


def run(cfg: RecipeConfig, overwrite: bool = True) -> dict:
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(canonical_json(cfg) + "\n", encoding="utf-8")
    timings: dict[str, float] = {}
    ensure_ray()

    t0 = time.perf_counter()
    if cfg.instruct.sft_input and cfg.instruct.dpo_input:
        sft_in, dpo_in = cfg.instruct.sft_input, cfg.instruct.dpo_input
    else:
        files = write_task_files(work / "raw" / "tasks", cfg.instruct.synthetic_tasks, cfg.seed, cfg.instruct.eval_fraction)
        sft_in = cfg.instruct.sft_input or files["sft_train"]
        dpo_in = cfg.instruct.dpo_input or files["dpo_train"]
    timings["make_tasks"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pre = prepare_data.run(
        prepare_data.PrepareDataConfig(
            input=cfg.data.input,
            out=str(work / "data" / "pretrain"),
            seq_len=cfg.seq_len,
            tokenizer=prepare_data.TokenizerSpec(
                path=cfg.data.tokenizer, train=cfg.data.tokenizer is None, vocab_size=cfg.data.vocab_size,
                add_mask_token=cfg.data.add_mask_token,
            ),
            val_fraction=cfg.data.val_fraction,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            overwrite=overwrite,
        )
    )
    timings["prepare_pretrain"] = time.perf_counter() - t0

    manifests = {"pretrain": pre}
    for kind, src in (("sft", sft_in), ("dpo", dpo_in)):
        t0 = time.perf_counter()
        manifests[kind] = prepare_instruct.run(
            prepare_instruct.PrepareInstructConfig(
                kind=kind, input=src, out=str(work / "data" / kind), tokenizer=str(work / "data" / "pretrain" / "tokenizer"),
                max_len=cfg.instruct.max_len, val_fraction=cfg.instruct.val_fraction, seed=cfg.seed,
                num_workers=cfg.num_workers, overwrite=overwrite,
            )
        )
        timings[f"prepare_{kind}"] = time.perf_counter() - t0

    summary = {
        "recipe": cfg.name,
        "config_digest": config_digest(cfg),
        "workdir": str(work),
        "schedule": cfg.schedule.build().describe(),
        "datasets": {k: {"splits": m["splits"], "skipped": m["skipped"], "tokenizer": m["tokenizer"]["digest"][:16]} for k, m in manifests.items()},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"recipe {summary['recipe']}  config {summary['config_digest'][:12]}  workdir {summary['workdir']}", ""]
    lines.append(f"{'dataset':<10}{'split':<7}{'rows':>8}{'docs/ex':>9}{'tokens':>11}  skipped")
    for name, ds in summary["datasets"].items():
        for split, s in ds["splits"].items():
            count = s.get("documents", s.get("examples"))
            lines.append(f"{name:<10}{split:<7}{s['rows']:>8}{count:>9}{s['tokens']:>11}  {ds['skipped']}")
    lines.append("")
    lines.append("CPT block schedule (tokens): " + ", ".join(f"{s['phase']}:{s['block_size']}" for s in summary["schedule"]))
    lines.append("stage seconds: " + ", ".join(f"{k}={v}" for k, v in summary["seconds"].items()))
    return "\n".join(lines)

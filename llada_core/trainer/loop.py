"""The one trainer every stage runs, inside each worker of a group (Ray Train, torchrun or spawn).

A stage declares objective, data, schedule and layout (StageConfig); this runs it: megatron
parallel state, model (fresh or from a consolidated checkpoint, resharded to this rank), DDP +
Adam, gradient accumulation, clipping, the WSD / stage lr, per-step metrics, and checkpoints.

Checkpoints are megatron dist-checkpoints (reshard on load: TP=2 -> TP=1, EP=2 -> EP=1) of the model,
the Adam moments and `trainer_state.json` (step, samples consumed: the loader position). They are
written into a temp dir and renamed after all ranks finished (a torn write is never picked up).
Training noise is a function of (seed, step, micro-batch, DP rank), so a resumed run repeats
exactly the computation of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.distributed import finalize_model_grads

from llada_core.checkpoint import load_checkpoint, load_into, save_checkpoint
from llada_core.data.tokenizer import load_tokenizer
from llada_core.model.build import LladaModel
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_io import expected_shapes
from llada_core.parallel.reshard import current_coords, shard_state, unshard_state
from llada_core.parallel.setup import init_parallel
from llada_core.trainer import optim
from llada_core.trainer.config import StageConfig, resolve_model_config
from llada_core.trainer.data import BatchPlan, RowStream
from llada_core.trainer.step import TokenIds, block_size_at, capture_model_call, micro_batch_loss, row_tokens

STATE_FILE = "trainer_state.json"


def _load_sharded(model: LladaModel, path: str, checkpoint: tuple) -> None:
    """This rank's shard of a loaded consolidated checkpoint into the model."""
    ckpt_cfg, full, _, _ = checkpoint
    if ckpt_cfg != model.cfg:
        raise CheckpointError(f"{path}: its model config differs from the stage's model")
    load_into(model, shard_state(full, ckpt_cfg, current_coords()))


class Trainer:
    def __init__(self, cfg: StageConfig):
        self.cfg = cfg
        init_parallel(cfg.layout, seed=cfg.seed)
        self.stream = RowStream(cfg.data, cfg.split, seed=cfg.seed)
        self.ids = TokenIds.from_manifest(self.stream.manifest)
        model_cfg = resolve_model_config(cfg, self.stream.manifest)
        self.model = LladaModel(model_cfg, cfg.layout, dtype=cfg.dtype)
        init = load_checkpoint(cfg.init_checkpoint) if cfg.init_checkpoint else None
        if init:
            _load_sharded(self.model, cfg.init_checkpoint, init)
        self.reference = None
        if cfg.reference_checkpoint:  # DPO: usually the same checkpoint as init, read once
            self.reference = LladaModel(model_cfg, cfg.layout, dtype=cfg.dtype).eval().requires_grad_(False)
            same = cfg.reference_checkpoint == cfg.init_checkpoint
            _load_sharded(self.reference, cfg.reference_checkpoint, init if same else load_checkpoint(cfg.reference_checkpoint))
        self.ddp, self.opt = optim.build_ddp_and_optimizer(self.model, cfg.optim, bf16=cfg.dtype == torch.bfloat16)
        self.dp_rank = ps.get_data_parallel_rank()
        self.plan = BatchPlan(cfg.micro_batch, cfg.grad_accum, ps.get_data_parallel_world_size())
        self.seq_len = int(self.stream.manifest.get("seq_len", 0))
        self.schedule = cfg.schedule.build() if cfg.schedule is not None else None
        self.step = 0

    # -- one optimizer step -------------------------------------------------------------------
    def _lr(self, tokens: int) -> float:
        if self.schedule is not None:
            return self.schedule.lr_at(self.cfg.schedule_offset_tokens + tokens)
        return optim.lr_at(self.cfg.optim, self.step, self.cfg.steps)

    def tokens_seen(self, step: int) -> int:
        return step * self.plan.global_batch * max(self.seq_len, 1)

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        self.model.train()
        self.ddp.zero_grad_buffer()
        self.opt.zero_grad()
        tokens = self.tokens_seen(self.step)
        self._real_tokens = 0  # non-padding tokens of this rank's micro-batches
        if self.cfg.layout.pp > 1:
            losses, extra = self._pipeline_backward(tokens), {}
        else:
            losses, extra = self._micro_batches_backward(tokens)
        balance = self._router_balance()
        finalize_model_grads([self.ddp])
        norm = optim.global_grad_norm(self.ddp)
        optim.clip_grads_(self.ddp, self.cfg.optim.grad_clip, norm)
        lr = self._lr(tokens)
        optim.set_lr(self.opt, lr)
        self.opt.prepare_grads()
        self.opt.step_with_ready_grads()
        loss = torch.stack(losses).mean().reshape(1) if losses else torch.zeros(1)
        if self.cfg.layout.pp > 1:  # only the last stage computed the loss
            dist.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())
        dist.all_reduce(loss, group=ps.get_data_parallel_group())
        self.step += 1
        elapsed = time.perf_counter() - t0
        step_tokens = self._real_tokens * self.plan.dp_size  # estimate: DP ranks read equally many rows
        metrics = {"loss": loss.item() / self.plan.dp_size, "grad_norm": norm, "lr": lr, "step_time": elapsed,
                   "tokens_per_s": step_tokens / elapsed, "samples": self.step * self.plan.global_batch,
                   "router_load_max_over_mean": balance,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.cfg.objective == "cpt":
            metrics["block_size"] = block_size_at(self.cfg, tokens, self.seq_len)
        metrics |= {k: v for k, v in extra.items() if isinstance(v, int | float) and k not in metrics}
        return metrics

    def _micro_batches_backward(self, tokens: int) -> tuple[list[torch.Tensor], dict]:
        """Gradient accumulation without pipeline stages: each micro-batch's mean loss / grad_accum."""
        losses, extra = [], {}
        for micro in range(self.plan.grad_accum):
            positions = self.stream.micro_batch_positions(self.plan, self.step, micro, self.dp_rank)
            rows = self.stream.rows_at(positions)
            self._real_tokens += row_tokens(rows)
            out = micro_batch_loss(self.model, self.reference, self.cfg, rows, positions, self.ids, self.step, tokens)
            (out.loss / self.plan.grad_accum).backward()
            losses.append(out.loss.detach())
            extra = out.metrics
        return losses, extra

    def _pipeline_backward(self, tokens: int) -> list[torch.Tensor]:
        """Forward + backward of all micro-batches through megatron's 1F1B schedule. Every stage reads
        the same micro-batches (only hidden states travel between stages). The objective runs twice
        per micro-batch, unchanged: once to capture the model inputs it builds (first call aborted),
        once on the last stage with the pipeline's logits standing in for the model; its noise is a
        function of the sample positions, so both runs see the same masks. The schedule averages
        the micro-batch losses."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        micro_batches = []
        for micro in range(self.plan.grad_accum):
            positions = self.stream.micro_batch_positions(self.plan, self.step, micro, self.dp_rank)
            rows = self.stream.rows_at(positions)
            self._real_tokens += row_tokens(rows)
            objective = functools.partial(micro_batch_loss, reference=None, cfg=self.cfg, rows=rows, positions=positions,
                                          ids=self.ids, step=self.step, tokens_seen=tokens)
            micro_batches.append((objective, *capture_model_call(objective)))

        def forward_step(data_iterator, model):
            objective, args, kwargs = next(data_iterator)
            output = model(*args, **kwargs)

            def loss_func(logits):
                loss = objective(lambda *a, **k: logits).loss
                return loss, {"loss": loss.detach().clone()}  # the schedule divides `loss` in place

            return output, loss_func

        store = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(micro_batches), model=[self.model],
            num_microbatches=self.plan.grad_accum, seq_length=micro_batches[0][1][0].shape[1],
            micro_batch_size=micro_batches[0][1][0].shape[0], forward_only=False,
        )
        return [d["loss"] for d in store]

    def _router_balance(self) -> float:
        """max / mean tokens per expert over this rank's MoE layers in this step (1.0 = balanced)."""
        worst = 1.0
        for module in self.model.gpt.modules():
            counts = getattr(module, "local_tokens_per_expert", None)
            if counts is not None and counts.sum() > 0:
                worst = max(worst, float(counts.max() / counts.float().mean()))
        return worst

    # -- checkpoints ---------------------------------------------------------------------------
    def _sharded(self, is_loading: bool) -> dict:
        msd = self.model.gpt.sharded_state_dict()
        return {"model": msd, "optimizer": optim.optimizer_sharded_state(self.opt, msd, is_loading)}

    def save_shards(self, directory: str | Path) -> None:
        """Write this rank's part of a checkpoint into `directory` (which may differ per rank, as with
        Ray Train, which merges the workers' files); rank 0 adds the metadata and trainer state."""
        dist_checkpointing.save(self._sharded(is_loading=False), str(directory))
        if dist.get_rank() == 0:
            state = {"step": self.step, "samples": self.step * self.plan.global_batch, "stage": self.cfg.name}
            (Path(directory) / STATE_FILE).write_text(json.dumps(state))
        dist.barrier()

    def save(self, directory: str | Path) -> Path:
        """Checkpoint into a directory shared by all ranks, atomically (temp dir + rename)."""
        final = Path(directory)
        tag = [uuid.uuid4().hex[:8] if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(tag, src=0)
        tmp = final.with_name(f".{final.name}.tmp-{tag[0]}")
        if dist.get_rank() == 0:
            tmp.mkdir(parents=True)
        dist.barrier()
        self.save_shards(tmp)
        if dist.get_rank() == 0:
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        dist.barrier()
        return final

    def load(self, directory: str | Path) -> None:
        directory = Path(directory)
        state = json.loads((directory / STATE_FILE).read_text())
        sharded = self._sharded(is_loading=True)
        loaded = dist_checkpointing.load(sharded, str(directory))
        self.model.gpt.load_state_dict(loaded["model"], strict=True)
        optim.restore_optimizer_step(self.opt, loaded["optimizer"]["step"])
        self.step = int(state["step"])

    def save_consolidated(self, out: str | Path, tokenizer_dir: str | Path) -> None:
        """Gather every rank's shard and write one consolidated checkpoint (for the next stage / HF
        export). Gathers through rank 0's memory: meant for models that fit one host."""
        local = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if not k.endswith("_extra_state")}
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (current_coords(), local))
        if dist.get_rank() == 0:
            full = unshard_state(dict(gathered), self.model.cfg, list(expected_shapes(self.model.cfg)))
            save_checkpoint(out, self.model.cfg, full.items(), load_tokenizer(tokenizer_dir),
                            {"stage": self.cfg.name, "step": self.step})
        dist.barrier()

    # -- the stage -----------------------------------------------------------------------------
    def run(self, checkpoint_root: str | Path, on_metrics: Callable[[int, dict], None] | None = None,
            on_checkpoint: Callable[[Path], None] | None = None) -> list[dict]:
        history = []
        while self.step < self.cfg.steps:
            metrics = self.train_step()
            history.append(metrics)
            if on_metrics:
                on_metrics(self.step, metrics)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                path = self.save(Path(checkpoint_root) / f"step-{self.step:07d}")
                self._prune(Path(checkpoint_root))
                if on_checkpoint:
                    on_checkpoint(path)
        return history

    def _prune(self, root: Path) -> None:
        if dist.get_rank() == 0:
            for old in sorted(root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()


"""The one trainer every stage runs, inside each worker of a group (Ray Train, torchrun or spawn).

A stage declares objective, data, schedule and layout (TrainingConfig); this runs it: megatron
parallel state, model (fresh or from a consolidated checkpoint, resharded to this rank), DDP +
Adam, gradient accumulation, clipping, the WSD / stage lr, per-step metrics, and checkpoints.

Checkpoints are megatron dist-checkpoints (reshard on load: TP=2 -> TP=1, EP=2 -> EP=1) of the model,
the Adam moments and `trainer_state.json` (step, samples consumed: the loader position). They are
written into a temp dir and renamed after all ranks finished (a torn write is never picked up).
Training noise is a function of (seed, step, micro-batch, DP rank), so a resumed run repeats
exactly the computation of an uninterrupted one.
"""

from __future__ import annotations

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

from llada_core import storage
from llada_core.checkpoint import CheckpointReader, copy_into
from llada_core.config import canonical_json
from llada_core.model.build import LladaModel
from llada_core.model.hf_config import CheckpointError
from llada_core.objectives.base import StepContext
from llada_core.objectives.common import to_device
from llada_core.objectives.registry import build_objective
from llada_core.parallel.reshard import current_coords, iter_shard
from llada_core.parallel.setup import init_parallel
from llada_core.trainer import optim
from llada_core.trainer.config import (
    MODEL_CONFIG_FILE,
    STATE_FILE,
    TrainingConfig,
    resolve_model_config,
    training_dtype,
)
from llada_core.trainer.data import BatchPlan, RowStream
from llada_core.trainer.digests import problem, write_digest


def _load_sharded(model: LladaModel, path: str) -> None:
    """This rank's shard of a consolidated checkpoint into the model, reading only that shard."""
    reader = CheckpointReader(path)
    if reader.cfg != model.cfg:
        raise CheckpointError(f"{path}: its model config differs from the stage's model")
    copy_into(model, iter_shard(reader.slice, reader.names(), reader.cfg, current_coords()))


class Trainer:
    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg
        init_parallel(cfg.layout, seed=cfg.seed)
        self.stream = RowStream(cfg.data, cfg.split, seed=cfg.seed)
        special = self.stream.manifest["tokenizer"]["special_tokens"]
        self.mask_id, self.pad_id, self.eos_id = (special[k]["id"] for k in ("mask", "pad", "eos"))
        self.vocab_size = self.stream.manifest["tokenizer"]["vocab_size"]
        self.objective = build_objective(cfg.objective)
        model_cfg = resolve_model_config(cfg, self.stream.manifest)
        dtype = training_dtype(cfg)
        self.model = LladaModel(model_cfg, cfg.layout, dtype=dtype)
        self.device = next(self.model.parameters()).device  # a GPU's under CUDA: batches are built on the CPU
        if cfg.init_checkpoint:
            _load_sharded(self.model, cfg.init_checkpoint)
        self.reference = None
        if self.objective.needs_reference:  # DPO
            self.reference = LladaModel(model_cfg, cfg.layout, dtype=dtype).eval().requires_grad_(False)
            _load_sharded(self.reference, cfg.reference_checkpoint)
        self.ddp, self.opt = optim.build_ddp_and_optimizer(self.model, cfg.optim, bf16=dtype == torch.bfloat16)
        self.dp_rank = ps.get_data_parallel_rank()
        self.plan = BatchPlan(cfg.micro_batch, cfg.grad_accum, ps.get_data_parallel_world_size())
        self.seq_len = int(self.stream.manifest.get("seq_len", 0))
        self.schedule = cfg.schedule.build() if cfg.schedule is not None else None
        self.step = 0  # this node's optimizer steps
        self.step_offset = self.sample_offset = 0  # what the nodes it continues from did
        if cfg.init_state:
            self.continue_from(storage.local_copy(cfg.init_state, committed=True))

    # -- one optimizer step -------------------------------------------------------------------
    def _lr(self, tokens: int) -> float:
        if self.schedule is not None:
            return self.schedule.lr_at(self.cfg.schedule_offset_tokens + tokens)
        return optim.lr_at(self.cfg.optim, self.step, self.cfg.steps)

    def tokens_seen(self, step: int) -> int:
        return step * self.plan.global_batch * max(self.seq_len, 1)

    def _block_size(self, tokens: int) -> int | None:
        if self.schedule is None:
            return None
        return self.schedule.at(self.cfg.schedule_offset_tokens + tokens).block_size

    def _micro_batches(self, tokens: int) -> list:
        """This rank's micro-batches of the step, as the objective's batches (noise drawn)."""
        batches = []
        for micro in range(self.plan.grad_accum):
            positions = [self.sample_offset + p
                         for p in self.stream.micro_batch_positions(self.plan, self.step, micro, self.dp_rank)]
            rows = self.stream.rows_at(positions)
            self._real_tokens += self.objective.real_tokens(rows)
            ctx = StepContext(self.mask_id, self.pad_id, self.eos_id, self.cfg.seed, self.step_offset + self.step,
                              positions, self._block_size(tokens), self.vocab_size)
            batches.append(to_device(self.objective.batch(rows, ctx), self.device))
        return batches

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        self.model.train()
        self.ddp.zero_grad_buffer()
        self.opt.zero_grad()
        tokens = self.tokens_seen(self.step)
        self._real_tokens = 0  # non-padding tokens of this rank's micro-batches
        batches = self._micro_batches(tokens)
        if self.cfg.layout.pp > 1:
            losses, extra = self._pipeline_backward(batches), {}
        else:
            losses, extra = self._micro_batches_backward(batches)
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
                   "tokens_per_s": step_tokens / elapsed, "samples": self.samples(),
                   "router_load_max_over_mean": balance,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.schedule is not None:
            metrics["block_size"] = self._block_size(tokens)
        metrics |= {k: v for k, v in extra.items() if isinstance(v, int | float) and k not in metrics}
        return metrics

    def _micro_batches_backward(self, batches: list) -> tuple[list[torch.Tensor], dict]:
        """Gradient accumulation without pipeline stages: each micro-batch's mean loss / grad_accum."""
        losses, extra = [], {}
        for batch in batches:
            out = self.objective.forward_loss(self.model, self.reference, batch)
            (out.loss / self.plan.grad_accum).backward()
            losses.append(out.loss.detach())
            extra = out.metrics
        return losses, extra

    def _pipeline_backward(self, batches: list) -> list[torch.Tensor]:
        """Forward + backward of all micro-batches through megatron's 1F1B schedule. Every stage builds
        the same batches (only hidden states travel between stages): the first stage feeds the
        objective's model inputs, the last computes its loss from the pipeline's logits. The schedule
        averages the micro-batch losses."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        objective = self.objective

        def forward_step(data_iterator, model):
            batch = next(data_iterator)
            output = model(**objective.model_inputs(batch))

            def loss_func(logits):
                loss = objective.loss(logits, batch).loss
                return loss, {"loss": loss.detach().clone()}  # the schedule divides `loss` in place

            return output, loss_func

        first = objective.model_inputs(batches[0])["input_ids"]
        store = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(batches), model=[self.model],
            num_microbatches=self.plan.grad_accum, seq_length=first.shape[1],
            micro_batch_size=first.shape[0], forward_only=False,
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
        # one key per layer (megatron stacks homogeneous layers into one [num_layers, ...] tensor): a
        # consolidating reader then holds one layer's tensor at a time, not the whole stack
        msd = self.model.gpt.sharded_state_dict(metadata={"non_homogeneous_layers": True})
        return {"model": msd, "optimizer": optim.optimizer_sharded_state(self.opt, msd, is_loading)}

    def save_shards(self, directory: str | Path, extra: dict[str, str] | None = None) -> None:
        """Write this rank's part of a checkpoint into `directory` (which may differ per rank, as with
        Ray Train, which merges the workers' files); rank 0 adds the metadata, the trainer state and
        `extra` files; every rank's per-file digest comes last (llada_core.trainer.digests)."""
        dist_checkpointing.save(self._sharded(is_loading=False), str(directory))
        if dist.get_rank() == 0:
            state = {"step": self.step, "samples": self.samples(), "stage": self.cfg.name,
                     "step_offset": self.step_offset, "sample_offset": self.sample_offset,
                     "tokenizer_digest": self.stream.manifest["tokenizer"]["digest"]}
            files = {STATE_FILE: json.dumps(state), MODEL_CONFIG_FILE: canonical_json(self.model.cfg)}
            for name, text in (files | (extra or {})).items():
                (Path(directory) / name).write_text(text, encoding="utf-8")
        dist.barrier()
        write_digest(directory, dist.get_rank(), dist.get_world_size())
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
        if reason := problem(directory):
            raise CheckpointError(f"checkpoint {directory} cannot be used: {reason}")
        state = json.loads((directory / STATE_FILE).read_text())
        sharded = self._sharded(is_loading=True)
        loaded = dist_checkpointing.load(sharded, str(directory))
        self.model.gpt.load_state_dict(loaded["model"], strict=True)
        optim.restore_optimizer_step(self.opt, loaded["optimizer"]["step"])
        self.step = int(state["step"])
        self.step_offset, self.sample_offset = int(state.get("step_offset", 0)), int(state.get("sample_offset", 0))

    def continue_from(self, directory: str | Path) -> None:
        """Start this node where a previous node's training checkpoint ended: weights, Adam moments and
        step count, data position and the step count objectives see (the node boundary is a checkpoint,
        not a restart). This node's own steps count from 0."""
        self.load(directory)
        samples = json.loads((Path(directory) / STATE_FILE).read_text())["samples"]
        self.step_offset, self.sample_offset, self.step = self.step_offset + self.step, samples, 0

    def samples(self) -> int:
        """Samples consumed, including the nodes this one continues from."""
        return self.sample_offset + self.step * self.plan.global_batch

    # -- the stage -----------------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        return self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps

    def run(self, save: Callable[[Trainer, dict], None], on_metrics: Callable[[int, dict], None] | None = None,
            on_step: Callable[[Trainer, dict], None] | None = None) -> list[dict]:
        """The training loop of every stage (Ray Train workers and spawned test groups alike): steps
        until cfg.steps, `save(trainer, metrics)` at each checkpoint step. `on_step(trainer, metrics)`
        runs first after every step (tests inject faults there)."""
        history = []
        while self.step < self.cfg.steps:
            metrics = self.train_step() | {"step": self.step}
            history.append(metrics)
            if on_step:
                on_step(self, metrics)
            if on_metrics:
                on_metrics(self.step, metrics)
            if self.checkpoint_due():
                save(self, metrics)
        return history


def local_checkpoints(root: str | Path) -> Callable[[Trainer, dict], None]:
    """`save` for Trainer.run: step-NNNNNNN checkpoints under a directory all ranks share, the newest
    `keep_checkpoints` kept."""
    root = Path(root)

    def save(trainer: Trainer, metrics: dict) -> None:
        trainer.save(root / f"step-{trainer.step:07d}")
        if dist.get_rank() == 0:
            for old in sorted(root.glob("step-*"))[: -trainer.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    return save

"""Shared by the trainer tests and their spawned workers (must be importable in a fresh process)."""

import json
import os

import numpy as np
import pyarrow as pa

from llada_core.data.shards import DatasetWriter
from llada_core.data.tokenizer import train_bpe

SEQ = 32


def make_dataset(root: str, rows: int = 96) -> str:
    tok = train_bpe(iter(["packed rows for the trainer test " * 4] * 10), 300)
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.int32()))])
    w = DatasetWriter(os.path.join(root, "ds"), schema, rows_per_shard=32)
    w.open()
    rng = np.random.default_rng(0)
    for _ in range(rows):
        cut = int(rng.integers(4, SEQ - 4))
        w.add("train", input_ids=rng.integers(8, tok.vocab_size, SEQ).astype(np.int32),
              doc_ids=np.array([0] * cut + [1] * (SEQ - cut), np.int32))
    for name, data in tok.files().items():
        w.write_file(f"tokenizer/{name}", data)
    special = {r: {"token": tok.special[r], "id": tok.id_of(r)} for r in tok.special}
    w.commit({"kind": "pretrain", "seq_len": SEQ, "tokenizer": {"digest": tok.digest, "vocab_size": tok.vocab_size,
                                                                  "special_tokens": special}})
    return os.path.join(root, "ds")


def stage_dict(data: str, objective: str | dict = "cpt", **over) -> dict:
    """A stage config; `objective` is a kind (block size 8) or a whole objective config."""
    if isinstance(objective, str):
        objective = {"kind": objective, "block_size": 8}
    base = {"name": "cpt-test", "objective": objective, "data": data, "micro_batch": 4, "grad_accum": 2, "steps": 3,
            "optim": {"lr": 1e-3, "warmup_steps": 0, "decay": "constant", "grad_clip": 0.5}, "checkpoint_every": 100}
    return json.loads(json.dumps(base | over))


def run_worker(rank: int, world: int, port: int, stage: dict, out: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from llada_core.trainer.config import TrainingConfig
    from llada_core.trainer.loop import Trainer, local_checkpoints

    trainer = Trainer(TrainingConfig.model_validate(stage))
    if mode == "resume":  # then the loaded (resharded) weights, saved again under this layout
        trainer.load(os.path.join(out, "ckpt-in"))
        trainer.save(os.path.join(out, "ckpt-loaded"))
    history = trainer.run(local_checkpoints(os.path.join(out, f"ckpt-{world}-{rank}")))
    if mode == "save":
        trainer.save(os.path.join(out, "ckpt-out"))
        gathered_oracle(trainer, os.path.join(out, "gathered-saved.safetensors"))
    if rank == 0:
        with open(os.path.join(out, f"history-{mode}.json"), "w") as fh:
            json.dump(history, fh)
    dist.barrier()
    dist.destroy_process_group()


def gathered_oracle(trainer, path: str) -> None:
    """The pre-streaming consolidation, kept as the tests' oracle: every rank's shard gathered into
    rank 0's memory and joined by the resharding rules (llada_core.parallel.reshard)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from llada_core.model.hf_io import expected_shapes
    from llada_core.parallel.reshard import current_coords, unshard_state

    local = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items() if not k.endswith("_extra_state")}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (current_coords(), local))
    if dist.get_rank() == 0:
        full = unshard_state(dict(gathered), trainer.model.cfg, list(expected_shapes(trainer.model.cfg)))
        save_file({k: v.contiguous() for k, v in full.items()}, path)


def make_instruct_dataset(root: str, kind: str, pretrain: str, n: int = 24) -> str:
    """SFT or DPO rows built with the chat template and the pretraining dataset's tokenizer."""
    from llada_core.data.chat import encode_example, encode_prompt, encode_response
    from llada_core.data.tokenizer import load_tokenizer
    from stages.prepare_instruct import schema_of

    tok = load_tokenizer(os.path.join(pretrain, "tokenizer"))
    w = DatasetWriter(os.path.join(root, kind), schema_of(kind), rows_per_shard=16)
    w.open()
    for i in range(n):
        prompt, answer = f"Add: {i}+{i}=", str(2 * i)
        if kind == "sft":
            ids, plen = encode_example(tok, [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": answer}])
            w.add("train", input_ids=ids, prompt_len=plen)
        else:
            p = encode_prompt(tok, [{"role": "user", "content": prompt}])
            w.add("train", chosen_ids=p + encode_response(tok, answer),
                  rejected_ids=p + encode_response(tok, answer + "1"), prompt_len=len(p))
    special = {r: {"token": tok.special[r], "id": tok.id_of(r)} for r in tok.special}
    w.commit({"kind": kind,
              "tokenizer": {"digest": tok.digest, "vocab_size": tok.vocab_size, "special_tokens": special}})
    return os.path.join(root, kind)

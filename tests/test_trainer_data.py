import numpy as np
import pyarrow as pa
import pytest

from llada_core.data.shards import DatasetWriter
from llada_core.data.sources import DataError
from llada_core.trainer.data import BatchPlan, RowStream

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_ids", pa.list_(pa.int32()))])


def dataset(tmp_path, rows=50, per_shard=7):
    w = DatasetWriter(str(tmp_path / "ds"), SCHEMA, per_shard)
    w.open()
    for i in range(rows):
        w.add("train", input_ids=np.array([i, i], np.int32), doc_ids=np.zeros(2, np.int32))
    w.commit({"format": "test"})
    return str(tmp_path / "ds")


def ids(rows):
    return [r["input_ids"][0] for r in rows]


def test_each_epoch_covers_every_row_once_across_dp_ranks(tmp_path):
    stream = RowStream(dataset(tmp_path), "train", seed=3)
    plan = BatchPlan(micro_batch=2, grad_accum=3, dp_size=2)  # 12 samples per step
    seen = []
    for step in range(stream.rows * 2 // plan.global_batch + 1):
        for micro in range(plan.grad_accum):
            for rank in range(plan.dp_size):
                seen += stream.micro_batch_positions(plan, step, micro, rank)
    assert sorted(seen) == list(range(len(seen)))  # positions: no repeat, no gap
    first_epoch = ids(stream.rows_at(list(range(50))))
    assert sorted(first_epoch) == list(range(50)) and first_epoch != list(range(50))  # shuffled, complete
    second = ids(stream.rows_at(list(range(50, 100))))
    assert sorted(second) == list(range(50)) and second != first_epoch


def test_resume_sees_exactly_the_same_samples(tmp_path):
    uri = dataset(tmp_path)
    plan = BatchPlan(micro_batch=3, grad_accum=2, dp_size=2)
    full = RowStream(uri, "train", seed=1)
    uninterrupted = [ids(full.micro_batch(plan, s, m, r)) for s in range(8) for m in range(2) for r in range(2)]
    resumed = RowStream(uri, "train", seed=1)  # a new process after a restart at step 5
    after = [ids(resumed.micro_batch(plan, s, m, r)) for s in range(5, 8) for m in range(2) for r in range(2)]
    assert after == uninterrupted[5 * 4 :]
    other_seed = RowStream(uri, "train", seed=2)
    assert ids(other_seed.rows_at(list(range(50)))) != ids(full.rows_at(list(range(50))))


def test_corrupted_shard_and_missing_split(tmp_path):
    uri = dataset(tmp_path)
    stream = RowStream(uri, "train")
    shard = tmp_path / "ds" / stream.shards[0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 does not match"):
        stream.rows_at(list(range(50)))
    with pytest.raises(DataError, match="has no 'val' rows"):
        RowStream(uri, "val")


def test_precision_choice(tmp_path):
    import torch

    from llada_core.config import load_config
    from llada_core.trainer.config import TrainingConfig, training_dtype

    base = {"name": "s", "objective": {"kind": "cpt"}, "data": str(tmp_path), "steps": 1}
    assert training_dtype(load_config(TrainingConfig, values=base)) == (
        torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    # a config validates the same on any machine
    bf16 = load_config(TrainingConfig, values=base | {"precision": "bf16"})
    if not torch.cuda.is_available():  # and where the stage runs, a machine without CUDA refuses it
        with pytest.raises(ValueError, match="precision: bf16 training needs a GPU"):
            training_dtype(bf16)


def test_pipeline_parallel_is_refused_at_load_for_objectives_without_it(tmp_path):
    from llada_core.config import ConfigError, load_config
    from llada_core.trainer.config import TrainingConfig

    base = {"name": "s", "data": str(tmp_path), "steps": 1, "layout": {"world_size": 2, "pp": 2}}
    for objective in ("ar", "cpt", "sft", "cap"):
        assert load_config(TrainingConfig, values=base | {"objective": {"kind": objective}}).layout.pp == 2
    with pytest.raises(ConfigError, match=r"key 'layout': pipeline parallelism \(pp=2\) is not implemented for DPO"):
        load_config(TrainingConfig, values=base | {"objective": {"kind": "dpo"}, "reference_checkpoint": "r"})

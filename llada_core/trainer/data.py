"""Deterministic, resumable reading of a prepared dataset by data-parallel rank.

The sample stream is a pure function of (seed, global position):
  epoch e = position // rows; within an epoch, shards in a seeded order, rows of each shard in a
  seeded order (consecutive positions stay in one shard, so a 2-shard cache suffices).
Global step s consumes positions [s*G, (s+1)*G) with G = micro_batch * grad_accum * dp; micro-batch
m of rank r takes the slice starting at s*G + (m*dp + r)*micro_batch. The loader state is the number
of samples consumed, saved in every checkpoint, so a resumed run sees exactly the samples an
uninterrupted run would: no repeat, no skip.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llada_core import storage
from llada_core.data.shards import read_manifest
from llada_core.data.sources import DataError


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int
    grad_accum: int
    dp_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp_size


class RowStream:
    def __init__(self, uri: str, split: str, seed: int = 0, cache_shards: int = 2):
        self.uri, self.split, self.seed = uri, split, seed
        self.manifest = read_manifest(uri)
        self.shards = self.manifest["shards"].get(split, [])
        if not self.shards:
            raise DataError(f"{uri} has no '{split}' rows")
        self.sizes = np.array([s["rows"] for s in self.shards])
        self.rows = int(self.sizes.sum())
        self._fs, self._path = storage.resolve(uri)
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._cache_shards = cache_shards
        self._epoch_plan: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._row_perm: tuple[tuple[int, int], np.ndarray] | None = None

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, start offset of each shard in that order) for an epoch."""
        if epoch not in self._epoch_plan:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.shards))
            starts = np.concatenate([[0], np.cumsum(self.sizes[order])[:-1]])
            self._epoch_plan = {epoch: (order, starts)}
        return self._epoch_plan[epoch]

    def locate(self, position: int) -> tuple[int, int]:
        """(shard index, row in shard) of a global sample position."""
        epoch, offset = divmod(position, self.rows)
        order, starts = self._plan(epoch)
        k = int(np.searchsorted(starts, offset, side="right") - 1)
        shard = int(order[k])
        if self._row_perm is None or self._row_perm[0] != (epoch, shard):
            perm = np.random.default_rng([self.seed, epoch, shard]).permutation(int(self.sizes[shard]))
            self._row_perm = ((epoch, shard), perm)
        return shard, int(self._row_perm[1][offset - starts[k]])

    def _table(self, shard: int) -> pa.Table:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        info = self.shards[shard]
        data = storage.read_bytes(self._fs, f"{self._path}/{info['path']}")
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise DataError(f"{self.uri}/{info['path']}: sha256 does not match the manifest (corrupted shard)")
        table = pq.read_table(pa.BufferReader(data))
        self._cache[shard] = table
        if len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return table

    def rows_at(self, positions: list[int]) -> list[dict]:
        out = []
        for p in positions:
            shard, row = self.locate(p)
            out.append(self._table(shard).slice(row, 1).to_pylist()[0])
        return out

    def micro_batch_positions(self, plan: BatchPlan, step: int, micro: int, dp_rank: int) -> list[int]:
        start = step * plan.global_batch + (micro * plan.dp_size + dp_rank) * plan.micro_batch
        return list(range(start, start + plan.micro_batch))

    def micro_batch(self, plan: BatchPlan, step: int, micro: int, dp_rank: int) -> list[dict]:
        return self.rows_at(self.micro_batch_positions(plan, step, micro, dp_rank))

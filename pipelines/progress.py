"""Long nodes' progress on the driver's console: step / total, loss, tokens/s and an ETA.

Nodes report through a Ray queue (they run anywhere on the cluster); the driver drains it while it
waits. On a terminal each running node has one line that updates in place; otherwise (CI logs, a
pipe) a plain line when a node crosses another tenth of its steps or PLAIN_EVERY_S have passed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

PLAIN_EVERY_S = 30.0


def describe(node: str, step: int, total: int, values: dict, eta_s: float | None) -> str:
    parts = [f"[{node}] step {step}/{total}"]
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "tokens_per_s" in values:
        parts.append(f"{values['tokens_per_s']:,.0f} tok/s")
    if eta_s is not None:
        parts.append(f"ETA {int(eta_s // 60)}m{int(eta_s % 60):02d}s")
    return "  ".join(parts)


class Progress:
    def __init__(self, say: Callable[[str], None], tty: bool | None = None, clock=time.monotonic):
        self.say, self.clock = say, clock
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.first: dict[str, tuple[float, int]] = {}  # node -> (time, step) of its first report
        self.shown: dict[str, tuple[float, int]] = {}  # node -> (time, tenth) of its last plain line

    def update(self, node: str, step: int, total: int, values: dict) -> None:
        now = self.clock()
        t0, s0 = self.first.setdefault(node, (now, step))
        eta = (total - step) * (now - t0) / (step - s0) if step > s0 else None
        line = describe(node, step, total, values, eta)
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
            return
        tenth = 10 * step // max(total, 1)
        last_t, last_tenth = self.shown.get(node, (float("-inf"), -1))
        if tenth > last_tenth or now - last_t >= PLAIN_EVERY_S:
            self.shown[node] = (now, tenth)
            self.say(line)

    def drain(self, queue) -> None:
        while queue is not None and not queue.empty():
            self.update(*queue.get_nowait())

    def finished(self, node: str) -> None:
        if self.tty and node in self.first:
            sys.stderr.write("\r\033[K")
        self.first.pop(node, None)
        self.shown.pop(node, None)

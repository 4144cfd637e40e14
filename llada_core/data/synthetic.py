"""Small verifiable instruction tasks for the embedded demo: SFT examples, DPO pairs, eval sets.

Each prompt is a task name and ITEMS space-separated symbols; the answer has as many symbols,
computed from them. Every symbol, with its leading space, is one token: `SYMBOLS` is what the
recipe asks the tokenizer to keep whole (a byte-level BPE on the stdlib left " 9" in two pieces),
so symbol i of the answer sits a fixed distance after symbol i of the prompt. Two kinds, so that
decoding in parallel has something to show and a limit to hit:

- independent positions: every answer symbol is a function of ONE prompt symbol, the one at the
  same index (`uppercase`: a -> A; `next`: the next letter, z -> a). A denoiser can be sure of all
  of them at once: these are the tasks many tokens per forward are for.
- dependent positions: answer symbol i follows from symbol i - 1 of the answer and prompt symbol i
  (`parity`: running XOR of bits; `running_sum`: running sum of bits mod 10, i.e. the ones counted
  so far). Left to right each step is a small table; in parallel a position is only determined once
  the one before it is, so a calibrated model cannot pass a high threshold for many positions at once.

Why these (measured: SFT from scratch, 1,200 steps of 8 examples, exact match on held-out prompts):
with RoPE alone a position finds its source by a relative offset. At a fixed answer length every
source is a fixed offset back (prompt symbol i is n + 2 tokens before answer symbol i), which the
4-layer tiny model learned in ~600 steps (uppercase, next: 1.00). At 8-16 symbols that offset
depends on the count, and for `reverse` (source 2i + 3 back) on the position: per-symbol accuracy
stayed at 0.03. A running sum of digits gives no signal from either input alone (like XOR): 0.20
per symbol (chance 0.11). Over bits the previous sum alone narrows the answer to two values, and it
was learned (0.78 / 0.90 in two runs), as was parity (0.89 / 1.00 in two runs, 0.00 in a third).

Every task has one exactly checkable answer and a plausible wrong one (one symbol changed), the DPO
`rejected` response. Generation is deterministic in the seed; the split is a hash of the prompt,
so no prompt is in two splits. Copying the input is never right (checked at generation).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate, product
from pathlib import Path

# answer length range, inclusive (fixed by default, see above; 10: prompt + answer fit one block of 32)
ITEMS = (10, 10)
LETTERS, DIGITS, BITS = string.ascii_lowercase, string.digits, "01"


@dataclass(frozen=True)
class Task:
    head: str  # the prompt starts "<head>: "
    symbols: str  # the prompt's alphabet
    answers: str  # the answer's alphabet
    rule: Callable[[list[str]], list[str]]
    independent: bool  # answer symbol i depends on prompt symbol i alone


def _running(op: Callable[[int, int], int]) -> Callable[[list[str]], list[str]]:
    return lambda xs: [str(v) for v in accumulate((int(x) for x in xs), op)]


RULES: dict[str, Task] = {
    "uppercase": Task("Uppercase", LETTERS, LETTERS.upper(), lambda xs: [x.upper() for x in xs], True),
    "next": Task("Next", LETTERS, LETTERS, lambda xs: [LETTERS[(LETTERS.index(x) + 1) % 26] for x in xs], True),
    "parity": Task("Parity", BITS, BITS, _running(lambda a, b: a ^ b), False),
    "running_sum": Task("Running sum", BITS, DIGITS, _running(lambda a, b: (a + b) % 10), False),
}
TASKS = {name: t.head for name, t in RULES.items()}
INDEPENDENT = frozenset(name for name, t in RULES.items() if t.independent)
SYMBOLS = tuple(sorted({" " + c for t in RULES.values() for c in t.symbols + t.answers}))
_BY_HEAD = {t.head: t for t in RULES.values()}


def _wrong(task: Task, good: list[str], rng: random.Random) -> list[str]:
    i = rng.randrange(len(good))
    return good[:i] + [rng.choice([a for a in task.answers if a != good[i]])] + good[i + 1 :]


def _draw(name: str, rng: random.Random, items: tuple[int, int]) -> tuple[str, str, str] | None:
    task = RULES[name]
    xs = [rng.choice(task.symbols) for _ in range(rng.randint(*items))]
    good = task.rule(xs)
    if good == xs:  # echoing the input would be right: not a useful problem
        return None
    return f"{task.head}: {' '.join(xs)}", " " + " ".join(good), " " + " ".join(_wrong(task, good, rng))


def check_drawable(n: int, items: tuple[int, int]) -> None:
    """ValueError unless `generate` can draw n distinct problems at these lengths: the tasks take
    turns, so the task with the fewest distinct prompts decides (2**10 for bits at 10 symbols)."""
    if not 1 <= items[0] <= items[1]:
        raise ValueError(f"items: {list(items)} is not a range of answer lengths (1 <= min <= max)")
    fewest, task = min((_distinct(t, items), name) for name, t in RULES.items())
    if n > fewest * len(RULES):
        raise ValueError(f"n: {n} distinct problems, but at {items[0]}-{items[1]} symbols `{task}` has only "
                         f"{fewest} distinct prompts and the tasks take turns: at most {fewest * len(RULES)}")


def _distinct(task: Task, items: tuple[int, int]) -> int:
    count = sum(len(task.symbols) ** k for k in range(items[0], items[1] + 1))
    if count > 1 << 16:  # the few prompts whose answer echoes them do not matter here
        return count
    return sum(task.rule(list(xs)) != list(xs) for k in range(items[0], items[1] + 1)
               for xs in product(task.symbols, repeat=k))


def check_answer(prompt: str, answer: str) -> bool:
    """Independent checker: recomputes the answer from the prompt alone."""
    head, _, body = prompt.partition(": ")
    if head not in _BY_HEAD:
        raise ValueError(f"unknown task prompt: {prompt!r}")
    return answer.strip().split(" ") == _BY_HEAD[head].rule(body.split(" "))


def _split_of(prompt: str, seed: int, eval_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_fraction else "train"


def generate(n: int, seed: int = 0, eval_fraction: float = 0.1,
             items: tuple[int, int] = ITEMS) -> dict[str, list[dict]]:
    """n distinct problems, round-robin over TASKS, split into train/eval by prompt hash."""
    check_drawable(n, items)
    rng = random.Random(seed)
    names = sorted(TASKS)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"cannot draw {n} distinct problems (got {len(seen)})")
        name = names[len(seen) % len(names)]
        drawn = _draw(name, rng, items)
        if drawn is None or drawn[0] in seen:
            continue
        prompt, good, bad = drawn
        seen.add(prompt)
        row = {"task": name, "prompt": prompt, "response": good, "rejected": bad}
        out[_split_of(prompt, seed, eval_fraction)].append(row)
    return out


def write_task_files(out_dir: str | Path, n: int, seed: int = 0, eval_fraction: float = 0.1,
                     items: tuple[int, int] = ITEMS) -> dict[str, str]:
    """sft_{train,eval}.jsonl (prompt/response) and dpo_{train,eval}.jsonl (prompt/chosen/rejected)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in generate(n, seed, eval_fraction, items).items():
        sft = [{"task": r["task"], "prompt": r["prompt"], "response": r["response"]} for r in rows]
        dpo = [{"task": r["task"], "prompt": r["prompt"], "chosen": r["response"], "rejected": r["rejected"]}
               for r in rows]
        for kind, records in (("sft", sft), ("dpo", dpo)):
            path = out / f"{kind}_{split}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
            tmp.replace(path)
            files[f"{kind}_{split}"] = str(path)
    return files

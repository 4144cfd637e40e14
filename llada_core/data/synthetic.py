"""Small verifiable instruction tasks for the embedded demo: SFT examples, DPO pairs, eval sets.

Each prompt is a task name and 8-16 space-separated symbols (single tokens for a byte-level BPE;
answers keep the leading space, so a symbol is the same token in prompt and answer); the answer has
as many symbols, computed from them. Two kinds, so that decoding in parallel has something to show
and a limit to hit:

- independent positions: every answer symbol is a function of ONE prompt symbol, known without the
  rest of the answer (`uppercase`: a lookup; `reverse`: a copy from the mirrored position). A
  denoiser can be sure of all of them at once: these are the tasks many tokens per forward are for.
- dependent positions: answer symbol i follows from symbol i - 1 of the answer and prompt symbol i
  (`parity`: running XOR of bits; `running_sum`: running sum of digits mod 10). Left to right each
  step is a small table; in parallel a position is only determined once the one before it is, so a
  calibrated model cannot pass a high threshold for many positions at once.

Every task has one exactly checkable answer and a plausible wrong one (two adjacent symbols swapped
for `reverse`, otherwise one symbol wrong), the DPO `rejected` response. Generation is deterministic
in the seed; the split is a hash of the prompt, so no prompt is in two splits. Copying the input is
never right (checked at generation).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

ITEMS = (8, 16)  # answer length range, inclusive
LETTERS, DIGITS = string.ascii_lowercase, string.digits


def _running(op: Callable[[int, int], int]) -> Callable[[list[str]], list[str]]:
    return lambda xs: [str(v) for v in accumulate((int(x) for x in xs), op)]


# name -> (prompt head, alphabet of the prompt symbols, the answer from the symbols, positions independent)
RULES: dict[str, tuple[str, str, Callable[[list[str]], list[str]], bool]] = {
    "uppercase": ("Uppercase", LETTERS, lambda xs: [x.upper() for x in xs], True),
    "reverse": ("Reverse", LETTERS + DIGITS, lambda xs: xs[::-1], True),
    "parity": ("Parity", "01", _running(lambda a, b: a ^ b), False),
    "running_sum": ("Running sum", DIGITS, _running(lambda a, b: (a + b) % 10), False),
}
TASKS = {name: head for name, (head, *_) in RULES.items()}
INDEPENDENT = frozenset(name for name, rule in RULES.items() if rule[3])
_BY_HEAD = {head: rule for head, *rule in RULES.values()}


def _wrong(name: str, good: list[str], rng: random.Random) -> list[str] | None:
    if name == "reverse":
        spots = [i for i in range(len(good) - 1) if good[i] != good[i + 1]]
        if not spots:
            return None
        i = rng.choice(spots)
        return good[:i] + [good[i + 1], good[i]] + good[i + 2 :]
    alphabet = {"uppercase": LETTERS.upper(), "parity": "01", "running_sum": DIGITS}[name]
    i = rng.randrange(len(good))
    return good[:i] + [rng.choice([a for a in alphabet if a != good[i]])] + good[i + 1 :]


def _draw(name: str, rng: random.Random, items: tuple[int, int]) -> tuple[str, str, str] | None:
    head, alphabet, rule, _ = RULES[name]
    xs = [rng.choice(alphabet) for _ in range(rng.randint(*items))]
    good = rule(xs)
    if good == xs:  # echoing the input would be right: not a useful problem
        return None
    bad = _wrong(name, good, rng)
    if bad is None or bad == good:
        return None
    return f"{head}: {' '.join(xs)}", " " + " ".join(good), " " + " ".join(bad)


def check_answer(prompt: str, answer: str) -> bool:
    """Independent checker: recomputes the answer from the prompt alone."""
    head, _, body = prompt.partition(": ")
    if head not in _BY_HEAD:
        raise ValueError(f"unknown task prompt: {prompt!r}")
    return answer.strip().split(" ") == _BY_HEAD[head][1](body.split(" "))


def _split_of(prompt: str, seed: int, eval_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_fraction else "train"


def generate(n: int, seed: int = 0, eval_fraction: float = 0.1,
             items: tuple[int, int] = ITEMS) -> dict[str, list[dict]]:
    """n distinct problems, round-robin over TASKS, split into train/eval by prompt hash."""
    if not 1 <= items[0] <= items[1]:
        raise ValueError(f"items: {items} is not a range of answer lengths (min <= max, both >= 1)")
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

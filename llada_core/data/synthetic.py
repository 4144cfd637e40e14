"""Small verifiable instruction tasks for the embedded demo: SFT examples, DPO pairs, eval sets.

Each prompt is a task name and ITEMS space-separated symbols (single tokens for a byte-level BPE);
the answer is ITEMS symbols computed from them: reversed, upper-cased, sorted, or each letter's
successor. Sized for what a 2.6M-parameter model learns in a few CPU minutes: answers of a fixed
length, each symbol a lookup or a positional copy of one prompt symbol (the earlier multi-token-word
and 4-digit-addition tasks stayed at 0% after 450 SFT steps). Every task has one exactly checkable
answer and a plausible wrong one (two adjacent symbols swapped, or one symbol left untransformed),
used as the DPO `rejected` response. Generation is deterministic in the seed; the split is a hash of
the prompt, so no prompt is in two splits. Copying the input is never right (checked at generation).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

ITEMS = 4
LETTERS, DIGITS = string.ascii_lowercase, string.digits


def _successor(x: str) -> str:
    return chr(ord(x) + 1)


# head -> (alphabet the prompt symbols come from, the answer as a function of the symbols)
RULES: dict[str, tuple[str, Callable[[list[str]], list[str]]]] = {
    "Reverse": (LETTERS + DIGITS, lambda xs: xs[::-1]),
    "Uppercase": (LETTERS, lambda xs: [x.upper() for x in xs]),
    "Sort": (DIGITS, sorted),
    "Next letter": (LETTERS[:-1], lambda xs: [_successor(x) for x in xs]),
}
# name -> prompt head
TASKS = {"reverse": "Reverse", "uppercase": "Uppercase", "sort": "Sort", "next_letter": "Next letter"}


def _adjacent_swap(good: list[str], rng: random.Random) -> list[str] | None:
    spots = [i for i in range(len(good) - 1) if good[i] != good[i + 1]]
    if not spots:
        return None
    i = rng.choice(spots)
    return good[:i] + [good[i + 1], good[i]] + good[i + 2 :]


def _draw(head: str, rng: random.Random) -> tuple[str, str, str] | None:
    alphabet, rule = RULES[head]
    xs = [rng.choice(alphabet) for _ in range(ITEMS)]
    good = rule(xs)
    if good == xs:  # echoing the input would be right: not a useful problem
        return None
    if head in ("Reverse", "Sort"):
        bad = _adjacent_swap(good, rng)
    else:  # one symbol left as it was in the prompt
        i = rng.randrange(ITEMS)
        bad = good[:i] + [xs[i]] + good[i + 1 :]
    if bad is None or bad == good:
        return None
    # answers keep the symbols' leading space: each symbol is then one and the same token in prompt and answer
    return f"{head}: {' '.join(xs)}", " " + " ".join(good), " " + " ".join(bad)


def check_answer(prompt: str, answer: str) -> bool:
    """Independent checker: recomputes the answer from the prompt alone."""
    head, _, body = prompt.partition(": ")
    if head not in RULES:
        raise ValueError(f"unknown task prompt: {prompt!r}")
    return answer.strip().split(" ") == RULES[head][1](body.split(" "))


def _split_of(prompt: str, seed: int, eval_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_fraction else "train"


def generate(n: int, seed: int = 0, eval_fraction: float = 0.1) -> dict[str, list[dict]]:
    """n distinct problems, round-robin over TASKS, split into train/eval by prompt hash."""
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
        drawn = _draw(TASKS[name], rng)
        if drawn is None or drawn[0] in seen:
            continue
        prompt, good, bad = drawn
        seen.add(prompt)
        row = {"task": name, "prompt": prompt, "response": good, "rejected": bad}
        out[_split_of(prompt, seed, eval_fraction)].append(row)
    return out


def write_task_files(out_dir: str | Path, n: int, seed: int = 0, eval_fraction: float = 0.1) -> dict[str, str]:
    """sft_{train,eval}.jsonl (prompt/response) and dpo_{train,eval}.jsonl (prompt/chosen/rejected)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in generate(n, seed, eval_fraction).items():
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

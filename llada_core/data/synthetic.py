"""Small verifiable instruction tasks for the embedded demo: SFT examples, DPO pairs, eval sets.

Every task has one exactly checkable answer and a plausible wrong answer (a one-digit slip, an
adjacent swap, a misplaced word, a missed letter) used as the DPO `rejected` response. Generation is
deterministic in the seed; the split is a hash of the prompt, so no prompt is in two splits.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

WORDS = (
    "apple river stone cloud green tiger lamp music paper orange silver winter garden rocket "
    "pencil window forest candle yellow purple planet bridge castle dragon island jungle ladder "
    "marble needle ocean pillow rabbit saddle tunnel violin wagon zebra anchor basket cactus "
    "desert engine falcon glacier harbor"
).split()


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 9999), rng.randint(10, 9999)
    good = str(a + b)
    pos = rng.randrange(len(good))
    digit = str((int(good[pos]) + rng.randint(1, 9)) % 10)
    if pos == 0 and digit == "0":
        digit = "1" if good[0] != "1" else "2"
    bad = good[:pos] + digit + good[pos + 1 :]
    return f"Add: {a}+{b}=", good, bad


def _sort_digits(rng: random.Random) -> tuple[str, str, str]:
    while True:
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(4, 9))]
        good = "".join(sorted(digits))
        swaps = [i for i in range(len(good) - 1) if good[i] != good[i + 1]]
        if swaps:
            break
    i = rng.choice(swaps)
    bad = good[:i] + good[i + 1] + good[i] + good[i + 2 :]
    return f"Sort the digits: {''.join(digits)}", good, bad


def _reverse_words(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(WORDS, rng.randint(3, 6))
    good = " ".join(reversed(words))
    bad_words = list(reversed(words))
    bad_words[0], bad_words[1] = bad_words[1], bad_words[0]
    return f"Reverse the words: {' '.join(words)}", good, " ".join(bad_words)


def _uppercase(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(WORDS, rng.randint(2, 4))
    text = " ".join(words)
    good = text.upper()
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    i = rng.choice(letters)
    bad = good[:i] + text[i] + good[i + 1 :]
    return f"Uppercase: {text}", good, bad


TASKS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "add": _add,
    "sort_digits": _sort_digits,
    "reverse_words": _reverse_words,
    "uppercase": _uppercase,
}


def check_answer(prompt: str, answer: str) -> bool:
    """Independent checker: recomputes the answer from the prompt alone."""
    head, _, body = prompt.partition(": ")
    if head == "Add":
        a, b = body.rstrip("=").split("+")
        return answer == str(int(a) + int(b))
    if head == "Sort the digits":
        return answer == "".join(sorted(body))
    if head == "Reverse the words":
        return answer == " ".join(body.split()[::-1])
    if head == "Uppercase":
        return answer == body.upper()
    raise ValueError(f"unknown task prompt: {prompt!r}")


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
        prompt, good, bad = TASKS[name](rng)
        if prompt in seen:
            continue
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
        dpo = [{"task": r["task"], "prompt": r["prompt"], "chosen": r["response"], "rejected": r["rejected"]} for r in rows]
        for kind, records in (("sft", sft), ("dpo", dpo)):
            path = out / f"{kind}_{split}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
            tmp.replace(path)
            files[f"{kind}_{split}"] = str(path)
    return files

import json

import pytest

from llada_core.data.synthetic import INDEPENDENT, ITEMS, TASKS, check_answer, generate, write_task_files


def test_answers_are_correct_and_rejected_are_wrong():
    data = generate(400, seed=3)
    rows = data["train"] + data["eval"]
    assert len(rows) == 400 and {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        assert check_answer(r["prompt"], r["response"]), r
        assert not check_answer(r["prompt"], r["rejected"]), r
        assert r["rejected"] != r["response"]
        assert ITEMS[0] <= len(r["response"].split()) <= ITEMS[1] == 16
    assert {len(r["response"].split()) for r in rows} == set(range(8, 17))
    assert INDEPENDENT == {"uppercase", "reverse"} and set(TASKS) - INDEPENDENT == {"parity", "running_sum"}


@pytest.mark.parametrize("prompt, answer", [
    ("Uppercase: a b z", "A B Z"), ("Reverse: a 1 b", "b 1 a"),
    ("Parity: 1 0 1 1 0", "1 1 0 1 1"), ("Running sum: 7 5 9 0", "7 2 1 1"),
])
def test_checker_against_hand_computed_answers(prompt, answer):
    assert check_answer(prompt, answer) and check_answer(prompt, " " + answer)
    assert not check_answer(prompt, answer[:-1] + ("0" if answer[-1] != "0" else "1"))


def test_deterministic_and_no_prompt_in_two_splits():
    a, b = generate(300, seed=11), generate(300, seed=11)
    assert a == b
    train = {r["prompt"] for r in a["train"]}
    held = {r["prompt"] for r in a["eval"]}
    assert not train & held and len(train) + len(held) == 300
    assert 10 <= len(held) <= 60  # eval_fraction 0.1 of 300, by hash
    assert generate(300, seed=12) != a


def test_files(tmp_path):
    files = write_task_files(tmp_path, 50, seed=0)
    assert set(files) == {"sft_train", "sft_eval", "dpo_train", "dpo_eval"}
    dpo = [json.loads(line) for line in open(files["dpo_train"])]
    assert dpo and set(dpo[0]) == {"task", "prompt", "chosen", "rejected"}

import json

import pytest

from llada_core.data.synthetic import INDEPENDENT, ITEMS, SYMBOLS, TASKS, check_answer, generate, write_task_files


def test_answers_are_correct_and_rejected_are_wrong():
    data = generate(400, seed=3)
    rows = data["train"] + data["eval"]
    assert len(rows) == 400 and {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        assert check_answer(r["prompt"], r["response"]), r
        assert not check_answer(r["prompt"], r["rejected"]), r
        assert r["rejected"] != r["response"]
        assert len(r["response"].split()) == len(r["prompt"].split(": ")[1].split()) == ITEMS[0] == ITEMS[1] == 10
        # one symbol changed: a plausible wrong answer, not a different length
        assert sum(a != b for a, b in zip(r["response"].split(), r["rejected"].split(), strict=True)) == 1
        assert {" " + s for s in r["prompt"].split(": ")[1].split() + r["response"].split()} <= set(SYMBOLS)
    assert INDEPENDENT == {"uppercase", "next"} and set(TASKS) - INDEPENDENT == {"parity", "running_sum"}
    ranged = generate(200, seed=3, items=(8, 16))
    assert {len(r["response"].split()) for r in ranged["train"] + ranged["eval"]} == set(range(8, 17))


@pytest.mark.parametrize("prompt, answer", [
    ("Uppercase: a b z", "A B Z"), ("Next: a m z", "b n a"),
    ("Parity: 1 0 1 1 0", "1 1 0 1 1"), ("Running sum: 1 1 0 1 1 1 1 1 1 1 1 1", "1 2 2 3 4 5 6 7 8 9 0 1"),
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


def test_more_problems_than_the_tasks_hold_is_an_error_before_drawing():
    # bits at 10 symbols: 2**10 prompts minus the 2 whose answer echoes them, per task, tasks in turn
    with pytest.raises(ValueError, match="n: 4100 distinct problems.*only 1022 distinct prompts.*at most 4088"):
        generate(4100, items=(10, 10))
    assert len(generate(4088, items=(10, 10))["train"]) > 3500

"""The driver's console shows long nodes' progress (step / total, loss, tokens/s, ETA)."""

from pipelines.progress import Progress


def test_plain_output_prints_a_line_per_tenth_of_the_steps_with_an_eta():
    lines, now = [], [0.0]
    progress = Progress(lines.append, tty=False, clock=lambda: now[0])
    for step in range(1, 101):
        now[0] = step * 0.5  # 2 steps/s
        progress.update("sft", step, 100, {"loss": 1.0 / step, "tokens_per_s": 1234.0})
    assert len(lines) == 11  # steps 1, 10, 20, ..., 100
    assert lines[0] == "[sft] step 1/100  loss 1.0000  1,234 tok/s"  # no rate yet: no ETA
    assert lines[5] == "[sft] step 50/100  loss 0.0200  1,234 tok/s  ETA 0m25s"  # 50 steps left at 2 steps/s
    assert lines[-1].startswith("[sft] step 100/100")


def test_a_slow_node_still_prints_every_30_seconds():
    lines, now = [], [0.0]
    progress = Progress(lines.append, tty=False, clock=lambda: now[0])
    for step in range(1, 6):
        now[0] = step * 20.0
        progress.update("cpt", step, 1000, {"loss": 2.0})
    assert [line.split("  ")[0] for line in lines] == ["[cpt] step 1/1000", "[cpt] step 3/1000", "[cpt] step 5/1000"]

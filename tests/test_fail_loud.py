"""Bad input a user can cause gets one `error:` line and exit 2 before anything runs (real CLI, tiny
inputs): credentials in URIs, a missing run store, unreadable recipe files, a combination of sections
no single section can check, an unknown preset, a dataset that does not fit the objective; and a node
whose driver died reads INTERRUPTED, not RUNNING."""

import json
import os
import time

import pytest

from pipelines.cli import main


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_credentials_in_a_uri_are_refused_at_config_load_and_never_stored(tmp_path, capsys):
    for argv in (["config", "show", "tiny-cpu", "data.input=s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/corpus"],
                 ["run", "tiny-cpu", f"workdir={tmp_path}", "tracking_uri=http://user:pa55word@mlflow:5000"]):
        assert main(argv) == 2
        line = error_line(capsys)
        assert "credentials in a URI are not accepted" in line and "AWS_SECRET_ACCESS_KEY" in line
        assert "wJalrXUtnFEMI" not in line and "pa55word" not in line
    assert not (tmp_path / "store").exists()  # the run never started: nothing written anywhere


def test_a_missing_run_store_is_an_error_not_an_empty_list(tmp_path, capsys):
    for argv in (["ls", "--store", str(tmp_path / "nope")], ["status", "r1", "--store", str(tmp_path / "nope")]):
        assert main(argv) == 2
        assert f"no run store at {tmp_path / 'nope'}" in error_line(capsys)


def test_unreadable_recipe_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00 not utf-8")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    for path, fragment in ((tmp_path / "missing.yaml", "config file not found"),
                           (tmp_path / "binary.yaml", "not valid YAML"), (tmp_path / "broken.yaml", "not valid YAML")):
        assert main(["run", str(path)]) == 2
        assert fragment in error_line(capsys)


def test_overrides_after_options_are_applied(capsys):
    # seq_len=250 is applied (and refused by the schedule), not rejected by argparse as an unknown argument
    assert main(["run", "tiny-cpu", "--run-id", "x", "seq_len=250"]) == 2
    assert "does not divide seq_len=250" in error_line(capsys)


@pytest.mark.parametrize("overrides, fragment", [
    (["parallel.world_size=2", "parallel.pp=2", "training.model_overrides=[num_layers=4]"],
     "node dpo): key 'layout': pipeline parallelism (pp=2) is not implemented for DPO"),
    (["training.model=nope"], "node base): key 'model': unknown model preset 'nope'"),
])
def test_node_configs_the_recipe_builds_are_checked_before_any_node_runs(tmp_path, capsys, overrides, fragment):
    assert main(["run", "tiny-cpu", f"workdir={tmp_path}", *overrides]) == 2
    assert fragment in error_line(capsys)
    assert not (tmp_path / "store").exists()


def test_a_dataset_that_does_not_fit_the_objective_fails_before_any_worker_starts(tmp_path, monkeypatch):
    from trainer_fixtures import make_dataset, stage_dict

    from llada_core.data.sources import DataError
    from llada_core.trainer import ray_launch
    from llada_core.trainer.config import TrainingConfig

    monkeypatch.setattr(ray_launch, "TorchTrainer", lambda *a, **k: pytest.fail("a worker group was created"))
    data = make_dataset(str(tmp_path))  # packed pretraining rows of 32 tokens
    for objective, fragment in (({"kind": "sft"}, "a 'pretrain' dataset, but objective 'sft' trains on 'sft' data"),
                                ({"kind": "cpt", "block_size": 12}, "block_size=12 does not divide its rows of 32"),
                                ({"kind": "cpt", "block_size": 64}, "block_size=64 does not divide its rows of 32")):
        cfg = TrainingConfig.model_validate(stage_dict(data, objective=objective))
        with pytest.raises(DataError, match=fragment):
            ray_launch.run_training(cfg, str(tmp_path / "runs"))


def test_a_graph_whose_dataset_exists_is_checked_against_it_before_any_node_runs(tmp_path, capsys):
    import yaml
    from trainer_fixtures import make_dataset, stage_dict

    data = make_dataset(str(tmp_path))  # a pretraining dataset
    later = {"name": "later", "stage": "stages.llada:make_tasks", "config": {"out": "${out}", "n": 8}}
    sft = {"name": "sft", "stage": "stages.llada:train",
           "config": {"training": stage_dict(data, objective={"kind": "sft"}), "out": "${out}"}}
    graph = tmp_path / "graph.yaml"
    graph.write_text(yaml.safe_dump({"name": "g", "workdir": str(tmp_path / "w"), "nodes": [later, sft]}))
    assert main(["run", str(graph)]) == 2
    assert "node 'sft': " in (line := error_line(capsys)) and "a 'pretrain' dataset, but objective 'sft'" in line
    assert not (tmp_path / "w").exists()  # not even the first, independent node ran


def test_a_node_whose_driver_died_reads_interrupted(tmp_path, capsys):
    from pipelines.run_store import STALE_LOCK_S, RunStore

    store = RunStore(str(tmp_path / "store"))
    store.write_run("r1", {"run_id": "r1", "nodes": [{"name": "train", "stage": "x:y", "config": {}, "after": []}]})
    store.write_node("r1", {"name": "train", "state": "RUNNING", "attempts": 1})
    dead = {"host": os.uname().nodename, "pid": 2**22 + 12345, "heartbeat": time.time() - 2 * STALE_LOCK_S}
    store.write(("runs", "r1", "lock.json"), dead)
    assert main(["status", "r1", "--store", store.root, "--json"]) == 0
    assert [n["state"] for n in json.loads(capsys.readouterr().out)["nodes"]] == ["INTERRUPTED"]


@pytest.mark.slow  # Ray Data reads the records
@pytest.mark.parametrize("record, fragment", [
    ('{"text": 42}', "records.jsonl:2: column 'text' is int ('42'), expected a string"),
    ('{"text": null}', "records.jsonl:2: column 'text' is NoneType ('None'), expected a string"),
    ('{"body": "no text"}', "records.jsonl:2: missing column(s) ['text']"),
])
def test_a_bad_record_names_its_file_line_and_column(tmp_path, tokenizer_dir, capsys, record, fragment):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "records.jsonl").write_text('{"text": "a fine document"}\n' + record + "\n")
    argv = ["data", "prepare", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--seq-len", "16",
            "--tokenizer", tokenizer_dir]
    assert main(argv) == 2
    assert fragment in error_line(capsys)


@pytest.mark.slow  # a local Ray cluster
def test_a_worker_group_that_cannot_be_scheduled_fails_at_once_naming_both_sides(ray_local, tmp_path, monkeypatch):
    from trainer_fixtures import make_dataset, stage_dict

    from llada_core.cluster import ClusterError
    from llada_core.trainer import ray_launch
    from llada_core.trainer.config import TrainingConfig

    monkeypatch.setattr(ray_launch, "TorchTrainer", lambda *a, **k: pytest.fail("a worker group was created"))
    cfg = TrainingConfig.model_validate(stage_dict(make_dataset(str(tmp_path)), layout={"world_size": 4}))
    for world_cpus, fragment in ((1.0, "4 workers x CPU 1 each, but the cluster's 1 node(s) have [CPU 2] (room for 2)"),
                                 (4096.0, "4 workers x CPU 4096 each")):
        with pytest.raises(ClusterError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            ray_launch.run_training(cfg, str(tmp_path / "runs"), cpus_per_worker=world_cpus, progress=False)


@pytest.mark.slow  # a local Ray cluster
def test_a_worker_group_on_a_busy_cluster_fails_after_the_wait_not_never(ray_local, tmp_path, monkeypatch):
    import ray
    from trainer_fixtures import make_dataset, stage_dict

    from llada_core.cluster import ClusterError
    from llada_core.trainer import ray_launch
    from llada_core.trainer.config import TrainingConfig

    @ray.remote(num_cpus=ray.cluster_resources()["CPU"])
    class Hog:  # another job holding every CPU: the cluster is big enough, but busy
        def ready(self):
            return True

    hog = Hog.remote()
    ray.get(hog.ready.remote())
    monkeypatch.setattr(ray_launch, "MIN_PLACEMENT_WAIT_S", 2.0)  # Ray Train's 60 s, shortened for the test
    cfg = TrainingConfig.model_validate(stage_dict(make_dataset(str(tmp_path)), layout={"world_size": 1}))
    try:
        with pytest.raises(ClusterError, match=r"not scheduled within 2.0 s \(1 attempt\(s\)\): 1 workers x CPU 1 "
                                               r"each, the cluster has CPU 0 free now"):
            ray_launch.run_training(cfg, str(tmp_path / "runs"), progress=False)
    finally:
        ray.kill(hog)


def test_a_corrupted_consolidated_checkpoint_is_named_before_export(tmp_path, capsys):
    import torch

    from llada_core.checkpoint import save_checkpoint
    from llada_core.data.tokenizer import train_bpe
    from llada_core.model.config import load_preset
    from llada_core.model.hf_io import expected_shapes

    tok = train_bpe(iter(["tokens for a tiny tokenizer"] * 10), 300)
    cfg = load_preset("tiny", [f"vocab_size={tok.vocab_size}"])
    save_checkpoint(tmp_path / "ckpt", cfg, ((k, torch.zeros(s)) for k, s in expected_shapes(cfg).items()), tok, {})
    shard = tmp_path / "ckpt" / "weights" / "part-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    assert main(["model", "export-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 2
    assert "weights/part-00000.safetensors: missing or corrupted" in error_line(capsys)
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # transformers builds the HF checkpoint
def test_bad_hf_files_are_named(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file
    from test_hf_interop import make_hf

    make_hf("qwen3", tmp_path / "hf")
    capsys.readouterr()  # transformers' progress output
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    wrong = dict(weights, **{"model.layers.0.self_attn.q_proj.weight": torch.zeros(30, 32)})
    cases = {"qproj": lambda d: save_file(wrong, str(d / "model.safetensors")),
             "truncated": lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage"),
             "config": lambda d: (d / "config.json").write_text("{not json")}
    fragments = {"qproj": "tensor 'model.layers.0.self_attn.q_proj.weight' has shape (30, 32), expected (32, 32)",
                 "truncated": "model.safetensors: not a readable safetensors file",
                 "config": "config.json: not valid JSON"}
    for name, spoil in cases.items():
        d = tmp_path / name
        d.mkdir()
        for f in (tmp_path / "hf").iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        spoil(d)
        assert main(["model", "import-hf", str(d), "--out", str(tmp_path / f"out-{name}"),
                     "--add-mask-token", "<|mask|>"]) == 2
        assert fragments[name] in error_line(capsys)
        assert not (tmp_path / f"out-{name}").exists()

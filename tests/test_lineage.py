"""`llada lineage` on a run store shaped like the demo's (the recipe's own DAG, every node finished):
each node printed once however many paths lead to it, datasets summarized so that the output does not
grow with the corpus, --sources / --json keep every file, and the graph as Mermaid / Graphviz."""

import json

import pytest

from llada_recipe.build import load
from pipelines import dag
from pipelines.cli import main
from pipelines.run_store import RunStore


def demo_shaped_store(root, n_files: int) -> tuple[RunStore, list[dag.Node]]:
    """The tiny-cpu recipe's nodes, all SUCCEEDED; prepare_pretrain read `n_files` source files."""
    _, nodes = load("tiny-cpu", [f"workdir={root}"])
    store = RunStore(str(root / "store"))
    store.write_run("r1", {"run_id": "r1", "recipe": "tiny-cpu", "nodes": dag.to_json(nodes),
                           "code_version": {"git_sha": "abc1234def", "git_dirty": False}})
    for i, node in enumerate(nodes):
        outputs = {}
        for name in dag.load_stage(node.stage).outputs:
            out = root / "artifacts" / node.name / name
            out.mkdir(parents=True)
            outputs[name] = {"uri": str(out), "digest": f"{i:02d}" * 32}
        if node.name == "prepare_pretrain":
            sources = [{"uri": f"/corpus/part-{k:05d}.txt", "sha256": f"{k:064x}", "bytes": 100 + k}
                       for k in range(n_files)]
            (root / "artifacts" / node.name / "dataset" / "manifest.json").write_text(
                json.dumps({"kind": "pretrain", "sources": sources, "tokenizer": {"digest": "t" * 64}}))
        inputs = {f"{u}.{o}": f"{nodes.index(next(n for n in nodes if n.name == u)):02d}" * 32 for u, o in node.refs()}
        store.write_node("r1", {"name": node.name, "state": "SUCCEEDED", "cache_key": f"{i:02d}{i * 7919:062x}",
                                "mlflow_run_id": f"mlf{i}", "outputs": outputs, "inputs": inputs,
                                "stage": node.stage})
    return store, nodes


def lineage_out(capsys, store, *args) -> str:
    assert main(["lineage", "r1", "--store", store.root, *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("target", ["run", "export"])
def test_each_node_once_and_as_long_for_1000_files_as_for_10(tmp_path, capsys, target):
    small, nodes = demo_shaped_store(tmp_path / "small", 10)
    large, _ = demo_shaped_store(tmp_path / "large", 1000)
    arg = "r1" if target == "run" else str(tmp_path / "large" / "artifacts" / "export" / "hf")
    assert main(["lineage", arg, "--store", large.root]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    names = [n.name for n in nodes] if target == "run" else [n.name for n in nodes if n.name != "eval"]
    for name in names:  # one line per node, whatever number of paths lead to it
        assert sum(line.split()[0] == name for line in lines) == 1, name
    assert "dataset prepare_pretrain.dataset" in text and "1000 source file(s), 599.5 KB under /corpus/" in text
    assert len(lineage_out(capsys, small, "--sources").splitlines()) == len(
        lineage_out(capsys, small).splitlines()) + 10
    if target == "run":
        assert len(lines) == len(lineage_out(capsys, small).splitlines())  # independent of the corpus size
        doc = json.loads(lineage_out(capsys, large, "--json"))
        assert set(doc["nodes"]) == set(names)
        (ds,) = doc["nodes"]["prepare_pretrain"]["datasets"]
        assert len(ds["sources"]) == 1000 and ds["sources"][7] == {"uri": "/corpus/part-00007.txt",
                                                                   "sha256": f"{7:064x}", "bytes": 107}


def test_the_graph_as_mermaid_and_dot(tmp_path, capsys):
    store, nodes = demo_shaped_store(tmp_path, 3)
    mermaid = lineage_out(capsys, store, "--format", "mermaid").splitlines()
    dot = lineage_out(capsys, store, "--format", "dot").splitlines()
    assert mermaid[0] == "flowchart LR" and dot[0] == "digraph lineage {" and dot[-1] == "}"
    boxes = [line for line in mermaid if "[\"" in line]
    assert len(boxes) == len(nodes) and sum("-->" in line for line in mermaid) == sum(
        len(n.upstream()) for n in nodes)  # one edge per upstream, labelled with the output it passes
    ids = {line.split("[")[0].strip(): line.split('"')[1].split("<br/>")[0] for line in boxes}
    edges = {(ids[line.split()[0]], ids[line.split()[-1]]) for line in mermaid if "-->" in line}
    assert edges == {(u, n.name) for n in nodes for u in n.upstream()}
    assert sum(" -> " in line for line in dot) == len(edges)

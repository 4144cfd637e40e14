import json
import os
import subprocess
import sys

import pytest

from pipelines.cli import build_parser, main


def subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommand_paths(sub, (*prefix, name))


def test_help_lists_commands_and_every_leaf_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "model", "config", "demo"):
        assert command in out
    leaves = [(path, p) for path, p in subcommand_paths(build_parser()) if not any(
        a.__class__.__name__ == "_SubParsersAction" for a in p._actions)]
    assert {" ".join(path) for path, _ in leaves} >= {"data prepare", "data prepare-sft", "data prepare-dpo",
                                                      "data make-tasks", "config show", "demo", "model import-hf",
                                                      "model export-hf"}
    for path, _ in leaves:
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and "llada " + " ".join(path) in text, path


def test_config_errors_exit_2_with_one_message(capsys):
    assert main(["config", "show", "tiny-cpu", "parallel.tp=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "parallel.world_size" in err and "Traceback" not in err
    assert main(["config", "show", "no-such-recipe"]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err


@pytest.mark.slow
def test_data_prepare_command(ray_local, corpus, tokenizer_dir, tmp_path, capsys):
    src, _ = corpus
    out = tmp_path / "ds"
    rc = main(["data", "prepare", "--input", src, "--out", str(out), "--seq-len", "16", "--tokenizer", tokenizer_dir,
               "rows_per_shard=3", "val_fraction=0.0"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert printed["splits"] == manifest["splits"] and manifest["splits"]["val"]["rows"] == 0
    assert all(s["rows"] <= 3 for s in manifest["shards"]["train"])
    assert main(["data", "prepare", "--input", src, "--out", str(out), "--seq-len", "16",
                 "--tokenizer", tokenizer_dir]) == 2
    assert "already holds a dataset" in capsys.readouterr().err


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "llada")
    out = subprocess.run([script, "data", "make-tasks", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "llada data make-tasks --out" in out.stdout


def test_model_import_errors_exit_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    assert main(["model", "import-hf", str(tmp_path), "--out", str(tmp_path / "ckpt")]) == 2
    assert "unknown architecture model_type='gpt2'" in capsys.readouterr().err

"""`llada`: the command line of llada-pipeline.

Every command that takes a config accepts `--config FILE.yaml` and trailing `key.sub=value`
overrides (precedence: file < flags < overrides); a bad config is one error naming file and key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from llada_core.config import ConfigError, canonical_json, config_digest, load_config
from llada_core.data.synthetic import ITEMS
from llada_core.model.hf_formats import FORMATS

EXIT_USAGE = 2


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser_with_examples(sub, name: str, help_: str, examples: list[str]) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help_, description=help_, epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_common_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the stage's keys (flags and overrides win)")
    p.add_argument("--input", help="file, directory, glob or s3:// URI")
    p.add_argument("--out", help="output dataset directory (local or s3://)")
    p.add_argument("--val-fraction", type=float, help="fraction of documents/examples held out (by content hash)")
    p.add_argument("--seed", type=int, help="salts the train/val hash")
    p.add_argument("--num-workers", type=int, help="Ray Data actors, each preparing one range of input files at a time")
    p.add_argument("--on-bad-utf8", choices=["skip", "fail"], help="skip (and count) or fail on non-UTF-8 input")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing dataset at --out")
    p.add_argument("--verbose", action="store_true", default=None, help="Ray Data progress output")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. rows_per_shard=1024")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llada",
        description="Train LLaDA2.0-style block-diffusion LMs: data -> CPT (WSD) -> SFT -> CAP -> DPO on Ray.",
        epilog=_examples("llada demo",
                         "llada data prepare --input stdlib --out work/pt --seq-len 256 --train-tokenizer",
                         "llada config show tiny-cpu seq_len=512"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = top.add_parser("data", help="prepare datasets (tokenize, pack, chat-template)",
                          description="Prepare datasets.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = _parser_with_examples(dsub, "prepare", "tokenize and pack a pretraining corpus into rows of seq_len tokens", [
        "llada data prepare --input stdlib --out work/pt --seq-len 256 --train-tokenizer --vocab-size 4096",
        "llada data prepare --input 'corpus/**/*.jsonl' --out s3://bucket/pt --seq-len 4096 --tokenizer hf_model/",
        "llada data prepare --config data.yaml tokenizer.add_mask_token='<|mask|>'",
    ])
    _add_common_data_flags(p)
    p.add_argument("--seq-len", type=int, help="tokens per packed row")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", help="tokenizer.json or HF tokenizer directory")
    tok.add_argument("--train-tokenizer", action="store_true", default=None, help="train a byte-level BPE on the input")
    p.add_argument("--vocab-size", type=int, help="vocabulary size of a trained tokenizer")
    p.add_argument("--add-mask-token", help="token to add when the loaded tokenizer has no mask token")
    p.set_defaults(handler=_cmd_prepare)

    for kind, cols in (("sft", "prompt/response or messages"), ("dpo", "prompt/chosen/rejected")):
        p = _parser_with_examples(dsub, f"prepare-{kind}", f"chat-template {kind.upper()} data ({cols} columns)", [
            f"llada data prepare-{kind} --input work/raw/{kind}_train.jsonl --out work/{kind} "
            "--tokenizer work/pt/tokenizer",
            f"llada data prepare-{kind} --input s3://bucket/{kind}/ --out s3://bucket/{kind}-tok --tokenizer tok/ "
            "--max-len 4096 on_too_long=error",
        ])
        _add_common_data_flags(p)
        p.add_argument("--tokenizer", help="tokenizer dir (e.g. the pretraining dataset's DST/tokenizer)")
        p.add_argument("--add-mask-token", help="token to add when the tokenizer has no mask token")
        p.add_argument("--max-len", type=int, help="longest example in tokens")
        p.add_argument("--on-too-long", choices=["error", "drop"], help="what to do with longer examples")
        p.set_defaults(handler=_cmd_prepare_instruct, kind=kind)

    p = _parser_with_examples(dsub, "make-tasks",
                              "write the built-in verifiable instruction tasks (SFT + DPO, train/eval)", [
        "llada data make-tasks --out work/raw/tasks --n 4000 --seed 0",
    ])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, help="number of distinct problems (default 4000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-fraction", type=float, help="share of problems held out for evaluation (default 0.1)")
    p.add_argument("--items", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help=f"answer length range in symbols, inclusive (default {ITEMS[0]} {ITEMS[1]})")
    p.set_defaults(handler=_cmd_make_tasks)

    model = top.add_parser("model", help="import / export model checkpoints", description="Model checkpoints.")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    p = _parser_with_examples(msub, "import-hf",
                              "convert an HF safetensors checkpoint (Qwen3, Qwen3-MoE, BailingMoeV2) into ours", [
        "llada model import-hf /models/Ling-mini-base-2.0 --out work/ckpt/base",
        "llada model import-hf /models/Qwen3-0.6B --out work/ckpt/qwen --add-mask-token '<|mask|>'",
    ])
    p.add_argument("hf_dir", help="HF model directory: config.json, *.safetensors, tokenizer files")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--add-mask-token",
                   help="token to add (with a new embedding row) when the tokenizer has no mask token")
    p.set_defaults(handler=_cmd_import_hf)
    p = _parser_with_examples(msub, "export-hf", "write a checkpoint in a serving format (HF safetensors + configs "
                              "+ tokenizer)", [
        "llada model export-hf work/ckpt/dpo --out work/hf/llada-tiny",
        "llada model export-hf work/ckpt/dpo --out work/hf/llada2 --format llada2 --block-length 32 --threshold 0.95",
        "llada model export-hf work/ckpt/dpo --out work/hf/llada2 --format llada2 --relocate-mask",
    ])
    p.add_argument("ckpt", help="checkpoint directory (from import-hf or training)")
    p.add_argument("--out", required=True, help="HF directory to create")
    p.add_argument("--format", choices=sorted(FORMATS), dest="fmt",
                   help="llada2 / sdar: a diffusion-LM server's (SGLang: LLaDA2MoeModelLM, SDAR); qwen / ling: AR "
                        "layouts transformers loads (default: the AR layout of the model's family)")
    p.add_argument("--block-length", type=int, help="decoding block for a diffusion format's generation config "
                                                    "(default: the server's, 32 for llada2, 4 for sdar)")
    p.add_argument("--threshold", type=float, default=0.95, help="confidence threshold for the generation config")
    p.add_argument("--relocate-mask", action="store_true",
                   help="for llada2 / sdar when the tokenizer's [MASK] is not the server's fixed id: grow the "
                        "vocabulary to that id and move the [MASK] rows there (other tokens keep their ids; the "
                        "emptied ids score what [MASK] scores; see llada_core/model/mask_relocation.py)")
    p.set_defaults(handler=_cmd_export_hf)

    cfg = top.add_parser("config", help="inspect recipe configs", description="Inspect recipe configs.")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    p = _parser_with_examples(csub, "show", "validate a recipe and print its canonical resolved config and digest", [
        "llada config show tiny-cpu", "llada config show my_recipe.yaml parallel.tp=2 parallel.world_size=4",
    ])
    p.add_argument("recipe", help="recipe name (llada_recipe/recipes/NAME.yaml) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(handler=_cmd_config_show)

    p = _parser_with_examples(top, "demo", "run the embedded tiny recipe end to end on this machine", [
        "llada demo", "llada demo --workdir /tmp/demo instruct.tasks.n=1000",
    ])
    p.add_argument("--recipe", default="tiny-cpu", help="recipe name or YAML path")
    p.add_argument("--workdir", help="where the run store, artifacts, MLflow database and report go (default: work)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(handler=_cmd_demo)

    from pipelines import cli_runs

    cli_runs.add_commands(top, _parser_with_examples)
    return parser


def _flags(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


_COMMON = ["input", "out", "val_fraction", "seed", "num_workers", "on_bad_utf8", "overwrite", "verbose"]


def _cmd_prepare(args) -> int:
    from stages.prepare_data import PrepareDataConfig, run

    values = _flags(args, [*_COMMON, "seq_len"])
    tok = {k: v for k, v in {"path": args.tokenizer, "train": args.train_tokenizer, "vocab_size": args.vocab_size,
                             "add_mask_token": args.add_mask_token}.items() if v is not None}
    if tok:
        values["tokenizer"] = tok
    cfg = load_config(PrepareDataConfig, args.config, values=values, overrides=args.overrides)
    manifest = run(cfg)
    print(json.dumps({"out": cfg.out, "splits": manifest["splits"], "skipped": manifest["skipped"],
                      "tokenizer_digest": manifest["tokenizer"]["digest"]}, indent=2))
    return 0


def _cmd_prepare_instruct(args) -> int:
    from stages.prepare_instruct import PrepareInstructConfig, run

    values = _flags(args, [*_COMMON, "tokenizer", "add_mask_token", "max_len", "on_too_long"]) | {"kind": args.kind}
    cfg = load_config(PrepareInstructConfig, args.config, values=values, overrides=args.overrides)
    manifest = run(cfg)
    print(json.dumps({"out": cfg.out, "splits": manifest["splits"], "skipped": manifest["skipped"],
                      "longest_example": manifest["longest_example"]}, indent=2))
    return 0


def _cmd_make_tasks(args) -> int:
    from llada_core.data.synthetic import write_task_files
    from stages.llada import MakeTasksConfig

    cfg = load_config(MakeTasksConfig, values=_flags(args, ["out", "n", "seed", "eval_fraction", "items"]))
    print(json.dumps(write_task_files(cfg.out, cfg.n, cfg.seed, cfg.eval_fraction, cfg.items), indent=2))
    return 0


def _cmd_import_hf(args) -> int:
    from stages.model_hf import import_hf

    meta = import_hf(args.hf_dir, args.out, add_mask_token=args.add_mask_token)
    print(json.dumps({"out": args.out, "source_model_type": meta["source_model_type"],
                      "added_special_tokens": meta["added_special_tokens"],
                      "vocab_rows_added": meta["vocab_rows_added"]}, indent=2))
    return 0


def _cmd_export_hf(args) -> int:
    from stages.model_hf import export_hf

    decoding = {"block_length": args.block_length, "threshold": args.threshold}
    hf_cfg = export_hf(args.ckpt, args.out, args.fmt, decoding, relocate_mask=args.relocate_mask)
    keys = ("format", "model_type", "vocab_size", "mask_token_id", "relocated_mask")
    print(json.dumps({"out": args.out, "architecture": hf_cfg["architectures"][0]}
                     | {k: hf_cfg[k] for k in keys if k in hf_cfg}, indent=2))
    return 0


def _cmd_config_show(args) -> int:
    from llada_recipe.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    print(json.dumps(json.loads(canonical_json(cfg)), indent=2, sort_keys=True))
    print(f"# digest {config_digest(cfg)}")
    return 0


def _cmd_demo(args) -> int:
    from llada_recipe.demo import format_summary, run_demo

    overrides = list(args.overrides) + ([f"workdir={args.workdir}"] if args.workdir else [])
    result = run_demo(args.recipe, overrides, say=lambda m: print(m, flush=True))
    print(format_summary(result))
    return 0 if all(r["state"] != "FAILED" for r in result["records"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    from llada_core.data.chat import ChatFormatError
    from llada_core.data.sources import DataError
    from llada_core.data.tokenizer import TokenizerError
    from llada_core.model.hf_config import CheckpointError
    from pipelines.errors import innermost

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also follow the options (`llada run R --run-id X a.b=1`)
        if not (hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    # Ray Data logs a failed task's traceback itself (read when it configures its logging, at import);
    # the CLI says what went wrong in one line below
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "CRITICAL")
    try:
        return args.handler(args)
    except Exception as exc:
        from pipelines.cli_runs import handles

        cause = innermost(exc, (ConfigError, DataError, TokenizerError, ChatFormatError, CheckpointError))
        if cause is None and not handles(exc):
            raise
        text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        if cause is not None:  # from inside Ray, whose retry advice is appended to the message: its first line
            text = str(cause) if cause is exc else str(cause).splitlines()[0]
        print("error: " + textwrap.indent(text, "  ").lstrip(), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

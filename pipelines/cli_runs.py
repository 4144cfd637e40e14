"""`llada run | resume | status | ls | lineage`: the durable pipeline's command line."""

from __future__ import annotations

import json
import os

from pipelines.run_store import RunStore

EXIT_FAILED = 1


def add_commands(top, parser_with_examples) -> None:
    p = parser_with_examples(top, "run", "run a recipe as a durable, cache-aware DAG on Ray", [
        "llada run tiny-cpu", "llada run tiny-cpu sft.steps=50 --from-stage sft", "llada run my-recipe.yaml --no-cache",
    ])
    p.add_argument("recipe", help="recipe name (llada_recipe/recipes/NAME.yaml) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. sft.steps=100")
    p.add_argument("--run-id", help="name the run (default: RECIPE-DATE-TIME-RANDOM)")
    p.add_argument("--no-cache", action="store_true", help="run every node even if a cached result exists")
    p.add_argument("--from-stage", metavar="NODE", help="re-run NODE and everything downstream of it")
    p.set_defaults(handler=_cmd_run)

    store_help = "run store directory or s3:// URI (default: $LLADA_STORE or work/store)"
    p = parser_with_examples(top, "resume", "finish an interrupted or failed run (finished nodes never run again)",
                             ["llada resume tiny-cpu-20261123-101500-ab12cd"])
    p.add_argument("run_id")
    p.add_argument("--store", help=store_help)
    p.set_defaults(handler=_cmd_resume)

    p = parser_with_examples(top, "status", "each node's state, cache key, attempts, duration, MLflow run, outputs",
                             ["llada status RUN_ID", "llada status RUN_ID --json"])
    p.add_argument("run_id")
    p.add_argument("--store", help=store_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_status)

    p = parser_with_examples(top, "ls", "list the runs of a run store", ["llada ls", "llada ls --store s3://bucket/llada"])
    p.add_argument("--store", help=store_help)
    p.set_defaults(handler=_cmd_ls)

    p = parser_with_examples(top, "plan", "validate a recipe and print its stages, tokens, layout and memory per GPU", [
        "llada plan llada2-flash", "llada plan llada2-mini parallel.ep=16 --json",
    ])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_plan)

    p = parser_with_examples(top, "lineage", "what produced a run's final artifacts, or a given artifact", [
        "llada lineage RUN_ID", "llada lineage work/artifacts/RUN_ID/export/hf --sources",
        "llada lineage models:/llada-tiny-cpu/1 --tracking-uri sqlite:///work/mlflow.db",
        "llada lineage RUN_ID --format mermaid > lineage.mmd", "llada lineage RUN_ID --format dot | dot -Tpng -o l.png",
    ])
    p.add_argument("target", help="a run id, an artifact URI written by a node, or a registered model version "
                                  "models:/NAME/VERSION")
    p.add_argument("--store", help=store_help + " (models:/...: the one its version names)")
    p.add_argument("--tracking-uri", help="MLflow for models:/... (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="everything recorded, every source file included")
    p.add_argument("--sources", action="store_true", help="list each dataset's source files")
    p.add_argument("--format", choices=("text", "mermaid", "dot"), default="text", help="mermaid / dot: the graph")
    p.set_defaults(handler=_cmd_lineage)


def _store(args) -> RunStore:
    """The run store a read command looks at; one that does not exist is an error, not an empty list."""
    from pipelines.runs import DEFAULT_STORE

    store = RunStore(args.store or DEFAULT_STORE)
    if not store.exists():
        raise KeyError(f"no run store at {store.root} (give --store DIR|s3://... or set LLADA_STORE)")
    return store


def _say(msg: str) -> None:
    print(msg, flush=True)


def _finish(store_root: str, run_id: str, records: dict) -> int:
    failed = [n for n, r in records.items() if r["state"] == "FAILED"]
    pending = [n for n, r in records.items() if r["state"] == "PENDING"]
    print(f"\nrun {run_id}: " + ("FAILED: " + ", ".join(failed) if failed else "all nodes finished")
          + (f"; not run (upstream failed): {', '.join(pending)}" if pending else ""))
    print(f"  llada status {run_id} --store {store_root}")
    return EXIT_FAILED if failed or pending else 0


def _cmd_run(args) -> int:
    from llada_recipe.build import start

    run_id, store_root, records = start(args.recipe, args.overrides, run_id=args.run_id, no_cache=args.no_cache,
                                        from_stage=args.from_stage, say=_say)
    return _finish(store_root, run_id, records)


def _cmd_resume(args) -> int:
    from pipelines import runs

    store = _store(args)
    return _finish(store.root, args.run_id, runs.resume(store.root, args.run_id, say=_say))


def status_rows(store: RunStore, run_id: str) -> list[dict]:
    from pipelines import dag

    run = store.run(run_id)
    nodes = dag.from_json(run["nodes"])
    rows = []
    states = {n.name: store.node(run_id, n.name) for n in nodes}
    for node in nodes:
        rec = states[node.name]
        blocked = ([u for u in node.upstream() if states[u]["state"] in ("FAILED", "PENDING")]
                   if rec["state"] == "PENDING" else [])
        rows.append({"node": node.name, "state": store.node_state(run_id, rec), "cache_key": rec.get("cache_key"),
                     "attempts": rec.get("attempts", 0), "seconds": rec.get("seconds"), "started": rec.get("started"),
                     "ended": rec.get("ended"), "mlflow_run_id": rec.get("mlflow_run_id"),
                     "outputs": rec.get("outputs", {}), "cached_from": rec.get("cached_from"), "waiting_on": blocked,
                     "error": rec.get("error"), "traceback": rec.get("traceback")})
    return rows


def _cmd_status(args) -> int:
    store = _store(args)
    rows = status_rows(store, args.run_id)
    if args.json:
        print(json.dumps({"run_id": args.run_id, "run": store.run(args.run_id), "nodes": rows}, indent=2, default=str))
        return 0
    print(f"run {args.run_id}  store {store.root}")
    print(f"{'node':<18}{'state':<16}{'tries':>5}{'seconds':>9}  {'cache key':<14}{'mlflow run':<34}outputs")
    for r in rows:
        outs = ", ".join(f"{k}={v['uri']}" for k, v in r["outputs"].items())
        print(f"{r['node']:<18}{r['state']:<16}{r['attempts']:>5}{r['seconds'] or '':>9}  "
              f"{str(r['cache_key'])[:12]:<14}{str(r['mlflow_run_id'] or ''):<34}{outs}")
        if r["waiting_on"]:
            print(f"{'':<18}waiting on {', '.join(r['waiting_on'])}")
        if r["error"]:
            print(f"{'':<18}error: {r['error']}")
            print("\n".join(f"{'':<20}{line}" for line in (r["traceback"] or "").strip().splitlines()[-8:]))
    return 0


def _cmd_ls(args) -> int:
    store = _store(args)
    for run_id in store.runs():
        doc = store.run(run_id) if store.run_exists(run_id) else {}
        print(f"{run_id:<48}{doc.get('recipe', '?'):<16}{doc.get('created', '')}")
    return 0


def _cmd_plan(args) -> int:
    from llada_recipe.config import load_recipe
    from llada_recipe.plan import format_plan, plan

    p = plan(load_recipe(args.recipe, args.overrides))
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0


def _cmd_lineage(args) -> int:
    from pipelines.lineage import find_artifact, format_lineage, lineage, to_graph

    if args.target.startswith("models:/"):
        from pipelines.models import resolve

        tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking:
            raise KeyError(f"{args.target}: give --tracking-uri (or set MLFLOW_TRACKING_URI) to look it up")
        root, run_id, node = resolve(args.target, tracking)
        args.store = args.store or root
    store = _store(args)
    if args.target.startswith("models:/"):
        doc = lineage(store, run_id, node)
    elif store.run_exists(args.target):
        doc = lineage(store, args.target)
    else:
        run_id, node = find_artifact(store, args.target)
        doc = lineage(store, run_id, node)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(format_lineage(doc, args.sources) if args.format == "text" else to_graph(doc, args.format))
    return 0


def handles(exc: BaseException) -> bool:
    from llada_core.cluster import ClusterError
    from pipelines.dag import DagError
    from pipelines.run_store import LockedError

    return isinstance(exc, DagError | LockedError | KeyError | ClusterError)


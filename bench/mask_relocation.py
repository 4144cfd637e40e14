"""What `export-hf --format llada2 --relocate-mask` changes for a server, measured on a trained model:
the held-out tasks decoded by the server's default decoder (llada_core.server_decode: argmax and
softmax over the full vocabulary) on the trained checkpoint and on its relocated export (imported
back), next to our eval's decoder on the checkpoint. Also the factor the relocation divides every
confidence by, 1 + K e^l_mask / sum_real e^l, over the positions the server decode filled.

  python bench/mask_relocation.py                 # the DPO model of the newest run in work/store
  python bench/mask_relocation.py --ckpt CKPT --tasks work/artifacts/RUN/make_tasks/sft_eval.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def newest_run(store_root: str) -> tuple[str, str]:
    from pipelines.run_store import RunStore

    store = RunStore(store_root)
    for run_id in reversed(store.runs()):
        recs = {n: store.node(run_id, n) for n in ("dpo", "make_tasks")}
        if all(r["state"] in ("SUCCEEDED", "SKIPPED-CACHED") for r in recs.values()):
            return (recs["dpo"]["outputs"]["checkpoint"]["uri"],
                    os.path.join(recs["make_tasks"]["outputs"]["tasks"]["uri"], "sft_eval.jsonl"))
    raise SystemExit(f"no finished run with a dpo node in {store_root}: run `make demo` first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="work/store")
    ap.add_argument("--ckpt")
    ap.add_argument("--tasks")
    ap.add_argument("--format", default="llada2", dest="fmt")
    ap.add_argument("-n", type=int, default=100, help="held-out prompts (default 100)")
    args = ap.parse_args()
    ckpt, tasks = (args.ckpt, args.tasks) if args.ckpt and args.tasks else newest_run(args.store)

    import torch

    from llada_core import masks
    from llada_core.data.chat import encode_prompt
    from llada_core.data.synthetic import check_answer
    from llada_core.evaluate import _read_jsonl, load_model
    from llada_core.sampler import generate
    from llada_core.server_decode import low_confidence_decode
    from stages.model_hf import export_hf, import_hf

    model, tok = load_model(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        info = export_hf(ckpt, f"{tmp}/hf", args.fmt, relocate_mask=True)
        import_hf(f"{tmp}/hf", f"{tmp}/ckpt")
        moved, moved_tok = load_model(f"{tmp}/ckpt")
    K = info["relocated_mask"]["rows_scored_like_mask"]
    rows = _read_jsonl(tasks, args.n)
    stops = {tok.id_of("eot"), tok.id_of("eos")}
    kw = dict(max_new_tokens=32, block_size=32, threshold=0.95)
    scores = {k: [0, 0, 0] for k in ("ours on the checkpoint", "server on the checkpoint", "server on the export")}
    same, factors = 0, []

    def add(key, prompt, tokens, forwards, tokenizer):
        answer = tokenizer.decode([t for t in tokens if t not in {tokenizer.id_of("eot"), tokenizer.id_of("eos")}])
        s = scores[key]
        s[0], s[1], s[2] = s[0] + check_answer(prompt, answer.strip()), s[1] + len(tokens), s[2] + forwards

    for r in rows:
        prompt = encode_prompt(tok, [{"role": "user", "content": r["prompt"]}])
        ours = generate(model, prompt, mask_id=tok.id_of("mask"), eos_id=tok.id_of("eos"), stop_ids=tuple(stops),
                        max_len=model.cfg.max_position, **kw)
        add("ours on the checkpoint", r["prompt"], ours.tokens, ours.forward_passes, tok)
        server = low_confidence_decode(model, prompt, mask_id=tok.id_of("mask"), stop_ids=stops, **kw)
        add("server on the checkpoint", r["prompt"], server.tokens, server.forward_passes, tok)
        exported = low_confidence_decode(moved, encode_prompt(moved_tok, [{"role": "user", "content": r["prompt"]}]),
                                         mask_id=moved_tok.id_of("mask"), stop_ids=stops, **kw)
        add("server on the export", r["prompt"], exported.tokens, exported.forward_passes, moved_tok)
        same += exported.tokens == server.tokens
        seq = torch.tensor([prompt + [tok.id_of("mask")] * (32 - len(prompt) % 32)])  # the first answer block
        logits = model(seq, torch.arange(seq.shape[1])[None], masks.block_causal_mask(torch.zeros_like(seq), 32))
        logits = logits[0, len(prompt):].double()
        mask_logit = logits[:, tok.id_of("mask")].clone()
        logits[:, tok.id_of("mask")] = float("-inf")
        factors += (K * (mask_logit - logits.logsumexp(-1)).exp()).tolist()

    print(f"{len(rows)} held-out prompts of {tasks}; export: {info['architectures'][0]}, vocab {info['vocab_size']}, "
          f"[MASK] {info['relocated_mask']['from']} -> {info['relocated_mask']['to']}, {K} rows score like [MASK]")
    print(f"{'decoder':<28}{'accuracy':>9}{'TPF':>7}")
    for key, (hits, tokens, forwards) in scores.items():
        print(f"{key:<28}{hits / len(rows):>9.3f}{tokens / max(forwards, 1):>7.2f}")
    print(f"server decode, export vs checkpoint: identical answers {same}/{len(rows)}")
    print("K e^l_mask / sum_real e^l at the first answer block's masked positions: "
          f"median {statistics.median(factors):.2e}, max {max(factors):.2e} (confidence divided by 1 + that)")


if __name__ == "__main__":
    main()

"""Batched multiple-choice scorer against the naive loop (one forward pass per context+choice pair).

Both score the same requests (SST-2 validation by default, all 872 examples) with the same model in
the same process; the table shows examples/s and tokens/s of each, the speed-up, and how closely the
two agree (largest log-likelihood difference, identical predictions). Tokens/s counts the tokens each
scorer actually feeds through the model, so the batched one, which runs each context once, does less.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default="tiny_glm", help="a model config name (conf/model)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("AUTOGLM_DATA_DIR"),
        help="folder with <task>/<split>.jsonl (default: $AUTOGLM_DATA_DIR)",
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k-shot", type=int, default=0)
    parser.add_argument("override", nargs="*", help="extra config overrides, e.g. model.path=/my/model")


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.config import compose, resolve_data_dir
    from autoglm_bench.data.tasks import load_task
    from autoglm_bench.lm import load
    from autoglm_bench.prompts import prompt_text, render_examples
    from autoglm_bench.scoring import loglikelihood, loglikelihood_naive

    overrides = [f"task={args.task}", f"model={args.model}", f"prompt.k_shot={args.k_shot}", *args.override]
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    run_cfg = compose(overrides)
    task = load_task(run_cfg.task, resolve_data_dir(run_cfg.data_dir), args.limit)
    examples = render_examples(task, run_cfg.prompt, run_cfg.seed)
    lm = load(run_cfg.model)
    delim = task.cfg.target_delimiter
    requests = [(prompt_text(task.cfg, ex.messages), [delim + c for c in ex.choices]) for ex in examples]

    loglikelihood(lm, requests[: args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up
    loglikelihood_naive(lm, requests[:4], progress=False)
    batched, b_stats = loglikelihood(lm, requests, batch_size=args.batch_size)
    naive, n_stats = loglikelihood_naive(lm, requests)

    diff = max(abs(x - y) for rb, rn in zip(batched, naive) for x, y in zip(rb, rn))
    same = sum(_argmax(rb) == _argmax(rn) for rb, rn in zip(batched, naive))
    print(
        f"scoring benchmark: task={task.name} model={lm.name} device={lm.device} examples={len(requests)} "
        f"choices={sum(len(c) for _, c in requests)} batch_size={args.batch_size}"
    )
    print(f"{'scorer':<10}{'seconds':>10}{'examples/s':>14}{'tokens/s':>14}{'tokens':>12}")
    for name, st in (("batched", b_stats), ("naive", n_stats)):
        print(f"{name:<10}{st.seconds:>10.2f}{st.examples / st.seconds:>14.1f}{st.tokens_per_s:>14.0f}{st.tokens:>12}")
    print(f"speed-up (examples/s, batched / naive): {n_stats.seconds / b_stats.seconds:.1f}x")
    print(f"agreement: max |log-likelihood difference| = {diff:.2e}; identical predictions {same}/{len(requests)}")


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)

"""Ours (model=openai) against lm-eval's ``local-completions``, end to end, on the same server and rows.

``python -m autoglm_bench.bench remote [--task sst2] [--limit N] [--shots K] [--pairs 3] [--model tiny_glm]``

The command starts this project's server (``python -m autoglm_bench.serve model=MODEL serve.port=0``, plus
``--serve KEY=VALUE`` overrides) on 127.0.0.1, warms it up, and times both clients against it, each in a
fresh process from start to exit (imports, tokenizer, every request, results): ours as a user runs it
(``python -m autoglm_bench task=... model=openai model.base_url=...``, no request cache, with
``--concurrency`` requests in flight of ``--prompts-per-request`` prompts each); lm-eval through
``lm_eval.simple_evaluate`` with its ``local-completions`` model (token-id prompts, the model's tokenizer,
``--lmeval-concurrency`` as its ``num_concurrent`` and ``--lmeval-batch-size`` as its ``batch_size``;
defaults 1 and 1, its own defaults) on its own task YAML with only the dataset swapped for the local JSONL
files. Both score the same rows with lm-eval's ``first_n`` demos. The pairs are interleaved (ours first in
even pairs) and the table gives medians and the median of the per-pair ratios, beside the number of
identical predictions and the largest log-likelihood difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny_glm", help="the served model (a conf/model option)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--limit", type=int, default=None, help="only the first N eval rows (both sides)")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (ours, lm-eval) runs")
    parser.add_argument("--concurrency", type=int, default=8, help="ours: model.concurrency")
    parser.add_argument("--prompts-per-request", type=int, default=16, help="ours: model.prompts_per_request")
    parser.add_argument("--lmeval-concurrency", type=int, default=1, help="lm-eval: num_concurrent")
    parser.add_argument("--lmeval-batch-size", type=int, default=1, help="lm-eval: batch_size (prompts per request)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--serve", action="append", default=[], metavar="OVERRIDE", help="extra server override")
    parser.add_argument(
        "--data-dir", default=os.environ.get("AUTOGLM_DATA_DIR"), help="folder with <task>/<split>.jsonl"
    )


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.bench.lmeval import thread_env, write_lmeval_task
    from autoglm_bench.config import ConfigError, compose, resolve_data_dir
    from autoglm_bench.lm.hf import model_path

    if args.pairs < 1 or args.shots < 0 or (args.limit is not None and args.limit < 1):
        raise SystemExit(f"error: need --pairs >= 1, --shots >= 0, --limit >= 1; got {args.pairs}, {args.shots}")
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("error: lm-eval reads the local JSONL files: give --data-dir or set AUTOGLM_DATA_DIR")
    try:
        served = compose([f"model={args.model}", *args.serve])
        tokenizer = model_path(served.model)  # builds tiny_glm's folder if needed: the server's own files
        task = compose([f"task={args.task}"]).task
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    env = {**os.environ, **thread_env(1), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        work = Path(tmp)
        server, root = start_server(args, env, work)
        try:
            task_name = write_lmeval_task(task, data_dir, work / "tasks", args.shots > 0)
            warm_up(root, served.model.name)
            sides = {
                "ours": ours_command(args, root, served.model.name, tokenizer, data_dir, work),
                "lm-eval": lmeval_command(args, root, served.model, tokenizer, task_name, work),
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
            for pair in range(args.pairs):
                for name in sides if pair % 2 == 0 else reversed(sides):
                    runs[name].append(timed(name, sides[name], env, work))
                    print(f"pair {pair + 1}/{args.pairs}: {name} {runs[name][-1]['wall_s']:.1f} s", flush=True)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        finally:
            server.terminate()
            server.wait(timeout=60)
    report(args, served.model.name, runs)


def start_server(args: argparse.Namespace, env: dict[str, str], work: Path) -> tuple[subprocess.Popen, str]:
    """Our server on a free loopback port; its API root."""
    command = [sys.executable, "-m", "autoglm_bench.serve", f"model={args.model}", "serve.port=0"]
    command += [f"threads={args.threads}", *args.serve]
    with (work / "serve.log").open("w") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"error: the server did not start:\n{(work / 'serve.log').read_text()[-3000:]}")
    return proc, line.split(" on ")[1].strip() + "/v1"


def warm_up(root: str, model: str) -> None:
    """One request, so the server has loaded the model before anything is timed."""
    body = json.dumps({"model": model, "prompt": [[1, 2, 3]], "max_tokens": 1, "logprobs": 1, "echo": True})
    request = urllib.request.Request(f"{root}/completions", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        answer.read()


def ours_command(
    args: argparse.Namespace, root: str, model: str, tokenizer: str, data_dir: Path, work: Path
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoglm_bench",
        f"task={args.task}",
        "model=openai",
        f"model.base_url={root}",
        f"model.served_model={model}",
        f"model.tokenizer={tokenizer}",
        f"model.concurrency={args.concurrency}",
        f"model.prompts_per_request={args.prompts_per_request}",
        f"prompt.k_shot={args.shots}",
        "prompt.fewshot_mode=first_n",  # lm-eval's demos (--shots gives lm-eval its first_n sampler)
        "method.cache=false",  # every pair sends everything: no request cache from the pair before
        "logger=none",
        f"data_dir={data_dir}",
        *([f"limit={args.limit}"] if args.limit else []),
        f"hydra.run.dir={work / 'ours'}",
    ]


def lmeval_command(args: argparse.Namespace, root: str, model: Any, tokenizer: str, task: str, work: Path) -> list[str]:
    spec = {
        "base_url": f"{root}/completions",
        "model": model.name,
        "tokenizer": tokenizer,
        "max_length": model.max_length,
        "task": task,
        "task_dir": str(work / "tasks"),
        "limit": args.limit,
        "shots": args.shots,
        "num_concurrent": args.lmeval_concurrency,
        "batch_size": args.lmeval_batch_size,
        "out": str(work / "lmeval.json"),
    }
    return [sys.executable, "-m", "autoglm_bench.bench.remote", json.dumps(spec)]


def timed(name: str, command: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    """Run one side to completion: its wall seconds and per-example log-likelihoods."""
    log = work / f"{name}.log"
    with log.open("w") as out:
        start = time.perf_counter()
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"error: {name} failed (exit {code}):\n{log.read_text()[-4000:]}")
    if name == "ours":
        result = json.loads((work / "ours" / "results.json").read_text())
        lls, cost = [p["scores"] for p in result["predictions"]], result["cost"]
    else:
        result = json.loads((work / "lmeval.json").read_text())
        lls, cost = result["lls"], {}
    return {"wall_s": wall, "lls": lls, "cost": cost}


def report(args: argparse.Namespace, model: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    from autoglm_bench.bench.lmeval import argmax

    ours, theirs = runs["ours"], runs["lm-eval"]
    a, b = ours[0]["lls"], theirs[0]["lls"]
    if len(a) != len(b):
        raise SystemExit(f"error: ours scored {len(a)} examples, lm-eval {len(b)}")
    same = sum(argmax(x) == argmax(y) for x, y in zip(a, b))
    diff = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x, y))
    cost = ours[0]["cost"]
    print(
        f"remote benchmark: server=python -m autoglm_bench.serve model={model} (127.0.0.1, {args.threads} torch "
        f"thread{'s' if args.threads > 1 else ''}) task={args.task} shots={args.shots} examples={len(a)} "
        f"pairs={args.pairs} machine={platform.machine()} {os.cpu_count()} CPUs"
    )
    print(
        f"ours: model.concurrency={args.concurrency} model.prompts_per_request={args.prompts_per_request} "
        f"({cost.get('http_requests')} requests, {cost.get('prompt_tokens')} prompt tokens); "
        f"lm-eval local-completions: "
        f"num_concurrent={args.lmeval_concurrency} batch_size={args.lmeval_batch_size}"
    )
    print(f"{'side':<10}{'wall s':>10}   (median over pairs)")
    for name, rows in runs.items():
        print(f"{name:<10}{statistics.median(r['wall_s'] for r in rows):>10.1f}")
    ratios = [t["wall_s"] / o["wall_s"] for o, t in zip(ours, theirs)]
    print(
        f"speed-up (lm-eval / ours, median of per-pair ratios): end to end {statistics.median(ratios):.2f}x; "
        f"per pair: {', '.join(f'{r:.2f}' for r in ratios)}"
    )
    print(f"agreement: identical predictions {same}/{len(a)}; max |log-likelihood difference| = {diff:.2e}")


def _lmeval_side(spec: dict[str, Any]) -> None:
    """The lm-eval process: its local-completions model against the server, the task, per-example lls."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from autoglm_bench.bench.lmeval import lmeval_loglikelihoods

    lm = LocalCompletionsAPI(
        base_url=spec["base_url"],
        model=spec["model"],
        tokenizer=spec["tokenizer"],
        tokenizer_backend="huggingface",
        max_length=spec["max_length"],
        num_concurrent=spec["num_concurrent"],
        batch_size=spec["batch_size"],
    )
    Path(spec["out"]).write_text(json.dumps({"lls": lmeval_loglikelihoods(lm, spec)}))


if __name__ == "__main__":
    _lmeval_side(json.loads(sys.argv[1]))

"""Ours against lm-evaluation-harness, end to end, on the same model folder and task.

``python -m autoglm_bench.bench lmeval --model-dir DIR [--task sst2] [--limit N] [--shots K] [--pairs 3]``

Each side runs in a fresh process, start to exit (imports, model load, scoring, results): ours as a user
runs it (``python -m autoglm_bench task=... model=hf model.path=DIR``, results.json), lm-eval through
its Python API (``lm_eval.simple_evaluate`` with its ``hf`` model and ``log_samples=True``) on its own
task definition (its task YAML included as is) with only the dataset swapped for the local JSONL files
of the data dir, and only that task indexed (``TaskManager(include_defaults=False)``, lm-eval's fastest
start). Both get the same batch size, float32, the CPU (or GPU) and the same thread count and thread
environment. ``--shots K`` gives both sides lm-eval's ``first_n`` demos (ours:
``prompt.fewshot_mode=first_n``); ours runs without its request cache, so every pair scores everything
(``--ours KEY=VALUE`` adds overrides). The pairs are interleaved (ours first in even
pairs, lm-eval first in odd ones) and the table shows medians and the median of the per-pair ratios,
beside the number of identical predictions (argmax of the per-choice log-likelihoods) and the largest
log-likelihood difference.

``--build-vocab V`` first writes an untrained GLM-4 (hidden 768, 12 layers, 12 heads, 4 KV heads, MLP
2048: 76M parameters besides the embeddings) with a V-token vocabulary into ``--model-dir``: ``4096``
(82M parameters) or GLM-4's ``151552`` (308M). Both use tiny_glm's 4,096-token BPE tokenizer, so only
the embedding and output projection grow. Untrained weights are enough for timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GLM4_80M = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
}
LMEVAL_SOURCES = {"nyu-mll/glue": "glue", "aps/super_glue": "super_glue"}  # our task's hub -> lm-eval folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a Hugging Face causal-LM folder (safetensors)")
    parser.add_argument("--build-vocab", type=int, default=None, help="first build the ~80M GLM-4 there")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--limit", type=int, default=None, help="only the first N eval rows (both sides)")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (ours, lm-eval) runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of both (default: the usable CPUs)")
    parser.add_argument(
        "--data-dir", default=os.environ.get("AUTOGLM_DATA_DIR"), help="folder with <task>/<split>.jsonl"
    )
    parser.add_argument("--ours", action="append", default=[], metavar="OVERRIDE", help="extra config override")


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.config import ConfigError, compose, resolve_data_dir
    from autoglm_bench.threads import choose_threads

    if args.pairs < 1 or args.shots < 0 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise SystemExit(
            f"error: need --pairs >= 1, --shots >= 0, --batch-size >= 1, --limit >= 1; "
            f"got {args.pairs}, {args.shots}, {args.batch_size}, {args.limit}"
        )
    model_dir = Path(args.model_dir).expanduser().resolve()
    if args.build_vocab is not None:
        print(f"built {build_glm4(model_dir, args.build_vocab)}", flush=True)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"error: --model-dir {model_dir} holds no model (config.json); build one with --build-vocab")
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("error: lm-eval reads the local JSONL files: give --data-dir or set AUTOGLM_DATA_DIR")
    task = compose([f"task={args.task}"]).task
    threads = args.threads or choose_threads()
    env = {**os.environ, **thread_env(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    with tempfile.TemporaryDirectory(prefix="lmeval-bench-") as tmp:
        work = Path(tmp)
        try:
            task_name = write_lmeval_task(task, data_dir, work / "tasks", args.shots > 0)
        except ConfigError as exc:
            raise SystemExit(f"error: {exc}") from None
        sides = {
            "ours": ours_command(args, model_dir, data_dir, threads, work),
            "lm-eval": lmeval_command(args, model_dir, task_name, threads, work),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        for pair in range(args.pairs):
            for name in sides if pair % 2 == 0 else reversed(sides):
                runs[name].append(_timed(name, sides[name], env, work))
                print(f"pair {pair + 1}/{args.pairs}: {name} {runs[name][-1]['wall_s']:.1f} s", flush=True)
    _report(args, model_dir, threads, runs)


def thread_env(threads: int) -> dict[str, str]:
    """The thread environment both sides start with."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "RAYON_NUM_THREADS": str(threads)}
    if threads == 1:
        env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def build_glm4(folder: Path, vocab_size: int, seed: int = 0) -> str:
    """Write (once) an untrained ~80M GLM-4 body with a ``vocab_size`` output vocabulary into ``folder``."""
    import torch
    import transformers
    from transformers import Glm4Config, Glm4ForCausalLM

    from autoglm_bench.lm.tiny_glm import train_tokenizer

    transformers.logging.disable_progress_bar()

    if (folder / "config.json").is_file():
        found = json.loads((folder / "config.json").read_text()).get("vocab_size")
        if found != vocab_size:
            raise SystemExit(f"error: {folder} already holds a model with vocab {found}, not {vocab_size}")
        return f"{folder} (already there)"
    tokenizer = train_tokenizer(4096)
    if vocab_size < len(tokenizer):
        raise SystemExit(f"error: --build-vocab {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = Glm4Config(
        vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **GLM4_80M
    )
    torch.manual_seed(seed)
    model = Glm4ForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    return f"{folder}: GLM-4, {n / 1e6:.1f}M parameters, vocab {vocab_size}"


def write_lmeval_task(task: Any, data_dir: Path, folder: Path, first_n: bool) -> str:
    """A task YAML in ``folder`` that includes lm-eval's own definition of ``task`` and swaps only its
    dataset for our local JSONL files; returns its name."""
    import lm_eval

    source = task.source
    family = LMEVAL_SOURCES.get(source.hub)
    included = Path(lm_eval.__file__).parent / "tasks" / str(family) / str(source.hub_config) / "default.yaml"
    if family is None or not included.is_file() or not source.local:
        from autoglm_bench.config import ConfigError

        raise ConfigError(
            f"task {task.name!r} has no lm-eval counterpart with local data here; this benchmark knows the "
            f"GLUE and SuperGLUE tasks ({', '.join(LMEVAL_SOURCES)})"
        )
    files = {split: str(data_dir / source.local.format(split=split)) for split in task.splits.values()}
    name = f"autoglm_{task.name}_local"
    spec = {
        "include": str(included),
        "task": name,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
    }
    if first_n:
        spec["fewshot_config"] = {"sampler": "first_n"}
    folder.mkdir(parents=True)
    (folder / f"{name}.yaml").write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return name


def ours_command(args: argparse.Namespace, model_dir: Path, data_dir: Path, threads: int, work: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoglm_bench",
        f"task={args.task}",
        "model=hf",
        f"model.path={model_dir}",
        "model.dtype=float32",
        f"method.batch_size={args.batch_size}",
        f"prompt.k_shot={args.shots}",
        "prompt.fewshot_mode=first_n",  # lm-eval's demos (--shots gives lm-eval its first_n sampler)
        "method.cache=false",  # every pair scores everything: no request cache from the pair before
        f"data_dir={data_dir}",
        f"threads={threads}",
        *([f"limit={args.limit}"] if args.limit else []),
        *args.ours,
        f"hydra.run.dir={work / 'ours'}",
    ]


def lmeval_command(args: argparse.Namespace, model_dir: Path, task_name: str, threads: int, work: Path) -> list[str]:
    spec = {
        "model_dir": str(model_dir),
        "task": task_name,
        "task_dir": str(work / "tasks"),
        "limit": args.limit,
        "shots": args.shots,
        "batch_size": args.batch_size,
        "threads": threads,
        "out": str(work / "lmeval.json"),
    }
    return [sys.executable, "-m", "autoglm_bench.bench.lmeval", json.dumps(spec)]


def _timed(name: str, command: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    """Run one side to completion; its wall and CPU seconds, scoring seconds and per-example log-likelihoods."""
    log = work / f"{name}.log"  # a file, not a pipe: progress bars would fill a pipe and block the child
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here (for its rusage), not by Popen
    if code != 0:
        raise SystemExit(f"error: {name} failed (exit {code}):\n{log.read_text()[-4000:]}")
    if name == "ours":
        result = json.loads((work / "ours" / "results.json").read_text())
        lls = [p["scores"] for p in result["predictions"]]
        score_s = result["timings"]["eval_s"]
    else:
        result = json.loads((work / "lmeval.json").read_text())
        lls, score_s = result["lls"], result["score_s"]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "score_s": score_s, "lls": lls}


def _report(args: argparse.Namespace, model_dir: Path, threads: int, runs: dict[str, list[dict[str, Any]]]) -> None:
    import platform

    ours, theirs = runs["ours"], runs["lm-eval"]
    config = json.loads((model_dir / "config.json").read_text())
    a, b = ours[0]["lls"], theirs[0]["lls"]
    if len(a) != len(b):
        raise SystemExit(f"error: ours scored {len(a)} examples, lm-eval {len(b)}")
    same = sum(argmax(x) == argmax(y) for x, y in zip(a, b))
    diff = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x, y))
    print(
        f"lmeval benchmark: task={args.task} shots={args.shots} examples={len(a)} model={model_dir.name} "
        f"(vocab {config.get('vocab_size')}, hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} "
        f"layers) batch_size={args.batch_size} threads={threads} pairs={args.pairs} "
        f"machine={platform.machine()} {os.cpu_count()} CPUs"
    )
    print(f"{'side':<10}{'wall s':>10}{'scoring s':>12}{'CPU s':>10}   (medians over pairs)")
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "score_s", "cpu_s")}
        print(f"{name:<10}{med['wall_s']:>10.1f}{med['score_s']:>12.1f}{med['cpu_s']:>10.1f}")
    ratios = {k: [t[k] / o[k] for o, t in zip(ours, theirs)] for k in ("wall_s", "score_s", "cpu_s")}
    print(
        f"speed-up (lm-eval / ours, median of per-pair ratios): end to end {statistics.median(ratios['wall_s']):.2f}x, "
        f"scoring {statistics.median(ratios['score_s']):.2f}x, CPU seconds {statistics.median(ratios['cpu_s']):.2f}x; "
        f"end to end per pair: {', '.join(f'{r:.2f}' for r in ratios['wall_s'])}"
    )
    print(f"agreement: identical predictions {same}/{len(a)}; max |log-likelihood difference| = {diff:.2e}")


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _lmeval_side(spec: dict[str, Any]) -> None:
    """The lm-eval process: load its ``hf`` model, evaluate the task, write per-example log-likelihoods."""
    from autoglm_bench.threads import use_threads

    use_threads(spec["threads"])
    import torch
    from lm_eval.models.huggingface import HFLM

    device = "cuda" if torch.cuda.is_available() else "cpu"  # ours: model.device=auto
    lm = HFLM(pretrained=spec["model_dir"], device=device, dtype="float32", batch_size=spec["batch_size"])
    start = time.perf_counter()
    lls = lmeval_loglikelihoods(lm, spec)
    Path(spec["out"]).write_text(json.dumps({"lls": lls, "score_s": time.perf_counter() - start}))


def lmeval_loglikelihoods(lm: Any, spec: dict[str, Any]) -> list[list[float]]:
    """lm-eval's ``simple_evaluate`` of ``spec["task"]`` (from ``spec["task_dir"]`` only) with its model ``lm``:
    each example's per-choice log-likelihoods, in document order."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[spec["task"]],
        num_fewshot=spec["shots"],
        limit=spec["limit"],
        log_samples=True,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=spec["task_dir"], include_defaults=False),
    )
    samples = sorted(out["samples"][spec["task"]], key=lambda s: s["doc_id"])
    return [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]


if __name__ == "__main__":
    _lmeval_side(json.loads(sys.argv[1]))

"""``python -m autoglm_bench.bench NAME [options]``: run one benchmark (``--help`` for each)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "scoring": "autoglm_bench.bench.scoring",
    "train": "autoglm_bench.bench.train",
    "search": "autoglm_bench.bench.search",
    "task-glm": "autoglm_bench.bench.task_glm",
    "serve": "autoglm_bench.bench.serve",
    "serve-adversarial": "autoglm_bench.bench.serve_adversarial",
    "lmeval": "autoglm_bench.bench.lmeval",
    "remote": "autoglm_bench.bench.remote",
    "shapes-projector": "autoglm_bench.bench.shapes_projector",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autoglm_bench.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, module in BENCHMARKS.items():
        bench = importlib.import_module(module)
        bench.add_arguments(sub.add_parser(name, help=bench.__doc__.splitlines()[0], description=bench.__doc__))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    importlib.import_module(BENCHMARKS[args.name]).run(args)


if __name__ == "__main__":
    main()

"""The methods, on top of the engine: each is a module with ``run(run_cfg, run_dir) -> record`` (its part of
results.json: metrics, predictions, splits, timings, cost, ``device``, ``backend`` and its own fields),
registered here under its ``method.name`` (:class:`autoglm_bench.config.schema.Method`). Modules are
imported when a run asks for them, so torch and Lightning load only for real work."""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY = {
    "evaluate": "autoglm_bench.methods.evaluate",
    "prompt_search": "autoglm_bench.methods.prompt_search",
    "finetune": "autoglm_bench.methods.finetune",
}


def method_of(name: str) -> ModuleType:
    """The module running ``method=name`` (its ``run(run_cfg, run_dir)``).

    >>> method_of("evaluate").__name__
    'autoglm_bench.methods.evaluate'
    """
    return importlib.import_module(REGISTRY[name])

"""Prompt search (``method=prompt_search``): an Optuna study over instruction, template, verbalizer,
number of shots, demo selection and demo order, scored on growing dev minibatches through the SQLite
request cache (:mod:`autoglm_bench.lm.cache`), with the best prompt finally scored on a held-out test split.

- :mod:`.space`: the search space, declared in conf/search/*.yaml, and one trial's prompt (:class:`Candidate`)
- :mod:`.evaluation`: dev/test split, rendering a candidate, scoring it through the cache
- :mod:`.proposal`: OPRO/APE-style instruction proposal by a language model
- :mod:`.study`: samplers, pruners, storage and resume, the objective, the method itself
- :mod:`.outputs`: trials CSV, best prompt, plots
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .study import run_prompt_search


def run(run_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """method=prompt_search (:func:`.study.run_prompt_search`)."""
    return run_prompt_search(run_cfg, run_dir)


__all__ = ["run", "run_prompt_search"]

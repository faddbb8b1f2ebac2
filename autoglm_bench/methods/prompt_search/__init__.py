"""Prompt search (``method=prompt_search``): an Optuna study over instruction, template, verbalizer,
number of shots, demo selection and demo order, scored on growing dev minibatches through the SQLite
request cache (:mod:`autoglm_bench.lm.cache`), with the best prompt finally scored on a held-out test split.

- :mod:`.space`: the search space, declared in conf/search/*.yaml, and one trial's prompt (:class:`Candidate`)
- :mod:`.evaluation`: dev/test split, rendering a candidate, scoring it through the cache
- :mod:`.proposal`: OPRO/APE-style instruction proposal by a language model
- :mod:`.study`: samplers, pruners, storage and resume, the objective, the method itself
- :mod:`.outputs`: trials CSV, best prompt, plots
"""

from .study import run_prompt_search

__all__ = ["run_prompt_search"]

"""Runs -> tables and plots: ``python -m autoglm_bench.report DIR_OR_FILE... --rows task.name --cols method.name``.

Every results.json under the given paths (runs, multiruns, sweeps) with status ``completed`` is loaded
once per content (:mod:`.runs`), grouped by config keys into cells that may differ only in their
replicate keys, and summarised per metric with the seed spread and the example-level standard error
(:mod:`.cells`); ``--baseline`` tests each cell against its row's baseline cell, corrected for the number
of tests (:mod:`.significance`). Views: terminal, Markdown, lm-eval style, CSV (:mod:`.views`), LaTeX
(:mod:`.latex`) and plots (:mod:`.plots`); the command line is :mod:`.__main__`.
"""

"""The run's log lines. Code logs through ``logging.getLogger("autoglm_bench...")``; under the command line
Hydra configures the handlers (conf/hydra/job_logging/autoglm.yaml): the terminal shows INFO and WARNING
lines plain on stdout (the run's output, as before) and errors on stderr as ``error: ...``, and the run
directory's ``<task>.log`` keeps every line with its time, logger and level. Lines logged with
``extra=FILE_ONLY`` (the config summary, milestones) go to the log file only.

>>> import logging
>>> logging.getLogger("autoglm_bench").info("config: task=sst2 ...", extra=FILE_ONLY)
"""

from __future__ import annotations

import logging

FILE_ONLY = {"terminal": False}


class TerminalFilter(logging.Filter):
    """A terminal handler's filter: records not marked file-only, below ERROR (stdout) or from ERROR up
    (``errors=True``, stderr)."""

    def __init__(self, errors: bool = False):
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "terminal", True) and (record.levelno >= logging.ERROR) == self.errors

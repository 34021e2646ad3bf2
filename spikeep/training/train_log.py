"""A run's log: RUN_DIR/train.log (appended across resumes) and, optionally, the terminal."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional


def get_logger(run_dir: Optional[Path], enabled: bool = True, echo: bool = True) -> logging.Logger:
    """A logger writing to run_dir/train.log (appending, so a resumed run keeps its history)."""
    log = logging.getLogger(f"spikeep.run.{run_dir}.{time.time_ns()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not enabled:
        log.addHandler(logging.NullHandler())
        return log
    if run_dir is not None:
        fh = logging.FileHandler(Path(run_dir) / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)
    if echo:
        sh = _Console(sys.stdout)
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    return log


class _Console(logging.StreamHandler):
    """The terminal's copy of the log; a reader that went away (`spikeep train ... | head -1`) ends the
    copy quietly (train.log goes on), instead of a "Logging error" traceback per line."""
    closed_pipe = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.closed_pipe:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            self.closed_pipe = True
            return
        super().handleError(record)


def log_traceback_to_file(log: logging.Logger, message: str) -> None:
    """The current exception's traceback into train.log only (the console gets cli's one line)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, sys.exc_info())
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        h.close()
        log.removeHandler(h)

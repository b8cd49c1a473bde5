"""Progress of a ``verdiff segment`` run on stderr, for people and for programs.

Stages, in order, each reported as ``(stage, done, total)``, first with ``done`` 0 and
last with ``done == total``: ``read``, ``load_model`` (once per model in a batch),
``preprocess``, ``inference`` (``total`` slices, windows for a 3D model; its first report
has total 0: not known yet), ``postprocess``, ``write``. ``pipeline.segment`` itself
reports only ``inference``; the command infers the stage boundaries around it
(``StageTracker``), so the Slicer module's callback and the tests of ``segment`` see the
same calls as before.

Modes (``--progress``):

- ``bar`` (the default on a terminal): one line redrawn in place, with a bar and an ETA
  for the inference stage;
- ``lines`` (the default when stderr is piped or redirected, e.g. a cluster job's log):
  one plain line per finished stage; the quick set-up stages (read, model, preprocess)
  are written together once sampling starts, so a run that fails before sampling writes
  nothing but its one ``verdiff: error: ...`` line;
- ``json``: every report as one JSON object a line,
  ``{"stage": ..., "done": ..., "total": ..., "elapsed_s": ..., "case": ..., "cases": ...}``
  (``elapsed_s``: seconds since the command started; ``case``: 1-based index of the input
  in a batch, ``cases`` how many); lines that do not start with ``{`` are messages
  (``verdiff: warning: ...``, ``verdiff: error: ...``). The Slicer module reads this
  (``read_progress_line``, through ``process.ProcessOutput``);
- ``none`` (``--quiet``): nothing but warnings and errors.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

MODES = ("auto", "bar", "lines", "json", "none")
STAGES = ("read", "load_model", "preprocess", "inference", "postprocess", "write")
# Stages whose lines wait until sampling starts in "lines" mode (see the module docstring).
SETUP_STAGES = ("read", "load_model", "preprocess")
STAGE_WORDS = {
    "read": "read",
    "load_model": "model loaded",
    "preprocess": "preprocessed",
    "inference": "sampled",
    "postprocess": "postprocessed",
    "write": "written",
}


def clock(seconds: float) -> str:
    """``h:mm:ss`` (the ETA format of the CLI and of the training log)."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def bar_text(done: int, total: int, width: int = 20) -> str:
    """``[#####...............]`` for ``done`` of ``total``."""
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Remaining time at the mean rate so far, or None before the first unit is done."""
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * (total - done)


def resolve_mode(mode: str, stream: TextIO) -> str:
    """``auto`` is ``bar`` on a terminal and ``lines`` otherwise."""
    if mode != "auto":
        return mode
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


def read_progress_line(line: str) -> tuple[str, int, int] | None:
    """``(stage, done, total)`` of one ``--progress json`` line; None for a message line
    (``verdiff: warning: ...``) or anything else that is not a progress report."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
        return str(record["stage"]), int(record["done"]), int(record["total"])
    except (ValueError, KeyError, TypeError):
        return None


class ProgressPrinter:
    """Prints the stage reports of one command in the chosen mode; ``case(i, n, name)``
    tells it which input of a batch the next reports belong to."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        if self.mode not in MODES[1:]:
            raise ValueError(f"unknown progress mode {mode!r}; use one of {', '.join(MODES)}")
        self.started = time.perf_counter()
        self.case_index, self.cases, self.case_name = 1, 1, ""
        self._stage_started: dict[str, float] = {}
        self._pending: list[str] = []  # "lines" mode: set-up stages not yet written
        self._bar_shown = False
        self._quarter = 0
        self.unit = "slices"  # "windows" for a 3D model (set by the command)

    def case(self, index: int, cases: int, name: str) -> None:
        self.case_index, self.cases, self.case_name = index, cases, name
        self._pending = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 0 or stage not in self._stage_started:
            self._stage_started[stage] = now
        stage_seconds = now - self._stage_started[stage]
        if self.mode == "json":
            record = {"stage": stage, "done": done, "total": total, "elapsed_s": round(now - self.started, 3)}
            if self.cases > 1:
                record.update(case=self.case_index, cases=self.cases, input=self.case_name)
            self._write(json.dumps(record) + "\n")
        elif self.mode == "bar":
            self._bar(stage, done, total, stage_seconds)
        elif self.mode == "lines":
            self._line(stage, done, total, stage_seconds)

    def _line(self, stage: str, done: int, total: int, stage_seconds: float) -> None:
        if stage == "inference" and done == 0:
            self._pending.append(f"sampling {total} {self.unit}" if total else "sampling")
            self._write(f"verdiff: {self._prefix()}{', '.join(self._pending)}\n")
            self._pending, self._quarter = [], 0
        elif stage == "inference" and 0 < done < total and 4 * done // total > self._quarter:
            self._quarter = 4 * done // total  # a line at each quarter: a long CT shows it is alive
            eta = eta_seconds(done, total, stage_seconds)
            self._write(f"verdiff: {self._prefix()}sampled {done}/{total} {self.unit} ({stage_seconds:.1f} s, eta {clock(eta)})\n")
        elif total and done >= total:
            words = f"sampled {total} {self.unit}" if stage == "inference" else STAGE_WORDS.get(stage, stage)
            line = f"{words} ({stage_seconds:.1f} s)"
            if stage in SETUP_STAGES:
                self._pending.append(line)
            else:
                self._write(f"verdiff: {self._prefix()}{line}\n")

    def _prefix(self) -> str:
        return f"[{self.case_index}/{self.cases}] {self.case_name}: " if self.cases > 1 else ""

    def _bar(self, stage: str, done: int, total: int, stage_seconds: float) -> None:
        if stage == "inference" and total:
            eta = eta_seconds(done, total, stage_seconds)
            text = f"{stage} {bar_text(done, total)} {done}/{total}  {stage_seconds:.1f} s  eta {clock(eta) if eta is not None else '?'}"
        else:
            text = f"{stage}..." if done < total or not total else f"{STAGE_WORDS.get(stage, stage)} ({stage_seconds:.1f} s)"
        self._write(f"\r\033[K{self._prefix()}{text}")
        self._bar_shown = True

    def message(self, text: str) -> None:
        """A warning or error line, never mixed into a bar being redrawn."""
        self.end_line()
        self._write(text.rstrip("\n") + "\n")

    def end_line(self) -> None:
        """Finish a bar line (before other output and at the end of a case)."""
        if self._bar_shown:
            self._write("\r\033[K")
            self._bar_shown = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class StageTracker:
    """Turns ``segment``'s calls into the full stage sequence for ``report``: sampling starts
    at the first ``cancel()`` question (``segment`` asks it before each batch, after the
    preprocessing), so ``preprocess`` ends and ``inference`` starts there (with total 0:
    not known yet); ``postprocess`` starts at the last inference report. Pass the tracker
    as both ``progress`` and ``cancel``; ``cancel_requested`` is what it answers."""

    def __init__(self, report: Callable[[str, int, int], None] | None, cancel_requested: Callable[[], bool] | None = None):
        self.report = report or (lambda stage, done, total: None)
        self.cancel_requested = cancel_requested
        self.sampling = False

    def cancel(self) -> bool:
        if not self.sampling:
            self.sampling = True
            self.report("preprocess", 1, 1)
            self.report("inference", 0, 0)
        return bool(self.cancel_requested and self.cancel_requested())

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.report(stage, done, total)
        if stage == "inference" and total and done >= total:
            self.report("postprocess", 0, 1)

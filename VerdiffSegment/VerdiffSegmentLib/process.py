"""The segmentation as a separate process: ``PythonSlicer -m VerdiffSegmentLib.cli segment ...``.

Why a process, as SlicerNNUNet, SlicerTotalSegmentator and SlicerMONAIAuto3DSeg do: Slicer's
GUI never blocks, Cancel ends the work at once (no waiting for a batch of slices), and a
crash or an out-of-memory error in PyTorch cannot take Slicer down.

The Slicer module starts the command with ``qt.QProcess``; everything about the process
that is not Qt lives here, so the tests drive the same pieces with real processes:

- :func:`python_executable`: ``PythonSlicer`` found on ``PATH`` as SlicerTotalSegmentator
  finds it (Slicer puts its ``bin`` folder there), else this Python (``sys.executable``:
  headless use and tests; inside Slicer it is PythonSlicer too, which SlicerNNUNet uses);
- :func:`segment_command`: the command line of a ``SegmentSettings`` on one input file,
  with ``--progress json`` (one JSON object a line on stderr), ``--json`` (the report on
  stdout) and ``--volumes-only`` (the label map, the uncertainty and the report: the module
  builds its nodes itself, and the child needs neither vtk nor slicer-core);
- :class:`ProcessOutput`: the process's stderr fed as it arrives, in any chunks, turned
  into progress reports and messages; at the end, the report or one clear ``VerdiffError``
  (the ``verdiff: error:`` line, else the last line of stderr, else the exit status);
- :func:`run`: the headless runner (``subprocess``) with the GUI's cancel protocol:
  terminate, then kill after ``TERMINATE_GRACE_SECONDS``.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import Cancelled, VerdiffError
from .progress import read_progress_line
from .settings import SegmentSettings

# How long a terminated process may take to end before it is killed. The CLI has no
# SIGTERM handler (Python's default ends it at once); on Windows, where terminate() only
# asks a window to close, a console process ignores it and the kill follows.
TERMINATE_GRACE_SECONDS = 3.0
ERROR_PREFIX = "verdiff: error: "
WARNING_PREFIX = "verdiff: warning: "
PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder holding VerdiffSegmentLib


def python_executable() -> str:
    """PythonSlicer when Slicer's ``bin`` folder is on ``PATH``, else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


@dataclass(frozen=True)
class Command:
    """A program, its arguments and the environment variables to set for it."""

    program: str
    arguments: list[str]
    environment: dict[str, str] = field(default_factory=dict)

    def full_environment(self) -> dict[str, str]:
        return {**os.environ, **self.environment}


def segment_command(settings: SegmentSettings, input_path: str | Path, output_dir: str | Path, python: str | None = None) -> Command:
    """``python -m VerdiffSegmentLib.cli segment INPUT -o OUTDIR`` with ``settings`` as options.

    ``PYTHONPATH`` gets the folder of this package first, so the child runs this very code
    (Slicer puts the module's folder on its own ``sys.path`` only, not on PythonSlicer's)."""
    path = os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")) if p)
    arguments = ["-m", "VerdiffSegmentLib.cli", "segment", str(input_path), "-o", str(output_dir)]
    arguments += settings.cli_arguments() + ["--progress", "json", "--json", "--volumes-only"]
    return Command(python or python_executable(), arguments, {"PYTHONPATH": path, "PYTHONIOENCODING": "utf-8"})


class ProcessOutput:
    """What a running ``verdiff segment --progress json --json`` says.

    ``feed_stderr(text)`` takes stderr as it arrives (chunks need not end at a line) and
    returns the progress reports ``(stage, done, total)`` completed by it; messages are kept
    (``warnings``, ``last_line``). ``result(exit_code, stdout)`` gives the report, or raises
    one ``VerdiffError`` with what went wrong."""

    def __init__(self):
        self._partial = ""
        self.warnings: list[str] = []
        self.error: str | None = None
        self.last_line = ""
        self.last_progress: tuple[str, int, int] | None = None

    def feed_stderr(self, text: str) -> list[tuple[str, int, int]]:
        lines = (self._partial + text.replace("\r\n", "\n")).split("\n")
        self._partial = lines.pop()
        return [report for report in map(self._line, lines) if report is not None]

    def _line(self, line: str) -> tuple[str, int, int] | None:
        report = read_progress_line(line)
        if report is not None:
            self.last_progress = report
            return report
        line = line.strip()
        if line:
            self.last_line = line
            if line.startswith(ERROR_PREFIX):
                self.error = line[len(ERROR_PREFIX) :]
            elif line.startswith(WARNING_PREFIX):
                self.warnings.append(line[len(WARNING_PREFIX) :])
        return None

    def result(self, exit_code: int | None, stdout: str) -> dict:
        """The report of a finished process (``exit_code`` None: it crashed), or ``VerdiffError``."""
        if self._partial:
            self.feed_stderr("\n")
        if exit_code == 0:
            import json

            try:
                return json.loads(stdout)
            except ValueError:
                raise VerdiffError(f"the segmentation process gave no report (its output began: {stdout[:120]!r})") from None
        if self.error:
            raise VerdiffError(self.error)
        if self.last_line:  # a crash: Python's last traceback line says what it was
            raise VerdiffError(f"the segmentation process failed: {self.last_line}")
        ended = "crashed" if exit_code is None else f"ended with exit status {exit_code}"
        raise VerdiffError(f"the segmentation process {ended} and left no message (out of memory?)")


def run(command: Command, progress: Callable[[str, int, int], None] | None = None, cancel: Callable[[], bool] | None = None, poll_seconds: float = 0.05) -> dict:
    """Run ``command`` (a :func:`segment_command`) to its end and return its report.

    ``progress(stage, done, total)`` gets each report; ``cancel()`` is asked before the start,
    after each report and every ``poll_seconds``: True terminates the process (killed if it
    is still there after ``TERMINATE_GRACE_SECONDS``), no report is passed on after it, and
    ``Cancelled`` is raised. A failed process raises ``VerdiffError`` (``ProcessOutput``)."""
    if cancel is not None and cancel():
        raise Cancelled()
    process = subprocess.Popen(
        [command.program, *command.arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=command.full_environment(),
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    output = ProcessOutput()
    lines: queue.Queue = queue.Queue()
    stdout: list[str] = []

    def read_stderr():
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    # Both pipes are drained at once: a report larger than the pipe's buffer must not block the child.
    readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=lambda: stdout.append(process.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        while True:
            try:
                line = lines.get(timeout=poll_seconds)
            except queue.Empty:
                line = ""
            if cancel is not None and cancel():
                stop(process)
                raise Cancelled()
            if line is None:  # stderr closed: the process is ending
                break
            for report in output.feed_stderr(line):
                if progress is not None:
                    progress(*report)
                if cancel is not None and cancel():
                    stop(process)
                    raise Cancelled()
        exit_code = process.wait()
        for reader in readers:
            reader.join()
    except BaseException:
        stop(process)
        raise
    return output.result(exit_code, "".join(stdout))


def stop(process: subprocess.Popen, grace_seconds: float = TERMINATE_GRACE_SECONDS) -> None:
    """Terminate ``process``, then kill it if it has not ended within ``grace_seconds``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

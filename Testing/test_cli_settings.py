"""The request (``SegmentSettings``, checked in one place against the card) and the
segmentation as a process (``process``: its command line, its progress and errors read
back, the headless runner and its cancel), with real cards and a real ``verdiff`` process."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from conftest import xray_image
from VerdiffSegmentLib import process
from VerdiffSegmentLib.cli import build_parser, ranges_help, settings_from
from VerdiffSegmentLib.errors import Cancelled, VerdiffError
from VerdiffSegmentLib.models import get_card, list_cards
from VerdiffSegmentLib.settings import MAX_ENSEMBLE, SegmentSettings

# ---------------------------------------------------------------------------- settings


def test_the_cards_defaults_fill_what_is_unset():
    card = get_card("verdiff-mr")
    settings = SegmentSettings(device="cpu").for_card(card)
    assert (settings.model, settings.steps, settings.ensemble) == ("verdiff-mr", card.default_steps, card.default_ensemble)
    assert SegmentSettings(steps=7, ensemble=4).for_card(card).steps == 7


@pytest.mark.parametrize("name", [card.name for card in list_cards()])
def test_steps_and_ensemble_are_checked_against_each_cards_range(name):
    card = get_card(name)
    steps_range = card.steps_range()
    if steps_range is None:  # deterministic: one pass, whatever the boxes held
        settings = SegmentSettings(steps=500, ensemble=9).for_card(card)
        assert (settings.steps, settings.ensemble) == (0, 1)
        return
    low, high = steps_range
    assert SegmentSettings(steps=high).for_card(card).steps == high
    for steps in (low - 1, high + 1):
        with pytest.raises(VerdiffError, match=f"sampling steps must be between {low} and {high}, got {steps}"):
            SegmentSettings(steps=steps).for_card(card)
    assert card.ensemble_range() == (1, MAX_ENSEMBLE)


def test_the_verdiff_cards_take_at_most_151_steps_the_other_families_1000():
    assert get_card("verdiff-mr").steps_range() == (1, 151)
    assert get_card("imgx-mr").steps_range() == (1, 1000)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ensemble": 0}, "ensemble size must be between 1 and 32, got 0"),
        ({"ensemble": 33}, "ensemble size must be between 1 and 32, got 33"),
        ({"batch_size": 0}, "batch size must be between 1 and 4096, got 0"),
        ({"seed": -1}, "seed must be between 0 and 2147483647, got -1"),
        ({"steps": "many"}, "steps must be a whole number, got 'many'"),
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
        ({"model": ""}, "model must be a name or auto"),
    ],
)
def test_bad_values_are_one_clear_error_before_any_card(fields, message):
    with pytest.raises(VerdiffError, match=message):
        SegmentSettings(**fields)


def test_settings_are_frozen_and_whole_numbers_are_taken_as_ints():
    import numpy as np

    settings = SegmentSettings(steps=np.int64(3), ensemble=2.0)
    assert settings.steps == 3 and type(settings.steps) is int and type(settings.ensemble) is int
    with pytest.raises(AttributeError):
        settings.steps = 4


@pytest.mark.parametrize("settings", [SegmentSettings(), SegmentSettings("verdiff-xray", 3, 5, "cpu", 11, 16)])
def test_cli_arguments_read_back_to_the_same_settings(settings):
    args = build_parser().parse_args(["segment", "in.nrrd", "-o", "out", *settings.cli_arguments()])
    assert settings_from(args) == settings


def test_help_shows_each_cards_real_steps_range():
    steps_help, ensemble_help = ranges_help()
    assert "1-151 for verdiff-ct, verdiff-mr-2d, verdiff-mr-large-crop, verdiff-mr, verdiff-xray" in steps_help
    assert f"1-{MAX_ENSEMBLE}" in ensemble_help


# ---------------------------------------------------------------------------- process


def test_the_command_runs_this_code_with_machine_readable_output(tmp_path):
    command = process.segment_command(SegmentSettings(steps=2, device="cpu"), tmp_path / "in put.nrrd", tmp_path / "out", python="/opt/Slicer/bin/PythonSlicer")
    assert command.program == "/opt/Slicer/bin/PythonSlicer"
    assert command.arguments[:6] == ["-m", "VerdiffSegmentLib.cli", "segment", str(tmp_path / "in put.nrrd"), "-o", str(tmp_path / "out")]
    assert {"--json", "--volumes-only"} <= set(command.arguments) and command.arguments[command.arguments.index("--progress") + 1] == "json"
    package_parent = command.environment["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(package_parent) / "VerdiffSegmentLib" / "cli.py").is_file()


def test_python_slicer_is_preferred_when_slicer_puts_it_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert process.python_executable() == sys.executable  # headless: this Python
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    assert process.python_executable() == str(launcher)


def test_process_output_reads_progress_from_chunks_and_keeps_messages():
    output = process.ProcessOutput()
    text = (
        '{"stage": "read", "done": 0, "total": 1, "elapsed_s": 0.0}\n'
        "verdiff: warning: the model was trained on CT images\n"
        '{"stage": "inference", "done": 4, "total": 9, "elapsed_s": 1.5}\r\n'
        '{"stage": "write", "done": 1, "total": 1, "elapsed_s": 3.0}'
    )
    reports = [report for start in range(0, len(text), 5) for report in output.feed_stderr(text[start : start + 5])]
    assert reports == [("read", 0, 1), ("inference", 4, 9)]  # the last line is not complete yet
    assert output.warnings == ["the model was trained on CT images"]
    assert output.result(0, '{"model": "verdiff-mr"}') == {"model": "verdiff-mr"}
    assert output.last_progress == ("write", 1, 1)


@pytest.mark.parametrize(
    "stderr, exit_code, message",
    [
        ("verdiff: error: flat.nrrd is constant (every voxel is 7)\n", 2, "^flat.nrrd is constant"),
        ('{"stage": "inference", "done": 1, "total": 9}\nTraceback (most recent call last):\n  File "x"\nRuntimeError: CUDA error: device-side assert\n', 1, "failed: RuntimeError: CUDA error"),
        ("", -9, "ended with exit status -9 and left no message"),
        ("", None, "crashed and left no message"),
    ],
)
def test_a_failed_process_is_one_clear_error(stderr, exit_code, message):
    output = process.ProcessOutput()
    output.feed_stderr(stderr)
    with pytest.raises(VerdiffError, match=message):
        output.result(exit_code, "")


def _processes_using(path: Path) -> list[int]:
    """Running processes whose command line names ``path`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_run_a_real_process_then_cancel_one_mid_run(tmp_path):
    """The headless runner on a held-out X-ray: the report and every stage's progress; then
    a run cancelled once sampling starts ends its process and passes no report on."""
    settings = SegmentSettings(steps=1, ensemble=1, device="cpu")
    stages = []
    report = process.run(process.segment_command(settings, xray_image(), tmp_path / "done"), lambda *report: stages.append(report))
    assert report["model"] == "verdiff-xray" and Path(report["outputs"]["labels"]).is_file()
    assert "segmentation" not in report["outputs"] and "scene" not in report["outputs"]  # --volumes-only
    assert [stage for stage, done, total in stages if done == total and total] == ["read", "load_model", "preprocess", "inference", "postprocess", "write"]

    outdir = tmp_path / "cancelled"
    seen = []
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        process.run(process.segment_command(settings, xray_image(), outdir), lambda *report: seen.append(report), cancel=lambda: any(s[0] == "inference" for s in seen))
    assert seen[-1] == ("inference", 0, 0), f"reports went on after the cancel: {seen}"
    assert _processes_using(outdir) == [], "the cancelled process is still running"
    assert not outdir.exists() or not any(p for p in outdir.iterdir() if not p.name.startswith(".")), "a cancelled run wrote outputs"
    assert time.perf_counter() - started < 120

"""The training command as a researcher drives it: the documented smoke test, one name per
meaning for steps, and a progress line whose ETA leaves validation out."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time

from conftest import REPO
from training.logs import RunLog


def smoke_command() -> list[str]:
    """The smoke-test command exactly as docs/training.md gives it."""
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    section = text[text.index("## Smoke test") :]
    line = next(line for line in section.splitlines() if line.startswith(".venv/bin/python -m training train"))
    return shlex.split(line)[1:]


def test_the_documented_smoke_test_runs_and_prints_what_it_does(tmp_path, data_dir):
    arguments = smoke_command()
    arguments[arguments.index("--out") + 1] = str(tmp_path / "smoke")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *arguments, "--data", str(data_dir)], cwd=REPO, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "validation every 20 steps on the first 1 held-out cases: 1 sampling steps x 2 samples from t=150" in out
    assert "(the bundled card verdiff-mr: 1 x 2 from t=150)" in out
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split()[1] for line in progress] == ["5/20", "10/20", "15/20", "20/20"]
    assert all(re.search(r"loss \d+\.\d+ .* s/step +eta \d+:\d\d:\d\d$", line) for line in progress), progress
    assert re.search(r"validation at step 20: Dice \d\.\d+", out)
    assert (tmp_path / "smoke" / "model.pt").is_file() and "wrote" in out
    assert "deprecated" not in result.stderr
    assert seconds < 300  # "a minute": the docs must not promise a smoke test that takes long


def test_train_steps_is_the_name_and_steps_a_deprecated_alias(tmp_path, data_dir):
    common = ["--batch-size", "2", "--crop", "48", "--limit", "1", "--channels", "8,16,32", "--threads", "1", "--no-tensorboard", "--data", str(data_dir)]
    old = subprocess.run([sys.executable, "-m", "training", "train", "verdiff-mr", "--out", str(tmp_path / "old"), "--steps", "3", *common], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert old.returncode == 0, old.stderr
    assert "deprecated" in old.stderr and "--train-steps" in old.stderr
    assert json.loads((tmp_path / "old" / "summary.json").read_text(encoding="utf-8"))["step"] == 3
    assert "--train-steps" in subprocess.run([sys.executable, "-m", "training", "train", "--help"], cwd=REPO, capture_output=True, text=True).stdout


def test_the_eta_leaves_the_validation_time_out(tmp_path, capsys):
    log = RunLog(tmp_path, total_steps=10, enabled=False)
    log.started = time.time() - 10.0  # 10 s since the start, of which 8 s validating
    log.validation_row(2, {"dice_mean": 0.5, "iou_mean": 0.33}, 0.5, 2, seconds=8.0)
    log.progress(2, "loss 1.0")
    line = capsys.readouterr().out.strip()
    # 2 s of training for 2 steps: 1 s/step and 8 steps left; counting validation it would
    # be 5 s/step and 0:00:40 (a slow machine may add a fraction of a second between calls)
    match = re.search(r"val Dice 0\.5000 +(\d+\.\d+) s/step +eta 0:00:(\d\d)$", line)
    assert match, line
    assert 1.0 <= float(match.group(1)) < 1.5 and 8 <= int(match.group(2)) < 12, line

def test_validation_samples_as_the_bundled_card_unless_told_otherwise():
    from argparse import Namespace

    from training.__main__ import validation_sampling
    from training.configs import recipe_config

    unset = Namespace(val_steps=None, val_ensemble=None, val_start_timestep=None)
    card = json.loads((REPO / "Resources" / "Models" / "verdiff-mr.json").read_text(encoding="utf-8"))
    expected = {"val_steps": card["defaults"]["steps"], "val_ensemble": card["defaults"]["ensemble"], "val_start_timestep": card["scheduler"]["start_timestep"], "val_tiles": None}
    assert validation_sampling(unset, recipe_config("verdiff-mr")) == expected
    # a model without a bundled card of its name and family: the loop's defaults
    assert validation_sampling(unset, recipe_config("verdiff-mr", name="my-model")) == {"val_steps": 5, "val_ensemble": 3, "val_start_timestep": None, "val_tiles": None}
    # the X-ray and CT cards sample in tiles (session 27): their runs validate so, padded as each card pads
    assert validation_sampling(unset, recipe_config("verdiff-xray"))["val_tiles"] == "zeros"
    assert validation_sampling(unset, recipe_config("verdiff-ct"))["val_tiles"] == "none"
    given = Namespace(val_steps=7, val_ensemble=None, val_start_timestep=None)
    assert validation_sampling(given, recipe_config("verdiff-mr"))["val_steps"] == 7


def test_a_config_run_continues_a_bundled_card_of_its_own_architecture(tmp_path, data_dir):
    """``train --config training/verdiff-ct-all.toml --init Resources/Models/verdiff-ct.pt``: the
    card beside the weights fixes family and channels, which the config names too; it trains
    (2 real steps on both CTs). An --init card of another architecture is refused, naming both."""
    common = ["-m", "training", "train", "--config", "training/verdiff-ct-all.toml", "--train-steps", "2", "--batch-size", "2", "--crop", "64",
              "--val-every", "0", "--threads", "1", "--no-tensorboard", "--data", str(data_dir)]
    ran = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "ct"), "--init", "Resources/Models/verdiff-ct.pt"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert json.loads((tmp_path / "ct" / "summary.json").read_text(encoding="utf-8"))["step"] == 2
    wrong = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "mr"), "--init", "Resources/Models/verdiff-mr.pt"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "16,32,64,128" in wrong.stderr and "8,16,32,64" in wrong.stderr, wrong.stderr

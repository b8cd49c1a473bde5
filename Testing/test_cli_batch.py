"""``verdiff segment`` on several inputs: a folder of images, one bad file, shards."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from conftest import MR_IMAGE
from VerdiffSegmentLib.cli import case_names, expand_inputs, shard_of


def verdiff(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "VerdiffSegmentLib.cli", *map(str, args)], capture_output=True, text=True, timeout=900)


def cohort(folder: Path) -> Path:
    """Two real MR slabs (different slices of a held-out subject) and a file that is no image."""
    folder.mkdir()
    volume = sitk.ReadImage(str(MR_IMAGE))
    sitk.WriteImage(volume[:, :, 26:46], str(folder / "case_a.nii.gz"))
    sitk.WriteImage(volume[:, :, 32:52], str(folder / "case_b.nrrd"))
    (folder / "broken.nii.gz").write_text("not an image\n")
    (folder / "notes.txt").write_text("not an input: no image suffix\n")
    return folder


def test_a_batch_with_one_bad_file_gives_the_other_results_and_fails(tmp_path):
    folder = cohort(tmp_path / "cohort")
    outdir = tmp_path / "out"
    result = verdiff("segment", folder, "-o", outdir, "--steps", "1", "--ensemble", "1", "--progress", "json")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("verdiff: error: ")]
    assert len(errors) == 1 and "broken" in errors[0] and "cannot read" in errors[0], result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {r["case"] for r in records} == {1, 2, 3} and all(r["cases"] == 3 for r in records)
    assert sum(r["stage"] == "load_model" and r["done"] == 1 for r in records) == 1  # the model is loaded once

    assert sorted(p.name for p in outdir.iterdir()) == ["case_a", "case_b", "summary.csv", "summary.json"]
    for case in ("case_a", "case_b"):
        report = json.loads((outdir / case / f"{case}.json").read_text(encoding="utf-8"))
        assert Path(report["outputs"]["labels"]).parent == (outdir / case).resolve()
        assert sitk.ReadImage(report["outputs"]["labels"]).GetSize() == (224, 224, 20)
    summary = json.loads((outdir / "summary.json").read_text(encoding="utf-8"))
    assert (summary["cases"], summary["succeeded"], summary["failed"]) == (3, 2, 1)
    status = {case["case"]: case["status"] for case in summary["results"]}
    assert status == {"broken": "failed", "case_a": "ok", "case_b": "ok"}
    failed = next(case for case in summary["results"] if case["status"] == "failed")
    assert "cannot read" in failed["error"]
    with open(outdir / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # one row per case and segment (a case has a segment per vertebra, issue 15), cases in order
    assert list(dict.fromkeys((row["case"], row["status"]) for row in rows)) == [("broken", "failed"), ("case_a", "ok"), ("case_b", "ok")]
    ok = [row for row in rows if row["status"] == "ok"]
    assert all(row["unit"] == "mm3" and float(row["size"]) > 0 and float(row["mean_uncertainty"]) >= 0 for row in ok)
    # each segment's level as its case's report gives it (an MR slab: named by count or not at all, no posterior)
    reports = {case: json.loads((outdir / case / f"{case}.json").read_text(encoding="utf-8")) for case in ("case_a", "case_b")}
    assert [(row["level"], row["level_source"], row["level_posterior"]) for row in ok] == [
        (s["level"] or "", s["level_source"] or "", "") for case in ("case_a", "case_b") for s in reports[case]["segments"]]
    assert "2 of 3 succeeded, 1 failed" in result.stdout


def test_shards_split_the_sorted_inputs_the_same_way_everywhere(tmp_path):
    folder = cohort(tmp_path / "cohort")
    inputs = expand_inputs([folder / "case_b.nrrd", folder])  # a file named twice counts once
    assert [p.name for p in inputs] == ["broken.nii.gz", "case_a.nii.gz", "case_b.nrrd"]
    parts = [shard_of(inputs, (k, 2)) for k in (1, 2)]
    assert sorted(parts[0] + parts[1]) == inputs and not set(parts[0]) & set(parts[1])
    assert [p.name for p in shard_of(inputs, (2, 2))] == ["case_a.nii.gz"]
    assert case_names([Path("a/x.nii.gz"), Path("b/x.nrrd"), Path("c/y.png")]) == ["x", "x-2", "y"]

    outdir = tmp_path / "out"
    result = verdiff("segment", folder, "-o", outdir, "--shard", "2/2", "--steps", "1", "--ensemble", "1", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["shard"] == "2/2" and [case["case"] for case in summary["results"]] == ["case_a"]
    assert sorted(p.name for p in outdir.iterdir()) == ["case_a", "summary-2-of-2.csv", "summary-2-of-2.json"]
    bad = verdiff("segment", folder, "-o", outdir, "--shard", "3/2")
    assert bad.returncode == 2 and "1 <= K <= N" in bad.stderr

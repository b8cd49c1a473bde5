"""Nothing breaks it, nothing is lost (issue 14), through the real ``verdiff`` command:

- the battery of bad inputs, model folders, options and output folders of
  ``benchmarks/reliability.py`` (the rows it marks ``covered_by`` run in test_cli_errors.py);
- grey images saved as RGB and 16-bit PNGs are accepted;
- SIGKILL at several moments of a run leaves no partial output, and the next run cleans up;
- a set of outputs left half-committed by a kill is finished by the next run;
- a full disk, or a kill during a second run's write, keeps the first run's outputs;
- two runs into the same folder at once end with one complete, consistent set;
- a localiser beside a DICOM volume and a thin sagittal slab are still accepted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, xray_image

sys.path.insert(0, str(REPO / "benchmarks"))
import reliability  # noqa: E402  (benchmarks/ is not a package)

from VerdiffSegmentLib.outputs import COMMIT_PREFIX, staged_outputs  # noqa: E402

OWN_CASES = [case for case in reliability.CASES if not case.covered_by]


@pytest.mark.parametrize("case", OWN_CASES, ids=[case.kind for case in OWN_CASES])
def test_bad_input_is_one_clear_error_and_leaves_nothing(case, tmp_path, data_dir):
    outcome = reliability.run_case(case, tmp_path)
    assert outcome.passed, f"{outcome.observed} -- {outcome.problems}"


def test_the_battery_has_at_least_25_kinds():
    assert len(reliability.CASES) >= 25


def verdiff(*args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "VerdiffSegmentLib.cli", "segment", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, **popen)


def finished(process, timeout=600):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return stdout


def visible(outdir: Path) -> list[str]:
    return sorted(p.name for p in outdir.iterdir() if not p.name.startswith(".")) if outdir.is_dir() else []


def assert_consistent_set(outdir: Path, stem: str):
    """The JSON summary lists files that exist, and its statistics are those of the label map
    and uncertainty beside it: the set comes from one run."""
    report = json.loads((outdir / f"{stem}.json").read_text(encoding="utf-8"))
    for path in report["outputs"].values():
        assert Path(path).is_file(), path
    labels = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"]))
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["uncertainty"]))
    for segment in report["segments"]:
        inside = labels == segment["value"]
        assert int(inside.sum()) == segment["voxels"]
        if segment["voxels"]:
            assert abs(float(uncertainty[inside].mean()) - segment["mean_uncertainty"]) < 1e-5
    return report


@pytest.mark.parametrize("name", ["grey saved as RGB", "16-bit grey"])
def test_rgb_grey_and_16_bit_pngs_are_accepted(name, tmp_path, data_dir):
    grey = sitk.GetArrayFromImage(sitk.ReadImage(str(reliability.SAGITTAL_PNG)))
    if name == "grey saved as RGB":
        image = sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1).astype(np.uint8), isVector=True)
    else:
        image = sitk.GetImageFromArray(grey.astype(np.uint16) * 257)
    path = tmp_path / "slice.png"
    sitk.WriteImage(image, str(path))
    assert sitk.ReadImage(str(path)).GetPixelID() == (sitk.sitkVectorUInt8 if name == "grey saved as RGB" else sitk.sitkUInt16)
    finished(verdiff(path, "-o", tmp_path / "out", "--model", "verdiff-xray"))
    assert_consistent_set(tmp_path / "out", "slice")


def test_sigkill_at_any_moment_leaves_no_partial_output(tmp_path, data_dir):
    """Kill a run of a real held-out X-ray at 0.5 and 2 s and while it writes (its staging
    folder has appeared): OUTDIR never shows a partial set; the next run completes and
    removes what the killed runs left. The X-ray (about 4 s a run on one thread) rather than
    the MR (about 20 s): the same commit path, six runs, a minute less of CI."""
    image = xray_image()
    stem = image.name.removesuffix(".jpg")
    outdir = tmp_path / "out"
    complete = sorted([f"{stem}.json", f"{stem}.mrb", f"{stem}.seg.nrrd", f"{stem}_labels.nrrd", f"{stem}_uncertainty.nrrd"])
    for moment in (0.5, 2.0, "writing"):
        process = verdiff(image, "-o", outdir)
        if moment == "writing":
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None:
                if outdir.is_dir() and any(p.name.startswith(".verdiff-staging-") for p in outdir.iterdir()):
                    break
                time.sleep(0.005)
        else:
            time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL, f"the run ended before the kill at {moment}"
        shown = visible(outdir)
        left_half_committed = outdir.is_dir() and any(p.name.startswith(COMMIT_PREFIX) for p in outdir.iterdir())
        assert shown == [] or shown == complete or (left_half_committed and f"{stem}.json" not in shown), (moment, shown)
    finished(verdiff(image, "-o", outdir))
    assert sorted(p.name for p in outdir.iterdir()) == complete  # nothing hidden left either
    assert_consistent_set(outdir, stem)

    # A kill while a second run writes leaves the first run's set as it was, byte for byte.
    earlier = {name: (outdir / name).read_bytes() for name in complete}
    process = verdiff(image, "-o", outdir, "--seed", "1")
    while process.poll() is None and not any(p.name.startswith(".verdiff-staging-") for p in outdir.iterdir()):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert {name: (outdir / name).read_bytes() for name in visible(outdir)} == earlier


def test_a_half_committed_set_is_finished_by_the_next_run(tmp_path):
    """The state a kill inside the commit's renames leaves (a complete set in a commit folder,
    some of it already moved over an older set, the old JSON deleted) is rolled forward."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "S_labels.nrrd").write_text("old")
    committed = outdir / f"{COMMIT_PREFIX}abc"
    committed.mkdir()
    (committed / "S_uncertainty.nrrd").write_text("new")
    (committed / "S.json").write_text('{"run": "new"}')
    (outdir / "S.mrb").write_text("new")  # moved in before the kill
    with staged_outputs(outdir) as staging:
        (staging / "T.json").write_text("{}")
    assert sorted(p.name for p in outdir.iterdir()) == ["S.json", "S.mrb", "S_labels.nrrd", "S_uncertainty.nrrd", "T.json"]
    assert (outdir / "S_uncertainty.nrrd").read_text(encoding="utf-8") == "new" and json.loads((outdir / "S.json").read_text(encoding="utf-8")) == {"run": "new"}


def test_a_failed_write_keeps_the_earlier_outputs(tmp_path):
    outdir = tmp_path / "out"
    with staged_outputs(outdir) as staging:
        (staging / "S.json").write_text("first")
    with pytest.raises(ZeroDivisionError):
        with staged_outputs(outdir) as staging:
            (staging / "S.json").write_text("second")
            1 / 0
    assert sorted(p.name for p in outdir.iterdir()) == ["S.json"] and (outdir / "S.json").read_text(encoding="utf-8") == "first"


def test_a_full_disk_keeps_the_earlier_outputs(tmp_path, data_dir):
    """A 3 MiB file system: a first run fits; the disk is then filled and a second run into
    the same folder fails with one clear line, leaving the first run's set byte for byte."""
    mount = tmp_path / "disk"
    try:
        unmount = reliability.mounted_tmpfs(mount, "size=3m")
    except reliability.Skip as reason:
        pytest.skip(str(reason))
    try:
        source = reliability.write(reliability.mr_small(), tmp_path / "mr.nii.gz")
        outdir = mount / "out"
        finished(verdiff(source, "-o", outdir, "--steps", "1", "--ensemble", "1"))
        earlier = {p.name: p.read_bytes() for p in outdir.iterdir()}
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(bytes(max(0, free - 200_000)))
        process = verdiff(source, "-o", outdir, "--steps", "1", "--ensemble", "1", "--seed", "1")
        _, stderr = process.communicate(timeout=600)
        # a full disk shows only when writing, after the plain progress lines of a piped run
        lines = [line for line in stderr.splitlines() if line.strip() and not reliability.is_progress_line(line)]
        assert process.returncode == 2 and len(lines) == 1 and "no space left" in lines[0].lower(), stderr
        assert {p.name: p.read_bytes() for p in outdir.iterdir()} == earlier
    finally:
        unmount()


def test_two_runs_into_one_folder_end_with_one_consistent_set(tmp_path, data_dir):
    """Two different images with the same stem, started together into one OUTDIR: both
    succeed (the second waits for the first's lock), and the set left is one run's."""
    image = reliability.mr_small()
    inputs = []
    for name, picture in (("a", image), ("b", sitk.Flip(image, [False, True, False]))):
        (tmp_path / name).mkdir()
        inputs.append(reliability.write(picture, tmp_path / name / "mr.nii.gz"))
    outdir = tmp_path / "out"
    processes = [verdiff(path, "-o", outdir, "--steps", "1", "--ensemble", "1") for path in inputs]
    for process in processes:
        finished(process)
    assert sorted(p.name for p in outdir.iterdir()) == ["mr.json", "mr.mrb", "mr.seg.nrrd", "mr_labels.nrrd", "mr_uncertainty.nrrd"]
    report = assert_consistent_set(outdir, "mr")
    assert report["input"] in {str(p.resolve()) for p in inputs}
    shutil.rmtree(outdir)


def test_a_localiser_beside_the_volume_is_skipped_and_a_thin_sagittal_slab_is_accepted(tmp_path, data_dir):
    """The refusals above stop where the input is still meaningful: a 2-slice localiser series
    in the volume's folder is skipped (only several volumes are ambiguous), and a 2-slice
    sagittal slab is segmented slice by slice."""
    from VerdiffSegmentLib.io import check_image, read_image

    volume = reliability.mr_small()
    folder = reliability.write_dicom_series(volume, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1.444", prefix="v")
    reliability.write_dicom_series(volume[:, :, :2], folder, "1.2.826.0.1.3680043.2.1125.1.555", prefix="scout")
    assert read_image(folder).GetSize() == volume.GetSize()
    check_image(volume[:, :, 10:12], "slab")  # the third axis of VB3_17 is left-right

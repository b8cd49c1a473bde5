"""Shared fixtures: the real development data beside the checkout, and the bundled models."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MODELS = REPO / "Resources" / "Models"

MR_IMAGE = DATA / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"  # a held-out subject
MR_LABELS = DATA / "mr-lumbar-vb3" / "VB3_17_seg.nii.gz"
CT_IMAGE = DATA / "ct-chest" / "cxr_ct_int16.nii.gz"
CT_LABELS = DATA / "ct-chest" / "mask.nii.gz"


def pytest_configure(config):
    """The README's command runs the tests in two processes (pytest-xdist, one per core of the
    machines CI runs on):
    - one torch thread in each and in the programs they start, or the two thread pools fight
      over the cores and the run is slower than one process;
    - a temporary folder of its own for each (``TMPDIR``, which the programs they start
      inherit): tests check that a run leaves no temporary folder behind, and must not see the
      other process's runs."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        folder = tempfile.mkdtemp(prefix=f"verdiff-tests-{worker}-")
        os.environ["TMPDIR"] = tempfile.tempdir = folder
        config._verdiff_temporary_folder = folder


def pytest_unconfigure(config):
    folder = getattr(config, "_verdiff_temporary_folder", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def copy_models(folder: Path, names=None) -> Path:
    """A scratch models folder a test may change: ``folder`` with the bundled models' files
    copied into it, all of them (``names`` None) or those named; a name without a suffix is a
    card, its .json and .pt both."""
    if names is None:
        shutil.copytree(MODELS, folder)
        return folder
    folder.mkdir(parents=True)
    for name in names:
        for file in [name] if Path(name).suffix else [f"{name}.json", f"{name}.pt"]:
            shutil.copy(MODELS / file, folder / file)
    return folder


def drop_from_card(folder: Path, name: str, key: str) -> None:
    """The card ``name`` in a scratch models folder without its entry ``key`` (e.g. the
    X-ray card without its outline network: the pipeline as it was before that step)."""
    path = folder / f"{name}.json"
    card = json.loads(path.read_text())
    del card[key]
    path.write_text(json.dumps(card))


def flip_a_byte(path: Path) -> None:
    """Tamper with a file: its middle byte inverted (same size, another sha256)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def xray_image() -> Path:
    """A held-out AASCE image (file names contain spaces)."""
    from VerdiffSegmentLib.models import read_card

    name = read_card(MODELS / "verdiff-xray.json").validation_cases[0]
    return DATA / "xray-aasce" / "data" / "training" / f"{name}.jpg"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the development data is missing: {DATA}")
    return DATA


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: bit-exact comparisons need the same thread count
    in every run (the CLI runs use --threads 1), and tiny trainings run faster on one.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""The pure core runs where neither vtk nor Slicer is installed (issue 12): every module
outside ``VerdiffSegmentLib.slicer_bound`` imports, and ``verdiff segment --volumes-only``
(the Slicer module's process) segments a real X-ray, in a Python whose import system
refuses ``vtk`` and ``slicer`` (and Qt/CTK)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, xray_image

BLOCKED = ("vtk", "vtkmodules", "slicer", "qt", "ctk", "PythonQt", "MRMLCorePython")

# Runs in the child: the blocker first, then the core.
CHILD = r"""
import importlib, json, pkgutil, sys

BLOCKED = set(%(blocked)r)

class Refuse:
    # A meta-path finder ahead of every other: these packages are "not installed".
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Refuse())
sys.path.insert(0, %(module_dir)r)

import VerdiffSegmentLib
imported, fenced = [], []
for info in pkgutil.walk_packages(VerdiffSegmentLib.__path__, "VerdiffSegmentLib."):
    if info.name.startswith("VerdiffSegmentLib.slicer_bound"):
        fenced.append(info.name)
        continue
    importlib.import_module(info.name)
    imported.append(info.name)

# The fence holds the other way too: the Slicer-bound modules do need what is blocked.
refused = []
for name in ("VerdiffSegmentLib.slicer_bound.mrml", "VerdiffSegmentLib.slicer_bound.slicer_logic"):
    try:
        importlib.import_module(name)
    except ImportError:
        refused.append(name)

import contextlib, io, tempfile
import torch
torch.set_num_threads(1)
from VerdiffSegmentLib import cli

# The command line's segment path, as the Slicer module's process runs it (--volumes-only).
stdout = io.StringIO()
with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(stdout):
    code = cli.main(["segment", %(xray)r, "-o", out, "--volumes-only", "--steps", "1", "--ensemble", "1", "--device", "cpu", "--json", "--progress", "none"])
report = json.loads(stdout.getvalue())
print(json.dumps({
    "imported": imported,
    "fenced": fenced,
    "refused": refused,
    "exit": code,
    "model": report["model"],
    "outputs": sorted(report["outputs"]),
    "found": sum(s["voxels"] for s in report["segments"]),
    "loaded": sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED),
}))
"""


def test_the_core_imports_and_segments_without_vtk_and_slicer():
    code = CHILD % {"blocked": BLOCKED, "module_dir": str(REPO / "VerdiffSegment"), "xray": str(xray_image())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("networks", "schedulers", "inferers", "pipeline", "cli", "models", "io", "settings", "process", "progress", "outputs"):
        assert f"VerdiffSegmentLib.{name}" in report["imported"], (name, report["imported"])
    assert {"VerdiffSegmentLib.slicer_bound.mrml", "VerdiffSegmentLib.slicer_bound.slicer_logic"} <= set(report["fenced"])
    assert report["refused"] == ["VerdiffSegmentLib.slicer_bound.mrml", "VerdiffSegmentLib.slicer_bound.slicer_logic"], "the blocker let vtk or slicer in"
    assert report["loaded"] == []
    assert report["exit"] == 0 and report["model"] == "verdiff-xray"
    assert report["outputs"] == ["labels", "report", "uncertainty"]
    assert report["found"] > 0, "the X-ray model found no vertebra on a held-out X-ray"

"""What the Slicer module needs in Slicer's Python, and installing it as SlicerTotalSegmentator
and SlicerNNUnet do: PyTorch through the PyTorch extension's ``PyTorchUtils`` (it picks the
build that fits the GPU), the rest through ``slicer.util.pip_install``.

Slicer-bound (``slicer.util``, ``PyTorchUtils``), not Qt: the module file passes its own
translated confirmation dialog and turns ``NoPyTorchExtension`` into its translated message.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

TORCH_REQUIREMENT = ">=2.1"
# numpy and SimpleITK ship with Slicer: listed so that a broken Python is repaired the same way.
PIP_REQUIREMENTS = {"numpy": "numpy", "SimpleITK": "SimpleITK"}  # module name -> pip requirement


class NoPyTorchExtension(Exception):
    """PyTorch is missing and the PyTorch extension (PyTorchUtils) is not installed."""


def missing() -> list[str]:
    """The requirements whose modules cannot be imported ("torch" first when it is one)."""
    importlib.invalidate_caches()
    return [requirement for module, requirement in (("torch", "torch"), *PIP_REQUIREMENTS.items()) if importlib.util.find_spec(module) is None]


def install(confirm_pip: Callable[[list[str]], bool], ask_confirmation: bool = True) -> bool:
    """Install what is missing; True when everything is there afterwards, False when the
    user declined. ``confirm_pip(requirements)`` asks before pip runs (with ``ask_confirmation``)."""
    import slicer

    needed = missing()
    if "torch" in needed:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise NoPyTorchExtension() from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled() and torch_logic.installTorch(askConfirmation=ask_confirmation, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    rest = [requirement for requirement in needed if requirement != "torch"]
    if rest:
        if ask_confirmation and not confirm_pip(rest):
            return False
        slicer.util.pip_install(rest)
    return not missing()

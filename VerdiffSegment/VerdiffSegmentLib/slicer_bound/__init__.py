"""The Slicer-bound layer: the code that needs Slicer's libraries (``vtk`` and the MRML
classes of ``slicer``, from slicer-core headless or from 3D Slicer itself), fenced off
from the pure core (networks, schedulers, inferers, pipeline, models, io, cli's segment
path), which needs neither and is checked to import without them
(``Testing/test_core_without_slicer.py``).

- ``mrml``: Slicer files (``.seg.nrrd``, ``.mrb``) and nodes built with real MRML classes;
- ``slicer_logic``: the Slicer module's logic without Qt: a volume node in, the
  ``verdiff segment`` process run on it, its outputs put into a scene in one go;
- ``dependencies``: what the module needs in Slicer's Python, installed the Slicer way
  (PyTorchUtils, ``slicer.util.pip_install``);
- ``testing``: test bodies shared by the headless pytest suite and ``Slicer --testing``.

Why the name ``slicer_bound`` and not ``slicer``: inside this folder ``import slicer``
must mean Slicer's own package. Python 3's absolute imports would still find the real one,
but a reader (and any tool that puts a package folder on ``sys.path``, as running a file
of it as a script does) would see two things called ``slicer``; ``scene`` was the other
candidate, but every function here already has a parameter called ``scene``.
"""

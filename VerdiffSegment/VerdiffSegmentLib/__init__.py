"""VerdiffSegmentLib: the Qt-free core of the VerdiffSegment Slicer extension.

Sub-packages by concern (as MONAI does): ``networks`` (PyTorch models), ``schedulers``
(diffusion processes, one algorithm per file), ``inferers`` (sagittal slicing and the
ensemble sampler), plus ``io`` (reading and validating images), ``models`` (bundled
weights and their cards), ``pipeline`` (image in, segmentation and uncertainty out),
``settings`` (what a segmentation request carries, checked against the card), ``process``
(the segmentation as a separate ``verdiff segment`` process) and ``cli`` (the ``verdiff``
command). ``slicer_bound`` fences off the code that needs Slicer's libraries (vtk and
MRML: Slicer files, the module's logic on a scene); nothing outside it imports them at
module level, so the rest runs where neither is installed.
"""

__version__ = "0.1.0"

from .errors import VerdiffError  # noqa: E402,F401

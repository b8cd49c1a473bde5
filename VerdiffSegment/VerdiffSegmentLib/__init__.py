"""VerdiffSegmentLib: the Qt-free core of the VerdiffSegment Slicer extension.

Sub-packages by concern (as MONAI does): ``networks`` (PyTorch models), ``schedulers``
(diffusion processes, one algorithm per file), ``inferers`` (sagittal slicing and the
ensemble sampler), plus ``io`` (reading and validating images), ``models`` (bundled
weights and their cards), ``pipeline`` (image in, segmentation and uncertainty out),
``mrml`` (Slicer outputs through slicer-core) and ``cli`` (the ``verdiff`` command).
"""

__version__ = "0.1.0"

from .errors import VerdiffError  # noqa: E402,F401

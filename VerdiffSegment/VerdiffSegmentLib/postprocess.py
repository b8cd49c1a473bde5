"""What the third dimension (and the spine's shape) adds after sampling (issue 16, "use the volume").

Two steps, each on the label map on the sagittal grid (slices, rows, columns) before it is
mapped back onto the input grid, each switched on per model by its card's ``postprocess``
section, where it was measured to help (figures in ``docs/experiments.md``):

- ``spine_bridge_mm``: keep the spine, drop what lies apart from it. Connected components
  (26-connected in a volume, 8 in a plane) are grown from the largest one: a component is
  kept when it comes within ``spine_bridge_mm`` of what is already kept, until nothing
  more is added. Vertebral bodies are separate components, a disc (about 10 mm in the
  lumbar spine, less above) apart, so the chain of bodies survives while false
  structures far from it (bowel, skin folds, the image's edge) go. Distances are in mm on
  the grid's own spacing (pixels for images without spacing).
- ``fill_holes``: fill holes of each label in each sagittal slice (a body's marrow is
  bone, whatever its signal).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

MAX_ROUNDS = 64  # a chain of 26 bodies needs 25 rounds; more means something else is wrong


def keep_spine(labels: np.ndarray, spacing, bridge_mm: float) -> np.ndarray:
    """``labels`` with every component farther than ``bridge_mm`` from the spine chain set to 0
    (module docstring). ``spacing`` per numpy axis."""
    foreground = labels > 0
    structure = ndi.generate_binary_structure(labels.ndim, labels.ndim)
    components, count = ndi.label(foreground, structure)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = np.zeros(count + 1, bool)
    kept[int(sizes.argmax())] = True
    # one bounding box around all foreground keeps the distance transforms small
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(foreground))
    local = components[box]
    for _ in range(MAX_ROUNDS):
        distance = ndi.distance_transform_edt(~kept[local], sampling=spacing)
        near = np.unique(local[(distance <= bridge_mm) & (local > 0)])
        if kept[near].all():
            break
        kept[near] = True
    return np.where(kept[components], labels, 0).astype(labels.dtype)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Each label's holes filled in every 2D slice along the first axis (a plane: the plane)."""
    out = labels.copy()
    planes = out[None] if out.ndim == 2 else out
    for index in range(planes.shape[0]):
        plane = planes[index]
        for value in np.unique(plane):
            if value:
                filled = ndi.binary_fill_holes(plane == value)
                plane[filled & (plane == 0)] = value
    return out


def postprocess(labels: np.ndarray, spacing, settings: dict | None) -> np.ndarray:
    """Apply a card's ``postprocess`` settings (``spine_bridge_mm``, ``fill_holes``) to a label map."""
    if not settings:
        return labels
    if settings.get("spine_bridge_mm"):
        labels = keep_spine(labels, spacing, float(settings["spine_bridge_mm"]))
    if settings.get("fill_holes"):
        labels = fill_holes(labels)
    return labels

"""What an AP radiograph's pixels mean before the X-ray model sees them: their size and their polarity.

The X-ray cards were trained on the AASCE radiographs: 8-bit pictures without a pixel size,
bone bright, the median vertebra 152 px wide at its endplate (5-95 %: 113-193 px over the 481
images). Their grid (``input.spacing_mm`` 4) is 4 of those pixels. A radiograph from elsewhere
breaks that in two ways that the model cannot see for itself (issue 15, session 25; 8 held-out
radiographs, every sixth, through ``segment``):

- **size.** A DICOM radiograph carries its detector pixel size (about 0.1-0.2 mm), so its grid
  would be 4 mm, 20-40 AASCE pixels: binary Dice 0.73 -> 0.18, 9 % of the vertebrae named
  wrong. The same radiographs saved at half or twice the resolution: level Dice 0.55 -> 0.24
  and 0.19.
- **polarity.** A radiograph may come with bone dark: a MONOCHROME1 file (most computed
  radiography stores it so) read by a reader that does not convert it (ITK 5.4, which
  SimpleITK 2.5 and so ``io.read_image`` use, does: a test holds it to that), or a picture
  exported inverted. Inverted, binary Dice 0.73 -> 0.015: the model draws 10-31 pieces of
  soft tissue.

Decided here (card ``input.radiograph``; absent on every other card):

1. **Pixel size.** A picture whose in-plane spacing is exactly 1 (what a JPG or PNG gets) is in
   pixel units, as the AASCE images are. Any other spacing is a physical size: the grid is
   ``spacing_mm`` AASCE pixels of ``pixel_mm`` mm (0.2: an AASCE pixel at the detector,
   estimated from the vertebrae's widths, the median L3 194 px against about 45 mm for an
   adolescent L3 magnified 1.1 times, and from the T1-L5 length, 2100 px against about
   400-430 mm; the check below corrects what this guess gets wrong by more than a third).
2. **Polarity, a second look.** Where the first result is ``likely_wrong`` (``reliability``;
   16 of the 48 held-out radiographs, every inverted one) and names fewer than half the
   vertebrae the card expects (an inverted picture names 0-1 of 17), the picture is segmented again
   with its grey levels inverted, and the inverted result is kept only where it names more
   vertebrae *and* is more self-consistent (``self_dice``). Inverted pictures name none (0-1
   of 17 in the 8 measured) and are less self-consistent (0.87-0.91 against 0.89-0.93).
3. **Scale, a second look.** How many of the picture's rows one vertebral level takes (the
   slope of the level map, ``level_map``, along the pieces found: the median level coordinate
   of each row's pieces, a line fitted through the rows named T1-L5), in training pixels
   (AASCE pixels: the picture's own for a picture in pixel units, else ``pixel_mm`` mm). The
   level map reads the whole picture fitted into a fixed box, so it sees the spine at any
   resolution, where the pieces' own widths do not (at twice the resolution the model
   breaks the vertebrae into 20-60 fragments whose median width looks normal). On the first
   pass of 120 training radiographs: 1-99 % 64-191 px a level, median 134. Outside
   ``level_rows_px`` [75, 200], the picture is segmented again on a grid rescaled to bring it
   to 134, and that result is kept unless it names fewer vertebrae than the first (a picture
   that shows part of the spine, which the level map stretches over T1-L5, gets a wrong
   estimate and a worse second pass). Within the range nothing changes: bringing every
   held-out radiograph to the median vertebra width by its truth landmarks (an oracle) moved
   the images within 0.8-1.4 of it by -0.2 to +0.4 level Dice in both directions and left
   the mean where it was, while the two held-out radiographs whose vertebrae are 54 and 71 px
   wide gained 0.25 and 0.40 Dice with the names aside.
4. The polarity is looked at first, at the first pass's scale (the level map of an inverted
   picture is no guide to its scale), and an inverted result is kept only where it names at
   least ``MIN_NAMED_INVERTED`` vertebrae (at the wrong scale the two polarities are both
   poor, and chance can favour the inverted one).

Each pass gives the picture the training pixel's size (``pipeline.scaled_spacing``), so that
everything the card says in its units reads it so: the grid, and the uncertainty smoothing
(``postprocess.uncertainty_sigma_mm`` 7.5, which a first version left in the picture's units:
7.5 mm, 37 training pixels, on a DICOM radiograph). The results come back in the picture's
own geometry.

A second look costs one more pass of the model (a few seconds on a CPU), taken only where the
first result calls for it; what was changed is said in the run's warnings.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk

from .io import plane_of
from .models import RadiographInput
from .preparation import in_pixel_units


MIN_NAMED_INVERTED = 4  # vertebrae an inverted picture's result must name to be kept (module docstring, 4)
MIN_FIT_ROWS = 20  # picture rows with pieces named T1-L5 by the level map that a slope needs


def training_pixel(image: sitk.Image, radiograph: RadiographInput) -> float:
    """A training picture's pixel in ``image``'s units, as first assumed: 1 for a picture in
    pixel units, else ``pixel_mm`` (module docstring, 1)."""
    return 1.0 if in_pixel_units(image) else radiograph.pixel_mm


def inverted(image: sitk.Image) -> sitk.Image:
    """``image`` with its grey levels mirrored within their range (bone bright where it was dark),
    same pixel type and geometry."""
    array = sitk.GetArrayViewFromImage(image)
    low, high = np.min(array), np.max(array)
    mirrored = sitk.GetImageFromArray((high.astype(np.float64) + low - array).astype(array.dtype))
    mirrored.CopyInformation(image)
    return mirrored


def rows_per_level(labels: sitk.Image, coordinates: np.ndarray | None, unit: float) -> float | None:
    """The rows one vertebral level takes along the spine, in units of ``unit`` (in the
    picture's units): the inverse slope of the level map's median coordinate over each row's
    labelled pixels, fitted through the rows whose median lies within T1-L5 (1-17; module
    docstring, 3). None without a level map or with fewer than ``MIN_FIT_ROWS`` such rows."""
    if coordinates is None:
        return None
    plane = plane_of(labels)
    inside = sitk.GetArrayViewFromImage(plane) > 0
    coordinates = np.asarray(coordinates, np.float32).reshape(inside.shape)
    rows = np.flatnonzero(inside.any(axis=1))
    medians = np.array([np.median(coordinates[row][inside[row]]) for row in rows])
    kept = (medians >= 1) & (medians <= 17)
    if kept.sum() < MIN_FIT_ROWS:
        return None
    slope = np.polyfit(rows[kept], medians[kept], 1)[0]
    if not slope > 0:  # levels run down the picture; anything else is no spine
        return None
    return float(plane.GetSpacing()[1] / slope / unit)


def named_count(segments: list[dict]) -> int:
    return sum(segment.get("level") is not None for segment in segments)


def segment_radiograph(image: sitk.Image, radiograph: RadiographInput, run: Callable[[sitk.Image, float], object]):
    """The X-ray card's run with the module docstring's decisions: ``run(picture, scale)``
    segments ``picture`` with its lengths times ``scale`` read as training pixels (the card's
    units) and returns a ``pipeline.SegmentationResult`` in the picture's own geometry; the
    kept result comes back with what was changed in its warnings and ``settings["radiograph"]``."""
    pixel = training_pixel(image, radiograph)
    picture, notes = image, []
    result = run(picture, 1.0 / pixel)
    reliability = result.settings["reliability"]
    expected = reliability.get("vertebrae_expected") or 0
    if radiograph.polarity and reliability.get("likely_wrong") and named_count(result.segments) < expected / 2:
        flipped = inverted(image)
        other = run(flipped, 1.0 / pixel)
        named = named_count(other.segments)
        if named >= MIN_NAMED_INVERTED and named > named_count(result.segments) and other.settings["reliability"]["self_dice"] > reliability["self_dice"]:
            picture, result = flipped, other
            notes.append(
                "the radiograph's grey levels were read inverted (bone dark, as MONOCHROME1 radiographs store it) and were "
                "mirrored before segmenting: the inverted picture named more vertebrae and was more self-consistent"
            )
    low, typical, high = radiograph.level_rows_px
    level_rows = rows_per_level(result.labels, result.level_coordinates, pixel)
    adjustment = {"inverted": picture is not image, "training_pixel": pixel, "level_rows_px": None if level_rows is None else round(level_rows, 1)}
    if level_rows is not None and not low <= level_rows <= high:
        rescaled = pixel * level_rows / typical
        other = run(picture, 1.0 / rescaled)
        units = "pixels" if in_pixel_units(image) else "mm"
        if named_count(other.segments) >= named_count(result.segments):
            result = other
            notes.append(
                f"a vertebral level took {level_rows:.0f} training pixels along the spine, outside the {low:.0f}-{high:.0f} the model "
                f"was trained at: the radiograph was segmented again with a training pixel of {rescaled:.3g} {units} instead of {pixel:.3g}"
            )
            adjustment.update(training_pixel=rescaled, first_training_pixel=pixel)
    result.settings["reliability"]["warnings"].extend(notes)
    result.settings["radiograph"] = adjustment
    return result

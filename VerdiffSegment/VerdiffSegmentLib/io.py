"""Reading and checking input images. Every problem becomes one clear ``VerdiffError``.

Accepted: NIfTI, NRRD, MHA/MHD, a folder holding one DICOM series, JPG/PNG (and whatever
else SimpleITK reads) with one grey-level component, in 2D or 3D. A 3D image with a
single slice (a 2D X-ray loaded in Slicer) is handled as 2D by the pipeline.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import VerdiffError

MIN_PLANE_SIZE = 8  # pixels: smaller than this is not an image of a spine


def read_image(path: str | Path) -> sitk.Image:
    """Read and validate an image file or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise VerdiffError(f"input not found: {path}")
    if path.is_dir():
        with _native_stderr_captured():  # GDCM warns on stderr about harmless tag issues
            image = _read_dicom_series(path)
    else:
        with _native_stderr_captured() as native:
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError:
                image = None
        if image is None:
            detail = f" ({native.text})" if native.text else ""
            raise VerdiffError(
                f"cannot read {path.name} as an image{detail}; supported: NIfTI, NRRD, MHA, a DICOM series folder, JPG, PNG"
            )
    check_image(image, path.name)
    return image


class _CapturedText:
    text = ""


@contextlib.contextmanager
def _native_stderr_captured():
    """Capture what C libraries (libpng, libjpeg, ITK) print to file descriptor 2 while reading,
    so a corrupt file gives one error line that quotes them instead of stray output."""
    captured = _CapturedText()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = [line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip()]
            captured.text = "; ".join(lines)[:200]


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VerdiffError(f"no DICOM series found in folder {folder}")
    # Several series: take the one with the most slices (the volume, not a localiser).
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise VerdiffError(f"cannot read the DICOM series in {folder}: {str(error).strip().splitlines()[-1]}") from None


def check_image(image: sitk.Image, name: str = "image") -> None:
    """Raise ``VerdiffError`` unless ``image`` is a finite, non-constant grey-level 2D/3D image."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VerdiffError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per pixel (RGB or vector); "
            "a grey-level image is needed"
        )
    if image.GetDimension() not in (2, 3):
        raise VerdiffError(f"{name} is {image.GetDimension()}D; a 2D or 3D image is needed")
    if "complex" in image.GetPixelIDTypeAsString():
        raise VerdiffError(f"{name} has complex pixels; a real-valued grey-level image is needed")
    plane = sorted(image.GetSize())[-2:]
    if min(plane) < MIN_PLANE_SIZE:
        raise VerdiffError(f"{name} is too small ({'x'.join(map(str, image.GetSize()))} pixels)")
    if min(image.GetSpacing()) <= 0:
        raise VerdiffError(f"{name} has a non-positive pixel spacing {image.GetSpacing()}")
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        raise VerdiffError(f"{name} contains NaN or infinite values")
    if array.min() == array.max():
        raise VerdiffError(f"{name} is constant (every voxel is {array.flat[0]}); there is nothing to segment")


def single_slice_axis(image: sitk.Image) -> int | None:
    """The axis of size 1 of a single-slice 3D image, else None."""
    if image.GetDimension() == 3:
        ones = [axis for axis, n in enumerate(image.GetSize()) if n == 1]
        if len(ones) == 1:
            return ones[0]
    return None


def as_plane(image: sitk.Image) -> sitk.Image:
    """A single-slice 3D image as a 2D image with the same pixels and in-plane spacing.

    Its geometry only drives the in-plane resampling; results go back to the 3D image
    by array order (``restore_from_plane``), so the plane's direction is the identity."""
    axis = single_slice_axis(image)
    array = sitk.GetArrayFromImage(image)
    plane = sitk.GetImageFromArray(array.reshape([n for n in array.shape if n != 1] if array.ndim == 3 else array.shape))
    plane.SetSpacing([s for a, s in enumerate(image.GetSpacing()) if a != axis])
    return plane


def restore_from_plane(result: sitk.Image, original: sitk.Image) -> sitk.Image:
    """Put a 2D result computed by ``as_plane`` back into the single-slice 3D geometry."""
    array = sitk.GetArrayFromImage(result).reshape(sitk.GetArrayViewFromImage(original).shape)
    restored = sitk.GetImageFromArray(array)
    restored.CopyInformation(original)
    return restored


def looks_like_ct(image: sitk.Image) -> bool:
    """Hounsfield units: a good part of the voxels is air (below -500) and bone reaches above +200."""
    array = sitk.GetArrayViewFromImage(image).ravel()
    sample = array[:: max(1, array.size // 1_000_000)]
    low, high = np.percentile(sample, [1, 99.5])
    return bool(low < -500 and high > 200)

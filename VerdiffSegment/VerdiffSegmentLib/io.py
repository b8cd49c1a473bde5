"""Reading and checking input images. Every problem becomes one clear ``VerdiffError``.

Accepted: NIfTI, NRRD, MHA/MHD, a folder holding one DICOM series, JPG/PNG (and whatever
else SimpleITK reads) with one grey-level component (or grey saved as RGB), in 2D or 3D.
What is refused and why is in ``read_image`` and ``check_image``; docs/reliability.md
lists every case tried. A 3D image with a
single slice (a 2D X-ray loaded in Slicer) is handled as 2D by the pipeline.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import VerdiffError
from .memory import refuse_above_available

MIN_PLANE_SIZE = 8  # pixels: smaller than this is not an image of a spine

# A gzip stream may hold a little more than the header's voxels (NIfTI extensions come
# before them, padding after): decompressing stops this far beyond the expected end, so a
# decompression bomb behind a small header cannot fill the memory or the time.
GZIP_SLACK_BYTES = 16 << 20


def read_image(path: str | Path) -> sitk.Image:
    """Read and validate an image file or a DICOM series folder.

    Before any voxel is allocated, the header's size is checked against the memory
    available (a header claiming 100,000^3 voxels is refused with the memory it would
    need). After reading, a file shorter than its header says is an error, never
    zero-filled: NRRD, MHA and PNG readers fail by themselves; NIfTI payloads are counted
    here (a cut gzip stream or missing voxels), and a JPEG must end with its end-of-image
    marker (libjpeg pads a cut file with grey and only warns). NIfTI geometry is checked
    on the header itself, because ITK silently replaces a zero, negative or NaN pixel size
    by 1 (a negative one also flips the axis) and turns a sheared sform into a rotation.

    Colour: an RGB(A) image whose three colour channels are equal (a grey X-ray saved as
    colour, e.g. a screenshot or an exported JPEG) is accepted as its grey channel; a
    true colour image is refused. 16-bit grey PNGs are read as they are (the intensity
    normalisation is by percentiles)."""
    path = Path(path)
    if not path.exists():
        raise VerdiffError(f"input not found: {path}")
    if path.is_dir():
        with _native_stderr_captured():  # GDCM warns on stderr about harmless tag issues
            image = _read_dicom_series(path)
    else:
        if path.stat().st_size == 0:
            raise VerdiffError(f"{path.name} is empty (0 bytes)")
        reader = _read_header(path)
        _refuse_oversized(reader, path.name)
        if _is_nifti(path):
            _check_nifti(path, _payload_bytes(reader))
        elif path.name.lower().endswith((".jpg", ".jpeg")):
            _check_jpeg_complete(path)
        failure = None
        with _native_stderr_captured() as native:
            try:
                image = reader.Execute()
            except RuntimeError as error:
                failure = error
        if failure is not None:  # raised here: the native text is complete once the capture ends
            raise VerdiffError(f"cannot read {path.name}: {native.text or _last_line(failure)}")
        image = _grey_if_colour_is_grey(image)
    check_image(image, path.name)
    return image


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def _read_header(path: Path) -> sitk.ImageFileReader:
    """An ``ImageFileReader`` with the header read (size, pixel type), no voxels yet."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    failure = None
    with _native_stderr_captured() as native:
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            failure = error
    if failure is not None:
        raise VerdiffError(
            f"cannot read {path.name} as an image ({native.text or _last_line(failure)}); "
            "supported: NIfTI, NRRD, MHA, a DICOM series folder, JPG, PNG"
        )
    return reader


def _payload_bytes(reader) -> int:
    """Bytes of voxel data the header announces."""
    size = reader.GetSize()
    pixel = sitk.Image([1] * len(size), reader.GetPixelID(), reader.GetNumberOfComponents())
    return int(np.prod(size, dtype=np.float64)) * reader.GetNumberOfComponents() * pixel.GetSizeOfPixelComponent()


def _refuse_oversized(reader, name: str) -> None:
    size = reader.GetSize()
    if min(size) < 1:
        raise VerdiffError(f"{name} has an empty size {'x'.join(map(str, size))} in its header")
    # The pipeline holds a few float32 copies of the image besides the file's own pixels.
    voxels = float(np.prod(size, dtype=np.float64))
    needed = int(_payload_bytes(reader) + 3 * 4 * voxels)
    refuse_above_available(needed, f"{name} (header: {'x'.join(map(str, size))} voxels)", "the header may be damaged, or crop or downsample the image first")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _nifti_header(path: Path) -> tuple[bytes, str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise VerdiffError(f"cannot read {path.name}: {error}") from None
    for order in "<>":
        if len(header) >= 348 and struct.unpack_from(order + "i", header)[0] in (348, 540):
            return header, order
    raise VerdiffError(f"{path.name} is not a NIfTI file (no NIfTI header)")


def _check_nifti(path: Path, payload: int) -> None:
    """The voxels the header announces are all there, the pixel sizes are positive and finite,
    and the sform (when used) is not sheared."""
    header, order = _nifti_header(path)
    if struct.unpack_from(order + "i", header)[0] == 348:
        ndim = min(struct.unpack_from(order + "h", header, 40)[0], 7)
        vox_offset = int(struct.unpack_from(order + "f", header, 108)[0])
        pixdim = struct.unpack_from(order + "8f", header, 76)[1 : 1 + min(ndim, 3)]
        sform_code = struct.unpack_from(order + "h", header, 254)[0]
        srow = np.array(struct.unpack_from(order + "12f", header, 280)).reshape(3, 4)[:, :3]
        if not all(math.isfinite(p) and p > 0 for p in pixdim):
            raise VerdiffError(f"{path.name} has an invalid pixel spacing {tuple(pixdim)} in its header (zero, negative or NaN)")
        if sform_code > 0:
            _check_orthogonal(srow, f"{path.name} (NIfTI sform)")
    else:  # NIfTI-2
        vox_offset = struct.unpack_from(order + "q", header, 168)[0]
    needed = vox_offset + payload
    present = _nifti_bytes_present(path, needed)
    if present < needed:
        missing = needed - present
        raise VerdiffError(
            f"{path.name} is truncated: its header announces {payload} bytes of voxels but {missing} "
            f"({100 * missing / max(payload, 1):.1f} %) are missing"
        )


def _nifti_bytes_present(path: Path, needed: int) -> int:
    """Bytes of the (decompressed) file, counted up to ``needed + GZIP_SLACK_BYTES`` without
    keeping them; a gzip stream that is corrupt (or fails its CRC) or that ends early after
    all the voxels is an error, one that ends before them returns the count."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    count, pending = 0, b""
    with open(path, "rb") as handle:
        while not decompressor.eof and count <= needed + GZIP_SLACK_BYTES:
            if not pending:
                pending = handle.read(1 << 20)
                if not pending:
                    break
            try:
                count += len(decompressor.decompress(pending, 1 << 22))
            except zlib.error as error:
                raise VerdiffError(f"{path.name} is damaged: corrupt gzip stream ({error})") from None
            pending = decompressor.unconsumed_tail
    if not decompressor.eof and count <= needed + GZIP_SLACK_BYTES and count >= needed:
        raise VerdiffError(f"{path.name} is damaged: its gzip stream ends early (after all the voxels)")
    return count


def _check_orthogonal(matrix: np.ndarray, name: str) -> None:
    """The columns of a 3x3 (or 2x2) axis matrix are finite, non-zero and at right angles."""
    matrix = np.asarray(matrix, dtype=np.float64)
    lengths = np.linalg.norm(matrix, axis=0)
    if not np.isfinite(matrix).all() or (lengths <= 0).any():
        raise VerdiffError(f"{name} has a degenerate direction matrix (zero or NaN axis)")
    unit = matrix / lengths
    if np.abs(unit.T @ unit - np.eye(len(unit))).max() > 1e-3:
        raise VerdiffError(f"{name} has a non-orthogonal (sheared) direction matrix; resample it onto an orthogonal grid first")


JPEG_START_OF_SCAN, JPEG_END_OF_IMAGE = b"\xff\xda", b"\xff\xd9"


def _check_jpeg_complete(path: Path) -> None:
    """The end-of-image marker follows the last scan (0xFF in entropy-coded data is stuffed
    with 0x00, so the marker cannot occur inside it): a cut file lacks it."""
    data = path.read_bytes()
    scan = data.rfind(JPEG_START_OF_SCAN)
    if scan < 0 or data.find(JPEG_END_OF_IMAGE, scan) < 0:
        raise VerdiffError(f"{path.name} is truncated: the JPEG data ends before its end-of-image marker")


def _grey_if_colour_is_grey(image: sitk.Image) -> sitk.Image:
    """An RGB or RGBA image whose colour channels are all equal, as its first channel."""
    if image.GetNumberOfComponentsPerPixel() not in (3, 4):
        return image
    channels = sitk.GetArrayViewFromImage(image)
    if not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
        return image  # true colour: check_image refuses it
    grey = sitk.VectorIndexSelectionCast(image, 0)
    grey.CopyInformation(image)
    return grey


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


# Series with at least this many slices are volumes; fewer are localisers (scouts) that
# may share a folder with the one volume.
MIN_SERIES_SLICES = MIN_PLANE_SIZE


def _read_dicom_series(folder: Path) -> sitk.Image:
    """The one volume in ``folder``. Several series of at least ``MIN_SERIES_SLICES`` slices
    are refused (which one is meant is not for us to guess); smaller ones beside it are
    localisers and are skipped. Slice positions must be evenly spaced: a gap (a missing
    file) or a repeated position is an error, not interpolated."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VerdiffError(f"no DICOM series found in folder {folder}")
    by_series = {s: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series}
    volumes = [s for s, files in by_series.items() if len(files) >= MIN_SERIES_SLICES]
    if len(volumes) > 1:
        counts = ", ".join(str(len(by_series[s])) for s in volumes)
        raise VerdiffError(f"folder {folder} holds {len(volumes)} DICOM series ({counts} slices); put the one to segment in a folder of its own")
    files = max(by_series.values(), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    first = _read_header(Path(files[0]))
    needed = _payload_bytes(first) * len(files)
    refuse_above_available(int(needed * 4), f"the DICOM series in {folder} ({len(files)} slices)", "crop or downsample it first")
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VerdiffError(f"cannot read the DICOM series in {folder}: {_last_line(error)}") from None
    _check_slice_positions(reader, len(files), folder)
    return image


def _check_slice_positions(reader: sitk.ImageSeriesReader, count: int, folder: Path) -> None:
    if count < 3:
        return
    try:
        orientation = np.array([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")])
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(count)])
    except (RuntimeError, ValueError):
        return  # no positions (e.g. a secondary capture): nothing to check
    normal = np.cross(orientation[:3], orientation[3:6])
    steps = np.diff(np.sort(positions @ normal))
    typical = float(np.median(steps))
    if typical <= 0 or steps.min() < 0.5 * typical:
        raise VerdiffError(f"the DICOM series in {folder} has slices at the same position (duplicated files?)")
    if steps.max() > 1.5 * typical:
        raise VerdiffError(
            f"the DICOM series in {folder} has a gap: slice positions jump by {steps.max():.2f} mm where the spacing is "
            f"{typical:.2f} mm (a missing slice?)"
        )


def check_image(image: sitk.Image, name: str = "image") -> None:
    """Raise ``VerdiffError`` unless ``image`` is a finite, non-constant grey-level 2D/3D image
    with positive finite spacing and an orthogonal direction, whose sagittal plane (the
    network's input; for a 2D image or a single slice, its plane) is at least
    ``MIN_PLANE_SIZE`` voxels each way.

    Thin volumes: a volume as thin as 2 voxels *across* the sagittal plane is refused (its
    sagittal slices would be 2 pixels tall: e.g. two axial slices); a thin *sagittal* slab
    (a few sagittal slices) is segmented slice by slice like any other volume."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VerdiffError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per pixel (RGB or vector, not grey); "
            "a grey-level image is needed (grey saved as RGB is accepted)"
        )
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise VerdiffError(f"{name} is {dim}D; a 2D or 3D image is needed")
    if "complex" in image.GetPixelIDTypeAsString():
        raise VerdiffError(f"{name} has complex pixels; a real-valued grey-level image is needed")
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise VerdiffError(f"{name} has an invalid pixel spacing {spacing} (zero, negative or NaN)")
    _check_orthogonal(np.array(image.GetDirection()).reshape(dim, dim), name)
    size = image.GetSize()
    if min(sorted(size)[-2:]) < MIN_PLANE_SIZE:
        raise VerdiffError(f"{name} is too small ({'x'.join(map(str, size))} voxels; at least {MIN_PLANE_SIZE} each way in a plane)")
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        finite = np.isfinite(array)
        what = "only NaN or infinite values" if not finite.any() else f"{int((~finite).sum())} NaN or infinite values"
        raise VerdiffError(f"{name} contains {what}")
    if array.min() == array.max():
        raise VerdiffError(f"{name} is constant (every voxel is {array.flat[0]}); there is nothing to segment")
    if dim == 3 and single_slice_axis(image) is None:
        from .inferers.sagittal import sagittal_axes  # here: the inferers import torch, which Slicer may not have yet

        _, row_axis, col_axis, _ = sagittal_axes(image)
        plane = (size[row_axis], size[col_axis])
        if min(plane) < MIN_PLANE_SIZE:
            raise VerdiffError(
                f"{name} is too thin across the sagittal plane ({'x'.join(map(str, size))} voxels: its sagittal slices "
                f"would be {plane[0]}x{plane[1]}); at least {MIN_PLANE_SIZE} voxels each way are needed"
            )


def single_slice_axis(image: sitk.Image) -> int | None:
    """The axis of size 1 of a single-slice 3D image, else None."""
    if image.GetDimension() == 3:
        ones = [axis for axis, n in enumerate(image.GetSize()) if n == 1]
        if len(ones) == 1:
            return ones[0]
    return None


def plane_axes(image: sitk.Image) -> list[int]:
    """The axes of ``image`` other than a single-slice volume's slice axis (every axis otherwise)."""
    axis = single_slice_axis(image)
    return [k for k in range(image.GetDimension()) if k != axis]


def plane_of(image: sitk.Image) -> sitk.Image:
    """What is segmented of ``image``: the plane of a single-slice volume (``as_plane``), else the image."""
    return as_plane(image) if single_slice_axis(image) is not None else image


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

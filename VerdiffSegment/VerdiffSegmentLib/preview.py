"""A quality-control picture of one result (``verdiff segment --preview``), with Pillow and numpy.

What it shows, on a canvas of fixed size ``CANVAS`` (so previews of a cohort line up):

- the image: an X-ray as it is; a volume as the sagittal plane through the centre of the
  segmentation (the middle sagittal plane when nothing was segmented), on the pipeline's
  canonical sagittal grid (``inferers.sagittal``: superior up, anterior left), square
  pixels at the image's finest spacing (coarser when the plane is large), grey levels
  between the 1st and 99th percentile;
- the uncertainty (ensemble standard deviation) as a heat map over it, transparent where
  it is below 5 % of the scale (``FAINT``) and more opaque (by the square root) where it
  is higher, on a scale from 0 to the plane's maximum;
- the segmentation's outline in one colour that contrasts with the heat map (cyan), the
  borders between labels included;
- an AP X-ray's Cobb angles (``cobb``): for each of PT, MT and TL, in its own colour
  (``COBB_COLOURS``), the two endplate lines the angle is measured between (the upper end
  vertebra's upper endplate, the lower one's lower endplate, along their tilts, reaching
  beyond the vertebra so the angle reads) with the angle's name at their outer ends, and a
  legend at the top left: name, angle and end vertebrae (an end vertebra that was not
  segmented but placed by the spine's proportions, ``cobb.estimate_missing_ends``, marked
  with a star and drawn where it was placed). Each line has a dark border, to
  stand out on the grey image and the heat map alike;
- a colour bar with the heat map's scale, and a caption (the settings) below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from .cobb import NAMES as COBB_NAMES, angle_text, endplate_lines
from .inferers.sagittal import sagittal_reference
from .io import as_plane, single_slice_axis

PANEL = (480, 640)  # width, height of the picture's box
BAR_WIDTH = 100  # the colour bar's column, right of the panel
CAPTION_HEIGHT = 72
CANVAS = (PANEL[0] + BAR_WIDTH, PANEL[1] + CAPTION_HEIGHT)
BACKGROUND = (16, 16, 16)
OUTLINE = (0, 255, 255)
FAINT = 0.05  # uncertainty below this fraction of the colour bar's scale is not drawn
MAX_PLANE_PIXELS = 800  # the plane is resampled no finer than this many pixels along its longer side
# An "inferno"-like map: black, purple, red, orange, pale yellow.
# PT, MT, TL: green, magenta, blue: apart from each other, from the outline's cyan, from the
# heat map's warm colours (none is redder than blue) and from the grey image's white bone.
COBB_COLOURS = {"PT": (64, 255, 64), "MT": (255, 64, 255), "TL": (110, 165, 255)}
COBB_LINE_WIDTH = 3
HEAT_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """RGB (float 0..255) of values in [0, 1] on the heat map."""
    position = np.clip(values, 0, 1) * (len(HEAT_ANCHORS) - 1)
    anchors = np.arange(len(HEAT_ANCHORS))
    return np.stack([np.interp(position, anchors, HEAT_ANCHORS[:, c]) for c in range(3)], axis=-1)


def preview_planes(image: sitk.Image, labels: sitk.Image, uncertainty: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Grey, label and uncertainty arrays [rows, columns] of the plane shown, and its pixel
    size (row, column) in the image's units."""
    if single_slice_axis(image) is not None:
        image, labels, uncertainty = as_plane(image), as_plane(labels), as_plane(uncertainty)
    if image.GetDimension() == 2:
        arrays = [sitk.GetArrayFromImage(x) for x in (image, labels, uncertainty)]
        return arrays[0].astype(np.float32), arrays[1], arrays[2].astype(np.float32), tuple(image.GetSpacing()[::-1])
    extent = max(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))
    spacing = max(min(image.GetSpacing()), extent / MAX_PLANE_PIXELS)
    reference = sagittal_reference(image, spacing)  # sitk axes: columns (A->P), rows (S->I), slices (->L)
    index = reference.GetSize()[2] // 2
    inside = np.argwhere(sitk.GetArrayViewFromImage(labels) > 0)
    if len(inside):
        centre = labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in inside.mean(axis=0)[::-1]])
        index = int(np.clip(round(reference.TransformPhysicalPointToContinuousIndex(centre)[2]), 0, reference.GetSize()[2] - 1))
    plane = reference[:, :, index : index + 1]
    resampled = [
        sitk.GetArrayFromImage(sitk.Resample(source, plane, sitk.Transform(), interpolator, 0.0, source.GetPixelID()))[0]
        for source, interpolator in ((image, sitk.sitkLinear), (labels, sitk.sitkNearestNeighbor), (uncertainty, sitk.sitkLinear))
    ]
    return resampled[0].astype(np.float32), resampled[1], resampled[2].astype(np.float32), (spacing, spacing)


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value (a label's border, or between labels)."""
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge & (labels > 0)


def render_preview(image: sitk.Image, labels: sitk.Image, uncertainty: sitk.Image, caption: list[str], measurements: dict | None = None, segments: list[dict] = ()) -> Image.Image:
    """The preview as an RGB picture of size ``CANVAS``. ``measurements`` and ``segments``:
    those of the result (``pipeline.SegmentationResult``); an X-ray's Cobb angles are drawn
    from them."""
    grey, label_plane, spread, (row_size, column_size) = preview_planes(image, labels, uncertainty)
    cobb_lines = _cobb_canvas_lines(label_plane, (row_size, column_size), measurements, segments)
    low, high = np.percentile(grey, [1, 99])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    scale_max = float(spread.max()) if spread.max() > 0 else 1.0

    # Fit the plane in the panel with its physical aspect, then draw the outline at that size
    # so it stays one or two pixels wide whatever the image's resolution.
    size, corner = panel_layout(label_plane.shape, (row_size, column_size))
    grey = np.asarray(Image.fromarray(grey.astype(np.float32), "F").resize(size, Image.BILINEAR))
    spread = np.asarray(Image.fromarray(spread, "F").resize(size, Image.BILINEAR)) / scale_max
    label_plane = np.asarray(Image.fromarray(label_plane.astype(np.uint8), "L").resize(size, Image.NEAREST))
    # Opacity grows with the square root, so the typical spread (a few hundredths) stays
    # visible; below FAINT of the scale (sampling noise) the image is left clear.
    opacity = np.sqrt(np.clip((spread - FAINT) / (1 - FAINT), 0, 1))[..., None] * 0.85
    rgb = (1 - opacity) * (grey[..., None] * 255) + opacity * heat_colours(spread)
    rgb[outline_mask(label_plane)] = OUTLINE

    canvas = Image.new("RGB", CANVAS, BACKGROUND)
    canvas.paste(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), corner)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    if cobb_lines:
        _cobb_overlay(draw, font, cobb_lines, measurements, segments)
    _colour_bar(canvas, draw, font, scale_max)
    for n, line in enumerate(caption[:4]):
        draw.text((8, PANEL[1] + 6 + 15 * n), line, fill=(235, 235, 235), font=font)
    return canvas


def panel_layout(plane_shape: tuple[int, int], pixel_size: tuple[float, float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(width, height) of the shown plane [rows, columns] of pixels (row, column) in size,
    fitted into the panel with its physical aspect, and the corner where it is pasted."""
    height, width = plane_shape[0] * pixel_size[0], plane_shape[1] * pixel_size[1]
    zoom = min(PANEL[0] / width, PANEL[1] / height)
    size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
    return size, ((PANEL[0] - size[0]) // 2, (PANEL[1] - size[1]) // 2)


def plane_to_canvas(xy, plane_shape: tuple[int, int], size: tuple[int, int], corner: tuple[int, int]) -> tuple[float, float]:
    """Canvas coordinates of (x, y) in the shown plane's pixels (pixel centres on pixel
    centres), for the plane [rows, columns] shown at ``size`` from ``corner`` (``panel_layout``)."""
    scale_x, scale_y = size[0] / plane_shape[1], size[1] / plane_shape[0]
    return corner[0] + (xy[0] + 0.5) * scale_x - 0.5, corner[1] + (xy[1] + 0.5) * scale_y - 0.5


def cobb_lines_on_canvas(image: sitk.Image, labels: sitk.Image, measurements: dict, segments: list[dict]) -> dict:
    """Per Cobb angle, its two endplate lines (canvas (x, y) start and end) on the preview of
    an X-ray: where ``render_preview`` draws them (empty without Cobb angles)."""
    _, label_plane, _, pixel_size = preview_planes(image, labels, labels)
    return _cobb_canvas_lines(label_plane, pixel_size, measurements, segments)


def _cobb_canvas_lines(label_plane: np.ndarray, pixel_size: tuple[float, float], measurements: dict | None, segments: list[dict]) -> dict:
    """Per angle, its endplate lines (``cobb.endplate_lines``) in canvas coordinates; the
    end vertebrae are found by their level or segment name (``cobb.cobb_measurements``).
    An angle whose two ends are the same vertebra (0 degrees, as the reference gives when
    a curve has no partner) has no lines: they would hide another angle's line."""
    ends = (measurements or {}).get("cobb_end_vertebrae")
    if not ends:
        return {}
    size, corner = panel_layout(label_plane.shape, pixel_size)
    # an end vertebra is a segment, or one placed where the segmentation stopped short (cobb.estimate_missing_ends)
    vertebra_of = {**{s.get("level") or s["name"]: int(s["value"]) for s in segments}, **(measurements.get("cobb_estimated_vertebrae") or {})}
    plane = np.asarray(label_plane)
    tilts = measurements.get("cobb_end_tilts_deg") or {}
    return {
        name: [
            [plane_to_canvas(p, plane.shape, size, corner) for p in line]
            for line in endplate_lines(plane, vertebra_of[ends[name][0]], vertebra_of[ends[name][1]], tilts_deg=tilts.get(name))
        ]
        for name in COBB_NAMES
        if ends.get(name) and ends[name][0] != ends[name][1]  # a 0 degree angle within one vertebra, or none determined: nothing to draw (the legend gives it)
    }


def _cobb_overlay(draw: ImageDraw.ImageDraw, font, lines: dict, measurements: dict, segments: list[dict]) -> None:
    """The Cobb lines (canvas coordinates, per angle) with their names, and the legend.
    The names go to the lines' right ends, MT's to the left ones: neighbouring angles often
    share an end vertebra, and their names would overlap."""
    angles, ends = measurements["cobb_angles_deg"], measurements["cobb_end_vertebrae"]
    for name, pair in lines.items():
        colour = COBB_COLOURS[name]
        for points in pair:
            draw.line(points, fill=(0, 0, 0), width=COBB_LINE_WIDTH + 2)
            draw.line(points, fill=colour, width=COBB_LINE_WIDTH)
            if name == "MT":
                x, y = min(points, key=lambda p: p[0])
                draw.text((x - 4, y - 7), name, fill=colour, font=font, anchor="ra", stroke_width=2, stroke_fill=(0, 0, 0))
            else:
                x, y = max(points, key=lambda p: p[0])
                draw.text((x + 4, y - 7), name, fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    estimated = measurements.get("cobb_estimated_vertebrae") or {}
    levels = {**{s.get("level") or s["name"]: s.get("level") for s in segments}, **{level: level for level in estimated}}
    values = {s.get("level") or s["name"]: s["value"] for s in segments}
    marked = lambda end: f"{end}*" if end in estimated else end  # noqa: E731
    starred = False
    for row, name in enumerate(COBB_NAMES):
        if ends.get(name) is None:  # not determined (cobb.cobb_measurements): the spine was not found beyond its end vertebra
            text = f"{name} not determined"
        else:
            upper, lower = ends[name]
            span = f"{marked(upper)}-{marked(lower)}" if levels[upper] and levels[lower] else f"segments {values[upper]}-{values[lower]}"
            text = f"{name} {angle_text(angles[name])}  {span}"
            starred |= upper in estimated or lower in estimated
        draw.text((8, 8 + 17 * row), text, fill=COBB_COLOURS[name], font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    if starred:
        draw.text((8, 8 + 17 * len(COBB_NAMES)), "* not segmented: placed by the spine's proportions", fill=(235, 235, 235), font=font, stroke_width=2, stroke_fill=(0, 0, 0))


def _colour_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, font, scale_max: float) -> None:
    left, top, width, height = PANEL[0] + 14, 60, 20, PANEL[1] - 120
    ramp = heat_colours(np.linspace(1, 0, height)[:, None].repeat(width, axis=1))
    canvas.paste(Image.fromarray(ramp.astype(np.uint8), "RGB"), (left, top))
    draw.rectangle((left - 1, top - 1, left + width, top + height), outline=(200, 200, 200))
    draw.text((left - 6, top - 44), "uncertainty\n(std)", fill=(235, 235, 235), font=font)
    for fraction in (0.0, 0.5, 1.0):
        y = top + round((1 - fraction) * (height - 1))
        draw.line((left + width, y, left + width + 4, y), fill=(200, 200, 200))
        draw.text((left + width + 7, y - 7), f"{fraction * scale_max:.2g}", fill=(235, 235, 235), font=font)


def write_preview(path: str | Path, image: sitk.Image, labels: sitk.Image, uncertainty: sitk.Image, caption: list[str], measurements: dict | None = None, segments: list[dict] = ()) -> Path:
    path = Path(path)
    render_preview(image, labels, uncertainty, caption, measurements, segments).save(path, optimize=True)
    return path

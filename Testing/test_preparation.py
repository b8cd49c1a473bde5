"""One image preparation: a case prepared for training is, voxel for voxel, what inference
feeds the bundled model of the same recipe, and results map back onto the input exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from VerdiffSegmentLib.io import read_image
from VerdiffSegmentLib.models import get_card
from VerdiffSegmentLib.preparation import prepare_for_card
from training import datasets
from training.configs import recipe_config

from conftest import xray_image


def training_case(recipe: str, item: datasets.Item, card=None):
    """The case as training prepares it: with the recipe's config, or with the config the
    bundled ``card`` was trained with (its grid spacing among it: the X-ray model's 4 px)."""
    from training.evaluate import run_config_of_card

    run = run_config_of_card(card) if card is not None else recipe_config(recipe)
    return datasets.run_case(item, run)


def test_training_and_inference_prepare_an_mr_volume_identically(data_dir):
    card = get_card("verdiff-mr")
    item = datasets.mr_item(data_dir, "VB3_17")
    case = training_case("verdiff-mr", item)
    prepared = prepare_for_card(read_image(str(item.image)), card)
    assert case.images.dtype == prepared.stack.dtype == np.float32
    assert np.array_equal(case.images, prepared.stack)
    assert case.labels.shape == prepared.stack.shape and case.labels.any()


def test_training_and_inference_prepare_an_xray_identically_also_as_a_single_slice_volume(data_dir):
    card = get_card("verdiff-xray")
    path = xray_image()
    item = datasets.Item(path.stem, path.stem, "aasce", path, path.parent.parent.parent / "labels" / "training" / f"{path.name}.mat", "aasce")
    case = training_case("verdiff-xray", item, card)
    assert case.images.shape[1:] == (612, 200)  # the card's 4 px grid (5 px: 490 x 160)
    image = read_image(str(path))
    assert np.array_equal(case.images, prepare_for_card(image, card).stack)
    # Slicer holds an X-ray as a volume of one slice: it is prepared as the same plane.
    volume = sitk.JoinSeries(image)
    prepared = prepare_for_card(volume, card)
    assert prepared.planar is not volume and np.array_equal(prepared.stack, case.images)
    # Labels come back into the one-slice volume's geometry, voxel for voxel.
    truth = datasets.aasce_mask(image, item.labels)
    back = prepared.restore(prepared.to_input_grid(prepared.labels_on_grid(sitk.JoinSeries(truth)), is_label=True))
    assert back.GetSize() == volume.GetSize() and back.GetOrigin() == volume.GetOrigin()
    agreement = (sitk.GetArrayViewFromImage(back)[0] > 0) == (sitk.GetArrayViewFromImage(truth) > 0)
    assert agreement.mean() > 0.99


def test_a_3d_card_prepares_an_isotropic_grid(data_dir):
    card = get_card("imgx3d-mr")
    image = read_image(str(Path(data_dir) / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"))
    prepared = prepare_for_card(image, card)
    assert np.allclose(prepared.grid_spacing, card.spacing_mm)


# -- 2.5D input (issue 16, item 4): the neighbours, built in one place -----------------------
def context_card(context_slices: int):
    card = get_card("verdiff-mr")
    return card.derived(network={**card.network_config, "in_channels": 1 + 2 * context_slices}, input={**card.raw["input"], "context_slices": context_slices})


def assert_sampler_draws_inference_inputs(images, prepared) -> np.ndarray:
    """Each sampled image [channels, rows, cols] (cut to the stack's size: the sampler pads) is,
    bit for bit, what inference feeds the network for some slice of ``prepared``; returns them cut."""
    rows, cols = prepared.stack.shape[1:]
    images = images.numpy()[:, :, :rows, :cols]
    for image in images:
        assert any(np.array_equal(image, prepared.network_input([s])[0]) for s in range(prepared.stack.shape[0]))
    return images


def test_training_and_inference_build_the_same_2_5d_input(data_dir):
    """A 2.5D case prepared for training gives the sampler the very channels inference feeds
    the network, slice for slice; the first slice's outer neighbour is the slice itself."""
    from training.augment import PRESETS
    from training.sampler import SliceSampler

    card = context_card(1)
    item = datasets.mr_item(data_dir, "VB3_17")
    case = datasets.run_case(item, recipe_config("verdiff-mr", context_slices=1))
    prepared = prepare_for_card(read_image(str(item.image)), card)
    assert np.array_equal(case.images, prepared.stack) and case.slice_spacing_mm == prepared.grid_spacing[0] == 1.0
    assert np.array_equal(prepared.input_offsets, [-1.25, 0.0, 1.25])
    rows, cols = prepared.stack.shape[1:]
    sampler = SliceSampler([case], max(rows, cols), 8, PRESETS["none"], context_slices=1, context_distance_mm=card.spacing_mm)
    assert_sampler_draws_inference_inputs(sampler.batch(6)[0], prepared)
    first = prepared.network_input([0])[0]
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[1], prepared.stack[0])
    base = get_card("verdiff-mr")
    planar_input = {k: v for k, v in base.raw["input"].items() if k not in ("context_slices", "planar_model")}
    one_channel = prepare_for_card(read_image(str(item.image)), base.derived(network={**base.network_config, "in_channels": 1}, input=planar_input))  # the card without context_slices
    assert np.array_equal(one_channel.network_input(range(3)), prepared.stack[:3, None])


def test_a_card_and_a_run_with_a_context_distance_place_the_neighbours_alike(data_dir):
    """``context_distance_mm`` 4 on the card (inference) and on the run config (training): the
    neighbour channels 4 mm away on both sides, 4 slices of the 1 mm VB3 grid, and the sampler
    draws channels that inference feeds the network for some slice."""
    from training.augment import PRESETS
    from training.configs import RunConfig
    from training.sampler import SliceSampler

    card = context_card(1)
    card = card.derived(input={**card.raw["input"], "context_distance_mm": 4.0})
    run = recipe_config("verdiff-mr", context_slices=1, context_distance_mm=4.0)
    assert run.context_mm == 4.0 and RunConfig.from_dict(run.to_dict()).context_distance_mm == 4.0
    assert recipe_config("verdiff-mr", context_slices=1).context_mm == card.spacing_mm  # absent: the grid spacing
    item = datasets.mr_item(data_dir, "VB3_17")
    case = datasets.run_case(item, run)
    prepared = prepare_for_card(read_image(str(item.image)), card)
    assert np.array_equal(prepared.input_offsets, [-4.0, 0.0, 4.0])
    rows, cols = prepared.stack.shape[1:]
    sampler = SliceSampler([case], max(rows, cols), 8, PRESETS["none"], context_slices=1, context_distance_mm=run.context_mm)
    images = assert_sampler_draws_inference_inputs(sampler.batch(4)[0], prepared)
    for image in images:
        assert not np.array_equal(image[0], image[1])  # a neighbour 4 mm away is another picture


def test_neighbours_at_a_fixed_distance_in_mm_show_thick_slices_the_anatomy_training_saw(data_dir):
    """On 3 mm slices (every third 1 mm slice of a real MR volume) the neighbour channels are
    interpolated at +-1.25 mm, as on the 1 mm training data; the adjacent 3 mm slices would
    show anatomy 2.4 times farther away. The interpolated neighbours are closer to the true
    +-1.25 mm slices than the adjacent slices are."""
    from VerdiffSegmentLib.preparation import slice_at

    card = context_card(1)
    fine = read_image(str(Path(data_dir) / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"))
    thick = fine[:, :, ::3]  # the third axis is left-right: sagittal slices 3 mm apart
    truth = prepare_for_card(fine, card).stack
    prepared = prepare_for_card(thick, card)
    assert prepared.grid_spacing[0] == 3.0 and np.allclose(prepared.input_offsets, [-1.25 / 3, 0, 1.25 / 3])
    interpolated, adjacent = [], []
    for i in range(8, 18):  # the lumbar bodies
        channels = prepared.network_input([i])[0]
        for side, channel in ((-1, channels[0]), (1, channels[2])):
            wanted = slice_at(truth, 3 * i + side * 1.25)
            interpolated.append(np.abs(channel - wanted).mean())
            adjacent.append(np.abs(prepared.stack[i + side] - wanted).mean())
    assert np.mean(interpolated) < 0.75 * np.mean(adjacent)  # measured: 0.013 against 0.023


def test_a_2_5d_default_gives_way_to_its_planar_model_on_a_single_slice(tmp_path, monkeypatch, data_dir):
    """``--model MR`` on a 2D sagittal MR picture runs the 2.5D default's ``planar_model``; on a
    volume the 2.5D model itself; asked for by name, the 2.5D model is refused on the picture
    with the planar model named; the cross-source suite of 2D pictures is scored with it."""
    import json

    import pytest

    from conftest import MODELS
    from training.cross_source import suite_card
    from VerdiffSegmentLib.errors import VerdiffError
    from VerdiffSegmentLib.pipeline import check_card_fits, choose_card

    for path in MODELS.iterdir():
        if path.name != "verdiff-mr.json":
            (tmp_path / path.name).symlink_to(path)
    wide = context_card(1).raw
    wide["input"]["planar_model"] = "verdiff-mr-2d"
    (tmp_path / "verdiff-mr.json").write_text(json.dumps(wide))
    monkeypatch.setenv("VERDIFF_MODELS_DIR", str(tmp_path))
    assert get_card("verdiff-mr-2d").context_slices == 0  # the bundled 1-channel model
    picture = read_image(str(Path(data_dir) / "mr-sagittal-2d" / "images" / "17.png"))
    volume = read_image(str(Path(data_dir) / "mr-lumbar-vb3" / "VB3_17_img.nii.gz"))
    assert choose_card(picture, "MR").name == "verdiff-mr-2d"
    assert choose_card(volume, "MR").name == "verdiff-mr" and choose_card(volume, "MR").context_slices == 1
    named = choose_card(picture, "verdiff-mr")
    with pytest.raises(VerdiffError, match="such as verdiff-mr-2d"):
        check_card_fits(picture, named)
    assert suite_card(named, "clinical-sagittal").name == "verdiff-mr-2d" and suite_card(named, "inverted") is named
    wide["input"]["context_slices"], wide["network"]["in_channels"] = 0, 1  # a planar model only for 2.5D cards
    (tmp_path / "verdiff-mr.json").write_text(json.dumps(wide))
    with pytest.raises(VerdiffError, match="planar_model is for 2.5D cards"):
        get_card("verdiff-mr")


def test_a_bias_field_is_divided_out_before_the_intensities_are_scaled_and_the_grid_is_kept(data_dir):
    """preparation decision 6 on a real MR volume shaded by a smooth field (intensities x 0.45..2.2
    across the field of view, a linear log field): with N4 the network's input lies closer to
    the unshaded volume's than without it (measured 12 % closer: N4 is conservative, and a
    field that runs across a whole field of view of fat and muscle is in part taken for
    anatomy; about a fifth of this one's log-field spread is removed); the grid and the way
    back are the image's own."""
    from VerdiffSegmentLib.preparation import bias_corrected, prepare_image

    clean = sitk.Cast(read_image(str(data_dir / "mr-lumbar-vb3" / "VB3_17_img.nii.gz")), sitk.sitkFloat32)
    size = np.array(clean.GetSize()[::-1], float)  # numpy order
    grid = np.meshgrid(*[np.linspace(-0.5, 0.5, int(n)) for n in size], indexing="ij")
    field = np.exp(1.2 * grid[1] + 0.6 * grid[2]).astype(np.float32)
    shaded = sitk.GetImageFromArray(sitk.GetArrayFromImage(clean) * field)
    shaded.CopyInformation(clean)
    plain = {"kind": "percentile", "low": 0.5, "high": 99.5}
    n4 = {**plain, "bias_field": "n4"}
    uncorrected = prepare_image(shaded, 1.25, plain)
    without = np.abs(uncorrected.stack - prepare_image(clean, 1.25, plain).stack).mean()
    corrected, reference = prepare_image(shaded, 1.25, n4), prepare_image(clean, 1.25, n4)
    assert np.abs(corrected.stack - reference.stack).mean() < 0.93 * without
    assert corrected.planar is shaded and corrected.stack.shape == uncorrected.stack.shape
    assert corrected.reference.GetOrigin() == reference.reference.GetOrigin() and corrected.reference.GetSpacing() == reference.reference.GetSpacing()
    # Nothing to fit (no foreground for the mask): the intensities as given.
    constant = sitk.Image(clean.GetSize(), sitk.sitkFloat32) + 7.0
    assert np.array_equal(sitk.GetArrayFromImage(bias_corrected(constant)), sitk.GetArrayFromImage(constant))


def test_a_coronal_run_trains_on_the_coronal_planes_inference_samples(data_dir):
    """``--view coronal``: the training case is, voxel for voxel, the stack inference prepares
    from ``coronal_view`` of the image; its slices run front to back across the sagittal grid's
    columns, the same voxels (the turned image's array is the image's), and its truth maps back
    onto the sagittal grid as the sagittal truth."""
    import pytest

    from VerdiffSegmentLib.preparation import coronal_view
    from training.configs import RunConfig

    card = get_card("verdiff-mr")
    item = datasets.mr_item(data_dir, "VB3_17")
    run = RunConfig.from_dict({**recipe_config("verdiff-mr", channels=card.channels, context_slices=1).to_dict(), "view": "coronal"})
    assert RunConfig.from_dict(run.to_dict()).view == "coronal" and "view" not in recipe_config("verdiff-mr").to_dict()
    case = datasets.run_case(item, run)
    image = read_image(str(item.image))
    turned = coronal_view(image)
    assert np.array_equal(sitk.GetArrayViewFromImage(turned), sitk.GetArrayViewFromImage(image)) and turned.GetDirection() != image.GetDirection()
    coronal = prepare_for_card(turned, card)
    sagittal = prepare_for_card(image, card)
    assert np.array_equal(case.images, coronal.stack)
    slices, rows, columns = sagittal.stack.shape
    assert case.images.shape[1] == rows and case.images.shape[0] > slices  # front to back: more planes than the slab's sagittal slices
    assert abs(case.images.shape[2] * card.spacing_mm - slices * sagittal.grid_spacing[0]) <= 2 * card.spacing_mm  # across: the slab's width
    truth = sagittal.labels_on_grid(sitk.ReadImage(str(item.labels))) > 0
    on_voxels = coronal.to_input_grid(case.labels.astype(np.float32), is_label=False)
    on_voxels.CopyInformation(image)
    back = sitk.GetArrayFromImage(sitk.Resample(on_voxels, sagittal.reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)) > 0.5
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.98
    for bad in ({"view": "axial"}, {"view": "coronal", "recipe": "verdiff-xray", "context_slices": 0, "context_distance_mm": None}):
        data = {**run.to_dict(), **bad}
        with pytest.raises(ValueError, match="view"):
            RunConfig.from_dict({k: v for k, v in data.items() if v is not None})

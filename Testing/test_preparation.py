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


def training_case(recipe: str, item: datasets.Item):
    run = recipe_config(recipe)
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
    case = training_case("verdiff-xray", item)
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

"""Every bundled model card: its weights match its sha256 and load into its family's network,
and it carries what docs/models.md and the module show (validation figures, training command)."""

import copy
import json

import pytest
import torch

from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.models import CARD_SCHEMA_VERSION, list_cards, load_network, make_scheduler, parse_card, read_card

pytestmark = pytest.mark.usefixtures("one_thread")

CARDS = list_cards()


def test_the_bundled_models_cover_every_family():
    assert {card.family_name for card in CARDS} == {"verdiff-net", "versediff-unet", "imgx-diffseg", "ldseg", "unet"}


@pytest.mark.parametrize("card", CARDS, ids=[card.name for card in CARDS])
def test_bundled_card_loads_with_its_checksum_and_records_its_validation(card):
    network = load_network(card, torch.device("cpu"))  # checks the sha256, weights_only, strict keys
    assert network.num_classes == len(card.labels) + (card.gap_channel is not None)  # a gap channel is no label
    scheduler = make_scheduler(card)
    if scheduler is not None:
        scheduler.set_timesteps(card.default_steps)  # the card's defaults are valid settings
    validation = card.validation
    assert 0 < validation["dice_mean"] <= 1
    assert card.training["command"].startswith("python -m training train")


def card_json(**changes) -> dict:
    card = next(card for card in CARDS if card.name == "verdiff-mr")
    return {**copy.deepcopy(card.raw), **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schema_version": CARD_SCHEMA_VERSION + 1}, "newer than this VerdiffSegment reads"),
        ({"schema_version": "1"}, "schema_version must be a positive integer"),
        ({"modality": "PET"}, "modality must be one of"),
        ({"labels": []}, "labels must be a non-empty list"),
        ({"input": {"spacing_mm": "one", "normalisation": {}}}, "input or defaults are malformed"),
        ({"input": {"spacing_mm": 0, "normalisation": {}}}, "spacing_mm must be positive"),
        ({"defaults": {"steps": 1, "ensemble": 0}}, "ensemble >= 1"),
        ({"network": [16, 32]}, "network must be an object"),
        ({"reliability": {"min_vertebrae_share": 1.5}}, "min_vertebrae_share must lie in"),
        ({"postprocess": {"acquired_slice_threshold": 1.5}}, "acquired_slice_threshold must be a probability in"),
        ({"postprocess": {"acquired_slice_threshold": "0.8"}}, "acquired_slice_threshold must be a probability in"),
        ({"separation": {"gap_channel": "1"}}, "gap_channel must be an integer"),
        ({"separation": {"gap_channel": 1}}, "gap_channel is for a binary label with the gaps"),  # the MR card's network has one output
        ({"naming": {"extra_vertebrae": "below"}}, "naming.extra_vertebrae must be one of above, either"),
        ({"input": {**card_json()["input"], "edge_padding_px": -8}}, "edge_padding_px must be a whole number of pixels"),
        ({"input": {**card_json()["input"], "edge_padding_px": 1.5}}, "edge_padding_px must be a whole number of pixels"),
        ({"input": {**card_json()["input"], "edge_padding_px": True}}, "edge_padding_px must be a whole number of pixels"),
        ({"input": {**card_json()["input"], "edge_padding_sides": "inferior"}}, "edge_padding_sides must be one of all, superior"),
        ({"input": {**card_json()["input"], "tile_px": 100}}, "tile_px must be a whole number of pixels, a multiple of input.pad_multiple"),
        ({"input": {**card_json()["input"], "tile_px": True}}, "tile_px must be a whole number of pixels"),
        ({"input": {**card_json()["input"], "tile_px": 176, "tile_padding": "edge"}}, "tile_padding must be one of none, zeros"),
        ({"input": {**card_json()["input"], "normalisation": {"kind": "percentile", "low": 0.5, "high": 99.5, "bias_field": "n3"}}},
         "normalisation.bias_field must be one of None, n4, got 'n3'"),
    ],
    ids=["newer-schema", "schema-not-int", "modality", "no-labels", "spacing-text", "spacing-zero", "ensemble-zero", "network-list", "vertebrae-share", "acquired-threshold-above-1", "acquired-threshold-text",
         "gap-channel-text", "gap-channel-without-output", "extra-vertebrae",
         "edge-padding-negative", "edge-padding-fraction", "edge-padding-bool", "edge-padding-sides", "tile-not-multiple", "tile-bool", "tile-padding",
         "bias-field"],
)
def test_a_malformed_card_is_one_clear_error_naming_the_card(tmp_path, changes, message):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(card_json(**changes)), encoding="utf-8")
    with pytest.raises(VerdiffError, match=message) as error:
        read_card(path)
    assert str(path) in str(error.value)


def test_cards_without_a_schema_version_are_version_1_and_parse_to_the_same_card(tmp_path):
    data = card_json()
    data.pop("schema_version", None)
    (tmp_path / "old.json").write_text(json.dumps(data), encoding="utf-8")
    old = read_card(tmp_path / "old.json")
    assert old.schema_version == 1
    bundled = next(card for card in CARDS if card.name == "verdiff-mr")
    assert old.channels == (16, 32, 64, 128) and old.postprocess["spine_bridge_mm"] == 15
    assert (old.default_steps, old.default_ensemble, old.postprocess, old.self_dice_warning) == (
        bundled.default_steps, bundled.default_ensemble, bundled.postprocess, bundled.self_dice_warning)
    assert parse_card(old.raw, old.path) == old  # parsing is a pure function of the JSON


def test_one_resolver_takes_auto_a_modality_or_a_name():
    from VerdiffSegmentLib.io import read_image
    from VerdiffSegmentLib.pipeline import choose_card

    from conftest import xray_image

    image = read_image(str(xray_image()))
    # "MR" on a 2D picture: the 2.5D MR default's planar model (input.planar_model)
    assert [choose_card(image, name).name for name in ("auto", "MR", "CT", "XR", "unet-xray")] == ["verdiff-xray", "verdiff-mr-2d", "verdiff-ct", "verdiff-xray", "unet-xray"]
    with pytest.raises(VerdiffError, match="unknown model 'mr'"):
        choose_card(image, "mr")


# -- 2.5D cards: input.context_slices (issue 16, item 4) -----------------------------------
def _context_card(context, in_channels, **network):
    data = card_json()
    data["input"] = {**data["input"], "context_slices": context}
    data["network"] = {**data["network"], "in_channels": in_channels, **network}
    return data


@pytest.mark.parametrize(
    "context, in_channels, network, message",
    [
        (1, 1, {}, "network.in_channels is 1 but input.context_slices 1 needs 3"),
        (0, 3, {}, "network.in_channels is 3 but input.context_slices 0 needs 1"),
        (2, 3, {}, "input.context_slices 2 needs 5"),
        (-1, -1, {}, "context_slices must be 0 or more"),
        ("1", 3, {}, "must be integers"),
        (1, 3, {"spatial_dims": 3}, "for 2D \\(sagittal-slice\\) networks"),
    ],
    ids=["context-without-channels", "channels-without-context", "too-few-channels", "negative", "text", "3d-network"],
)
def test_a_card_whose_context_slices_and_in_channels_disagree_is_one_clear_error(tmp_path, context, in_channels, network, message):
    path = tmp_path / "context.json"
    path.write_text(json.dumps(_context_card(context, in_channels, **network)), encoding="utf-8")
    with pytest.raises(VerdiffError, match=message) as error:
        read_card(path)
    assert str(path) in str(error.value) and str(error.value).count("\n") == 0


def test_a_consistent_2_5d_card_parses_and_only_the_mr_default_and_its_candidate_are_2_5d():
    card = parse_card(_context_card(1, 3), CARDS[0].path)
    assert card.context_slices == 1 and card.network_config["in_channels"] == 3 and "2.5D (+-1 slices)" in card.summary()
    wide = {c.name: c.planar_model for c in CARDS if c.context_slices}
    # session 4, and the session-11 candidate continued from it; their planar model is bundled and 1-channel
    assert wide == {"verdiff-mr": "verdiff-mr-2d", "verdiff-mr-large-crop": "verdiff-mr-2d"}
    assert all("context_slices" not in c.raw["input"] for c in CARDS if c.name not in wide)  # written before them: unchanged
    assert next(c for c in CARDS if c.name == "verdiff-mr-2d").context_slices == 0


def test_context_distance_is_read_from_the_card_and_refused_where_it_means_nothing():
    """``input.context_distance_mm``: absent on the cards written before it (None: the channels
    ``spacing_mm`` apart), read as given on a 2.5D card, and refused on a 1-channel card (no
    neighbours to place) or when it is no distance."""
    assert all(card.context_distance_mm is None for card in CARDS if "context_distance_mm" not in card.raw["input"])
    wide = next(card for card in CARDS if card.name == "verdiff-mr")
    assert wide.derived(input={**wide.raw["input"], "context_distance_mm": 4}).context_distance_mm == 4.0
    planar = next(card for card in CARDS if card.name == "verdiff-mr-2d")
    with pytest.raises(VerdiffError, match="context_distance_mm is for 2.5D cards"):
        planar.derived(input={**planar.raw["input"], "context_distance_mm": 4.0})
    for bad in (0, -1.0, "4", True, 1000):
        with pytest.raises(VerdiffError, match="context_distance_mm must be a distance in mm"):
            wide.derived(input={**wide.raw["input"], "context_distance_mm": bad})


def test_edge_padding_is_read_from_the_card_and_refused_on_a_3d_network(tmp_path):
    """``input.edge_padding_px``: absent on the cards written before it (0), read as given, and
    refused on a 3D card (its sliding window pads itself; the option pads sagittal slices)."""
    assert all(card.edge_padding == 0 for card in CARDS if "edge_padding_px" not in card.raw["input"])
    padded = next(card for card in CARDS if card.name == "verdiff-mr").derived(input={**card_json()["input"], "edge_padding_px": 16})
    assert padded.edge_padding == 16
    volumetric = next(card for card in CARDS if card.spatial_dims == 3)
    with pytest.raises(VerdiffError, match="edge_padding_px is for 2D"):
        volumetric.derived(input={**volumetric.raw["input"], "edge_padding_px": 8})



def test_a_view_is_read_from_the_card_and_refused_where_it_means_nothing():
    """``input.view`` (absent: sagittal, as every card written before it): read as given on a
    2D card of volumes, refused on a radiograph's card and a 3D network's; a coronal card refuses
    a single picture (no coronal planes) with one clear error."""
    from VerdiffSegmentLib.pipeline import check_card_fits
    from conftest import xray_image
    from VerdiffSegmentLib.io import read_image

    assert all(card.view == "sagittal" for card in CARDS if "view" not in card.raw["input"])
    mr = next(card for card in CARDS if card.name == "verdiff-mr-2d")
    coronal = mr.derived(input={**mr.raw["input"], "view": "coronal"})
    assert coronal.view == "coronal"
    for bad in ("axial", ""):
        with pytest.raises(VerdiffError, match="input.view must be one of sagittal, coronal"):
            mr.derived(input={**mr.raw["input"], "view": bad})
    for other in (next(c for c in CARDS if c.modality == "XR"), next(c for c in CARDS if c.spatial_dims == 3)):
        with pytest.raises(VerdiffError, match="input.view is for 2D cards of volumes"):
            other.derived(input={**other.raw["input"], "view": "coronal"})
    picture = read_image(str(xray_image()))
    check_card_fits(picture, mr)  # the planar MR card takes a picture
    with pytest.raises(VerdiffError, match="reads a volume's coronal planes"):
        check_card_fits(picture, coronal)

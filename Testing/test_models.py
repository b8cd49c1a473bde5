"""Every bundled model card: its weights match its sha256 and load into its family's network,
and it carries what docs/models.md and the module show (validation figures, training command)."""

import pytest
import torch

from VerdiffSegmentLib.models import list_cards, load_network, make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")

CARDS = list_cards()


def test_the_bundled_models_cover_every_family():
    assert {card.data["family"] for card in CARDS} == {"verdiff-net", "versediff-unet", "imgx-diffseg", "ldseg", "unet"}


@pytest.mark.parametrize("card", CARDS, ids=[card.name for card in CARDS])
def test_bundled_card_loads_with_its_checksum_and_records_its_validation(card):
    network = load_network(card, torch.device("cpu"))  # checks the sha256, weights_only, strict keys
    assert network.num_classes == len(card.labels)
    scheduler = make_scheduler(card)
    if scheduler is not None:
        scheduler.set_timesteps(card.default_steps)  # the card's defaults are valid settings
    validation = card.data["validation"]
    assert 0 < validation["dice_mean"] <= 1
    assert card.data["training"]["command"].startswith("python -m training train")

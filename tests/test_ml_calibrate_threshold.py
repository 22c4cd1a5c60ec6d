"""`python -m ml.calibrate --threshold-only`: the novelty threshold refitted at a new keep share,
and nothing else in the model folder changed but the figures that depend on it."""

import pytest
import torch

from conftest import make_model_dir
from ml.calibrate import cli
from ml.data.files import write_json_atomic
from ml.evaluate.farout import far_out_sets
from ml.nets.cardmodel import CardModel
from ml.nets.modelfile import CARD_FILE, load_model_dir, read_card

ENERGY = {"method": "energy", "threshold": 0.0, "keep_share": 0.5, "fitted_on": "an older fit",
          "energy_temperature": 4.0, "open_set": {"mean_auroc": {"energy": 0.8}}}
STALE_FAR_OUT = {"known_images": 60, "known_recognised": 0.5,
                 "sets": {"noise": {"images": 300, "auroc": {"energy": 0.5}, "refused": 0.123}}}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = make_model_dir(tmp_path_factory.mktemp("threshold") / "model",
                            novelty=dict(ENERGY, far_out=STALE_FAR_OUT))
    card = dict(read_card(folder), data={"val_size": 60, "split_seed": 0}, temperature=0.5)
    write_json_atomic(folder / CARD_FILE, card)
    return folder


def refit(folder, data, keep_share):
    cli.main(["--model", str(folder), "--data", str(data), "--threshold-only", "--no-suite",
              "--keep-share", str(keep_share)])
    return load_model_dir(folder)[1]  # the weights' digest still verifies


def test_threshold_only_refits_the_threshold_at_the_share_and_keeps_the_rest(model_folder, tiny_dataset):
    before = read_card(model_folder)
    card = refit(model_folder, tiny_dataset, 0.9)
    novelty = card.pop("novelty")
    assert card == {k: v for k, v in before.items() if k != "novelty"}
    assert novelty["method"] == "energy" and novelty["energy_temperature"] == 4.0
    assert novelty["open_set"] == ENERGY["open_set"]  # the protocol's own models: not refitted here
    assert novelty["keep_share"] == 0.9 and novelty["fitted_on"] == "60 validation images"
    card_model = CardModel.load(model_folder)
    scores = card_model.novelty(*card_model.outputs(card_model.dataset(str(tiny_dataset)).val.images))
    assert novelty["threshold"] == pytest.approx(float(torch.quantile(scores, 0.9, interpolation="higher")))
    assert (scores <= novelty["threshold"]).float().mean() >= 0.9
    assert sum(novelty["validation_histogram"]["counts"]) == 60


def test_threshold_only_remeasures_the_far_out_refusals_at_the_new_threshold(model_folder, tiny_dataset):
    low = refit(model_folder, tiny_dataset, 0.5)["novelty"]
    high = refit(model_folder, tiny_dataset, 1.0)["novelty"]
    assert low["threshold"] < high["threshold"]
    card_model = CardModel.load(model_folder)
    noise = card_model.novelty(*card_model.outputs(far_out_sets()["noise"]))
    far_out = high["far_out"]
    assert far_out["sets"]["noise"]["refused"] == pytest.approx(float((noise > high["threshold"]).float().mean()))
    assert far_out["known_recognised"] == 1.0 and far_out["known_images"] == 60
    assert set(far_out["sets"]) == set(far_out_sets())  # every far-out set measured, not only the stale one


def test_threshold_only_and_sets_only_together_is_an_error(model_folder, tiny_dataset):
    before = (model_folder / CARD_FILE).read_bytes()
    with pytest.raises(SystemExit, match="give one of them"):
        cli.main(["--model", str(model_folder), "--data", str(tiny_dataset), "--threshold-only", "--sets-only"])
    assert (model_folder / CARD_FILE).read_bytes() == before


def test_threshold_only_with_the_suite_remeasures_its_recognised_shares(tmp_path, tiny_dataset):
    folder = make_model_dir(tmp_path / "model", novelty=ENERGY)
    stale = {"recognised": 0.123, "accuracy": 0.5}
    card = dict(read_card(folder), data={"val_size": 60, "split_seed": 0}, temperature=0.5,
                robustness={"tta": 0, "variants": dict(stale), "corruptions": dict(stale)})
    write_json_atomic(folder / CARD_FILE, card)
    shares = {}
    for keep in (0.5, 1.0):
        cli.main(["--model", str(folder), "--data", str(tiny_dataset), "--threshold-only", "--keep-share", str(keep)])
        robustness = read_card(folder)["robustness"]
        for kind in ("variants", "corruptions"):
            assert robustness[kind]["accuracy"] == 0.5  # measured before: stays
            assert robustness[kind]["recognised"] == robustness[kind]["sets"]["recognised"] != 0.123
        shares[keep] = robustness["corruptions"]["recognised"]
    assert shares[0.5] <= shares[1.0]

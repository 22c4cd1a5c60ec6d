"""The one step that finishes a model folder, for a training run (`ml.train`) and for
`python -m ml.calibrate` alike: calibrate, fit the novelty threshold, measure, write.

Temperature scaling makes the probabilities a user sees honest. Label smoothing makes airnet
under-confident (it says 60% where it is right 90% of the time); one scalar temperature T, fitted
on the validation split (and on the calibration mix of photos as they arrive) by minimising its
cross-entropy, fixes that without changing any prediction: probabilities are softmax(logits / T).
The novelty threshold says where "none of these" starts (ml/nets/novelty.py); the conformal
threshold which classes a photo may be at the stated coverage (ml/nets/conformal.py). Then the robustness
suite's and far-out sets' figures and, for a new model, the serving policy go into the card, and
the folder is written atomically with its gallery and the novelty bank.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ml.nets import conformal
from ml.data import robustness
from ml.data.sources import Dataset, Split
from ml.evaluate.farout import far_out_sets, novelty_report
from ml.evaluate.report import report_from_logits
from ml.evaluate.serving_policy import merged, serving_section
from ml.data.files import write_json_atomic
from ml.evaluate.suite import SUITE_CORRUPTION_IMAGES, SUITE_VARIANT_IMAGES, robustness_report, suite_sets
from ml.nets.cardmodel import CardModel
from ml.nets.device import pick_amp_dtype
from ml.nets.modelfile import CARD_FILE, gallery_files, novelty_file, write_model_dir
from ml.nets.novelty import (BANK_SIZE, DEFAULT_KEEP_SHARE, DEFAULT_METHOD, ENERGY_TEMPERATURE, KNN_K,
                             fit_threshold, novelty_scores, score_histogram, training_bank)

PACKAGE_PHOTOS = "package-photos"  # under the data folder, made by scripts/export_package_photos.py


@dataclass
class Calibration:
    """A fitted temperature and the validation split's report, logits and features under it."""
    temperature: float
    report: dict
    logits: torch.Tensor    # divided by the temperature
    features: torch.Tensor


@dataclass
class FinishSettings:
    """What finishing measures and fits (ml.calibrate's flags; a training run's defaults)."""
    data_root: str                      # the dataset folder: its .cache and package photos
    suite: bool = True                  # the robustness suite's and far-out sets' figures (minutes)
    serving: bool = False               # the serving policy (precision gate, TTA policy)
    novelty_method: str = DEFAULT_METHOD
    keep_share: float = DEFAULT_KEEP_SHARE
    energy_temperature: float = ENERGY_TEMPERATURE
    coverage: float = conformal.DEFAULT_COVERAGE   # of the prediction sets
    conformal_method: str = conformal.DEFAULT_METHOD


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising cross-entropy of softmax(logits / T); optimised in log space."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def shifted_logits(card_model: CardModel, val: Split):
    """(logits, labels) of the calibration mix (ml/data/robustness.py): validation images outside
    the suite's subsets, as client round trips and under corruptions; bf16 where supported."""
    exclude = torch.cat([robustness.suite_subset(val.labels, SUITE_VARIANT_IMAGES),
                         robustness.suite_subset(val.labels, SUITE_CORRUPTION_IMAGES, seed=1)])
    images, labels = robustness.calibration_mix(val, exclude)
    if not len(images):
        return torch.zeros(0, len(val.labels.unique())), labels
    return card_model.raw_outputs(images, amp_dtype=pick_amp_dtype("auto", card_model.device))[0], labels


def calibrate(card_model: CardModel, dataset: Dataset, shifted=True) -> Calibration:
    """The temperature and the report on the dataset's validation split, in full precision as
    served. The temperature is fitted on these logits and, with `shifted`, on the calibration mix
    too, so confidence stays honest on photos as they arrive (docs/model.md)."""
    logits, features = card_model.raw_outputs(dataset.val.images)
    fit_logits, fit_labels = logits, dataset.val.labels
    if shifted:
        mix_logits, mix_labels = shifted_logits(card_model, dataset.val)
        fit_logits, fit_labels = torch.cat([logits, mix_logits]), torch.cat([fit_labels, mix_labels])
    temperature = fit_temperature(fit_logits, fit_labels)
    report = report_from_logits(logits / temperature, dataset.val.labels, dataset.classes, dataset.val_name,
                                card_model.tta)
    return Calibration(temperature, report, logits / temperature, features)


def training_feature_bank(card_model: CardModel, dataset: Dataset) -> torch.Tensor:
    """KNN's bank: the normalised plain-view features of BANK_SIZE training images, a fixed sample."""
    sample = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))[:BANK_SIZE]
    return training_bank(card_model.raw_outputs(dataset.train.images[sample], tta=0)[1])


def fit_novelty(card_model: CardModel, dataset: Dataset, calibration: Calibration, settings: FinishSettings):
    """(card section, training-feature bank): the novelty method (energy at the settings'
    temperature), its bank of normalised training features and the threshold that `keep_share`
    of the validation images stay under."""
    bank = training_feature_bank(card_model, dataset)
    method = settings.novelty_method
    scores = novelty_scores(method, calibration.logits, calibration.features, bank, settings.energy_temperature)
    spec = {"method": method, **fitted_threshold(scores, settings.keep_share, dataset.val_name)}
    if method == "energy":
        spec["energy_temperature"] = settings.energy_temperature
    if method == "knn":
        spec.update(k=KNN_K, bank_images=len(bank))
    return spec, bank


def fitted_threshold(scores: torch.Tensor, keep_share: float, val_name: str) -> dict:
    """The novelty section's fitted fields: the threshold that `keep_share` of these validation
    scores stay under, and the scores' histogram around it."""
    threshold = fit_threshold(scores, keep_share)
    return {"threshold": threshold, "keep_share": keep_share, "fitted_on": f"{len(scores)} {val_name} images",
            "validation_histogram": score_histogram(scores, threshold)}


def fit_sets(card_model: CardModel, logits: torch.Tensor, dataset: Dataset, settings: FinishSettings) -> CardModel:
    """The card with its conformal prediction sets, fitted on the probabilities the card states
    (calibrated logits at the card's TTA level, fp32) of a fixed half of the validation split."""
    sets = conformal.fit_conformal(logits.softmax(1), dataset.val.labels, settings.coverage,
                                   settings.conformal_method)
    return card_model.with_card(conformal=dict(sets, fitted_on=f"{dataset.val_name} split, card TTA, fp32"))


def refit_sets(model_dir, card_model: CardModel, dataset: Dataset, settings: FinishSettings) -> dict:
    """Fit only the prediction sets of a finished model folder and rewrite its card.json alone (the
    weights, temperature, novelty section and every measured figure stay as they were); with
    `settings.suite`, the sets' coverage and the refusals on the suite's inputs join its robustness
    section. Returns the card."""
    card_model = fit_sets(card_model, card_model.outputs(dataset.val.images)[0], dataset, settings)
    card = with_suite_sets(card_model, dataset, settings)
    write_json_atomic(Path(model_dir) / CARD_FILE, card)
    return card


def refit_threshold(model_dir, card_model: CardModel, dataset: Dataset, settings: FinishSettings) -> dict:
    """Refit only the novelty threshold of a finished model folder at `settings.keep_share`, for the
    card's own score (method and energy temperature) at its temperature, and rewrite its card.json
    alone; the far-out sets' shares refused are re-measured at the new threshold and, with
    `settings.suite`, the suite's refusals too. Weights, temperature, prediction sets and every
    other figure stay. Returns the card."""
    spec = card_model.card["novelty"]
    scores = card_model.novelty(*card_model.outputs(dataset.val.images))
    novelty = dict(spec, **fitted_threshold(scores, settings.keep_share, dataset.val_name))
    card_model = card_model.with_card(novelty=novelty)
    if spec.get("far_out"):
        far_out = far_out_figures(card_model, dataset.val, settings.data_root)
        card_model = card_model.with_card(novelty=dict(novelty, far_out=far_out))
    card = with_suite_sets(card_model, dataset, settings)
    write_json_atomic(Path(model_dir) / CARD_FILE, card)
    return card


def with_suite_sets(card_model: CardModel, dataset: Dataset, settings: FinishSettings) -> dict:
    """The card, with `settings.suite` and a measured suite, with the prediction sets' coverage and
    the shares recognised on the suite's inputs (at the card's threshold) in its robustness section."""
    card = card_model.card
    if settings.suite and card.get("robustness"):
        amp_dtype = pick_amp_dtype("auto", card_model.device)
        found = suite_sets(card_model, dataset.val, Path(settings.data_root) / ".cache", amp_dtype)
        robustness = {key: dict(value, sets=found[key], recognised=found[key]["recognised"]) if key in found
                      else value for key, value in card["robustness"].items()}
        card = dict(card, robustness=robustness)
    return card


def measured(card_model: CardModel, val: Split, data_root) -> CardModel:
    """The card with the far-out sets' figures in its novelty section and the robustness suite's
    (bf16 where the hardware has it)."""
    far_out = far_out_figures(card_model, val, data_root)
    robustness = robustness_report(card_model, val, Path(data_root) / ".cache",
                                   pick_amp_dtype("auto", card_model.device))
    return card_model.with_card(novelty=dict(card_model.card["novelty"], far_out=far_out), robustness=robustness)


def far_out_figures(card_model: CardModel, val: Split, data_root) -> dict:
    """AUROC and share refused of every far-out set (the package photos where `make package-photos`
    put them), against the validation split, at the card's threshold."""
    photos = Path(data_root) / PACKAGE_PHOTOS
    return novelty_report(card_model, val, far_out_sets(photos if photos.is_dir() else None),
                          pick_amp_dtype("auto", card_model.device))


def finish(out_dir, card_model: CardModel, dataset: Dataset, calibration: Calibration,
           settings: FinishSettings) -> dict:
    """Write the model folder `out_dir`: the card with the temperature and report, the fitted
    novelty section and, as `settings` ask, the suite's figures and the serving policy; beside the
    weights the dashboard's gallery and (knn) the novelty bank. Returns the card."""
    card_model = card_model.with_card(temperature=calibration.temperature, evaluation=calibration.report)
    novelty, bank = fit_novelty(card_model, dataset, calibration, settings)
    open_set = (card_model.card.get("novelty") or {}).get("open_set")
    if open_set:  # scripts/open_set's figures: its own 8-class models, which a refit does not touch
        novelty["open_set"] = open_set
    files = {}
    if settings.novelty_method == "knn":
        files, novelty["bank_sha256"] = novelty_file(bank)
    card_model = card_model.with_card(novelty=novelty, novelty_bank=bank)
    # fitted before the suite, so that it measures the sets' coverage under shift too
    card_model = fit_sets(card_model, calibration.logits, dataset, settings)
    if settings.suite:
        card_model = measured(card_model, dataset.val, settings.data_root)
    card = card_model.card
    if settings.serving:  # the precision and TTA policy the server will use (speeds: ml.evaluate)
        card = merged(card, serving_section(card_model, dataset.val, Path(settings.data_root) / ".cache",
                                            speed=False))
    gallery = gallery_files(dataset.val.images, calibration.report, dataset.train, dataset.classes)
    write_model_dir(out_dir, card_model.model, card, {**gallery, **files})
    return card

"""Temperature scaling, so the probabilities a user sees are honest; and the novelty threshold,
so a photo of none of the ten classes is said to be so.

Label smoothing makes airnet under-confident (it says 60% where it is right 90% of the time). One
scalar temperature T, fitted on the validation split by minimising its cross-entropy, fixes that
without changing any prediction: probabilities are softmax(logits / T). `ml.train` fits it at the
end of training, with the novelty score's training-feature bank and threshold (ml/novelty.py);
this command fits both for an existing model folder and rewrites its card:

    python -m ml.calibrate --model models/default --data data
"""

import argparse

import torch
import torch.nn.functional as F

from pathlib import Path

from ml.data import robustness
from ml.data.sources import Split
from ml.nets.device import pick_amp_dtype, pick_device
from ml.evaluate.report import (SUITE_CORRUPTION_IMAGES, SUITE_VARIANT_IMAGES, ModelRunner, far_out_sets,
                         load_model_split, novelty_report, predict_outputs, report_from_logits,
                         robustness_report)
from ml.nets.modelfile import gallery_files, load_model_dir, novelty_file, write_model_dir
from ml.nets.novelty import (BANK_SIZE, DEFAULT_KEEP_SHARE, DEFAULT_METHOD, ENERGY_TEMPERATURE, KNN_K, METHODS,
                        fit_threshold, novelty_scores, training_bank)

PACKAGE_PHOTOS = "package-photos"  # under the data folder, made by scripts/export_package_photos.py


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


def shifted_logits(model, val: Split, device, tta, norm):
    """(logits, labels) of the calibration mix (ml/robustness.py): validation images outside the
    suite's subsets, as client round trips and under corruptions; bf16 where supported."""
    exclude = torch.cat([robustness.suite_subset(val.labels, SUITE_VARIANT_IMAGES),
                         robustness.suite_subset(val.labels, SUITE_CORRUPTION_IMAGES, seed=1)])
    images, labels = robustness.calibration_mix(val, exclude)
    if not len(images):
        return torch.zeros(0, len(val.labels.unique())), labels
    logits = predict_outputs(model, Split(images, labels), device, tta=tta, norm=norm,
                             amp_dtype=pick_amp_dtype("auto", device))[0]
    return logits, labels


def calibrated_report(model, dataset, device, tta, norm, shifted=True):
    """(temperature, report, calibrated logits, features) on the dataset's validation split, in
    full precision as served. The temperature is fitted on these logits and, with `shifted`, on
    the calibration mix too, so confidence stays honest on photos as they arrive (docs/model.md)."""
    logits, features = predict_outputs(model, dataset.val, device, tta=tta, norm=norm)
    fit_logits, fit_labels = logits, dataset.val.labels
    if shifted:
        mix_logits, mix_labels = shifted_logits(model, dataset.val, device, tta, norm)
        fit_logits, fit_labels = torch.cat([logits, mix_logits]), torch.cat([fit_labels, mix_labels])
    temperature = fit_temperature(fit_logits, fit_labels)
    report = report_from_logits(logits / temperature, dataset.val.labels, dataset.classes, dataset.val_name, tta)
    return temperature, report, logits / temperature, features


def fit_novelty(model, dataset, device, norm, val_logits, val_features, method=DEFAULT_METHOD,
                keep_share=DEFAULT_KEEP_SHARE, seed=0, energy_temperature=ENERGY_TEMPERATURE):
    """(card section, training-feature bank): the novelty method (energy at `energy_temperature`), its bank
    of normalised training features and the threshold that `keep_share` of the validation images
    stay under."""
    sample = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))[:BANK_SIZE]
    train_features = predict_outputs(model, Split(dataset.train.images[sample], dataset.train.labels[sample]),
                                     device, norm=norm)[1]
    bank = training_bank(train_features)
    threshold = fit_threshold(novelty_scores(method, val_logits, val_features, bank, energy_temperature),
                              keep_share)
    spec = {"method": method, "threshold": threshold, "keep_share": keep_share,
            "fitted_on": f"{len(val_logits)} {dataset.val_name} images"}
    if method == "energy":
        spec["energy_temperature"] = energy_temperature
    if method == "knn":
        spec.update(k=KNN_K, bank_images=len(bank))
    return spec, bank


def fit_novelty_and_measure(model, card, dataset, device, val_logits, val_features, data_root, suite=True,
                            method=DEFAULT_METHOD, keep_share=DEFAULT_KEEP_SHARE,
                            energy_temperature=ENERGY_TEMPERATURE):
    """(card, extra files): the card with its fitted novelty section and, with `suite`, the
    robustness suite's and far-out sets' figures (bf16 where the hardware has it); the files hold
    the feature bank."""
    norm = (card["normalization"]["mean"], card["normalization"]["std"])
    novelty, bank = fit_novelty(model, dataset, device, norm, val_logits, val_features, method, keep_share,
                                energy_temperature=energy_temperature)
    files = {}
    if method == "knn":
        files, novelty["bank_sha256"] = novelty_file(bank)
    if not suite:
        return dict(card, novelty=novelty), files
    runner = ModelRunner(model, dict(card, novelty=novelty), device, pick_amp_dtype("auto", device), bank)
    photos = Path(data_root) / PACKAGE_PHOTOS
    novelty["far_out"] = novelty_report(runner, dataset.val, far_out_sets(photos if photos.is_dir() else None),
                                        novelty["threshold"], method)
    robustness = robustness_report(runner, dataset.val, Path(data_root) / ".cache")
    return dict(card, novelty=novelty, robustness=robustness), files


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fit the temperature of a model folder on its "
                                     "validation split and rewrite its card and report.")
    parser.add_argument("--model", required=True, help="model folder to calibrate (rewritten atomically)")
    parser.add_argument("--data", default="data", help="the dataset the model was trained on")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--fit-on", default="shifted", choices=["clean", "shifted"],
                        help="fit the temperature on the validation split alone, or with the "
                             "calibration mix of client round trips and corruptions (default)")
    parser.add_argument("--novelty-method", default=DEFAULT_METHOD, choices=METHODS,
                        help="the 'none of these' score (docs/model.md: chosen by measurement)")
    parser.add_argument("--energy-temperature", type=float, default=ENERGY_TEMPERATURE,
                        help="temperature t of the energy score -t * logsumexp(logits / t), on the "
                             "calibrated logits (docs/model.md: chosen by measurement; 1 is Liu et al.'s)")
    parser.add_argument("--suite", action=argparse.BooleanOptionalAction, default=True,
                        help="re-measure the robustness suite and far-out sets into the card (minutes); "
                             "--no-suite refits the temperature and the novelty threshold only")
    parser.add_argument("--keep-share", type=float, default=DEFAULT_KEEP_SHARE,
                        help="share of validation images that stay recognised at the threshold")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, card = load_model_dir(args.model, device)
    dataset = load_model_split(args.data, card)
    norm = (card["normalization"]["mean"], card["normalization"]["std"])
    temperature, report, logits, features = calibrated_report(model, dataset, device, card["tta"], norm,
                                                              args.fit_on == "shifted")
    before = card["evaluation"]["ece"]
    card, novelty_files = fit_novelty_and_measure(model, dict(card, temperature=temperature, evaluation=report),
                                                  dataset, device, logits, features, args.data, args.suite,
                                                  method=args.novelty_method, keep_share=args.keep_share,
                                                  energy_temperature=args.energy_temperature)
    novelty = card["novelty"]
    write_model_dir(args.model, model, card, {**gallery_files(dataset.val.images, report, dataset.train,
                                                              dataset.classes), **novelty_files})
    print(f"{args.model}: temperature {temperature:.3f}, ECE {before:.4f} -> {report['ece']:.4f}, "
          f"accuracy {report['accuracy']:.4f}; novelty {novelty['method']} threshold {novelty['threshold']:.4f}")


if __name__ == "__main__":
    main()

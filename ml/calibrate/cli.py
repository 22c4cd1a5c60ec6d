"""Refit the temperature and the novelty threshold of an existing model folder, re-measure the
suite and rewrite the folder (ml/calibrate/finish.py, the step a training run ends with):

    python -m ml.calibrate --model models/default --data data

or, with --sets-only, fit just the conformal prediction sets and rewrite card.json alone:

    python -m ml.calibrate --model models/default --data data --sets-only --coverage 0.95

or, with --threshold-only, refit just the novelty threshold of the card's score at --keep-share:

    python -m ml.calibrate --model models/default --data data --threshold-only --keep-share 0.992
"""

import argparse

from ml.nets import conformal
from ml.calibrate.finish import FinishSettings, calibrate, finish, refit_sets, refit_threshold
from ml.nets.cardmodel import CardModel
from ml.nets.device import pick_device
from ml.nets.novelty import DEFAULT_KEEP_SHARE, DEFAULT_METHOD, ENERGY_TEMPERATURE, METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml.calibrate", description="Fit the temperature of a model "
                                     "folder on its validation split and rewrite its card and report.")
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
    parser.add_argument("--coverage", type=float, default=conformal.DEFAULT_COVERAGE,
                        help="stated coverage of the prediction sets: the share of photos whose true class "
                             "is among the candidates (fitted on a fixed half of the validation split)")
    parser.add_argument("--conformal-method", default=conformal.DEFAULT_METHOD, choices=conformal.METHODS,
                        help="the prediction sets' score (docs/model.md: chosen by measurement)")
    parser.add_argument("--sets-only", action="store_true",
                        help="fit only the prediction sets at the card's temperature and rewrite card.json "
                             "alone (everything else in the card stays); with --suite, their coverage and "
                             "the refusals on the suite's variants and corruptions join the card too")
    parser.add_argument("--threshold-only", action="store_true",
                        help="refit only the novelty threshold of the card's own score at --keep-share and "
                             "rewrite card.json alone, with the far-out sets' refusals (and, with --suite, "
                             "the suite's) re-measured at it")
    return parser


def print_sets(model, sets: dict):
    held = sets["held_out"]
    print(f"{model}: {sets['method']} sets at {sets['coverage']:.0%}: threshold {sets['threshold']:.4f}, held-out "
          f"coverage {held['coverage']:.4f}, mean size {held['mean_set_size']:.3f} on {held['images']} images")


def main(argv=None):
    args = build_parser().parse_args(argv)
    card_model = CardModel.load(args.model, pick_device(args.device))
    dataset = card_model.dataset(args.data)
    settings = FinishSettings(args.data, suite=args.suite, novelty_method=args.novelty_method,
                              keep_share=args.keep_share, energy_temperature=args.energy_temperature,
                              coverage=args.coverage, conformal_method=args.conformal_method)
    if args.sets_only and args.threshold_only:
        raise SystemExit("--sets-only and --threshold-only each refit one thing; give one of them")
    if args.threshold_only:
        novelty = refit_threshold(args.model, card_model, dataset, settings)["novelty"]
        print(f"{args.model}: novelty {novelty['method']} threshold {novelty['threshold']:.4f} keeps "
              f"{novelty['keep_share']:.1%} of {novelty['fitted_on']}")
        return
    if args.sets_only:
        print_sets(args.model, refit_sets(args.model, card_model, dataset, settings)["conformal"])
        return
    before = card_model.card["evaluation"]["ece"]
    calibration = calibrate(card_model, dataset, shifted=args.fit_on == "shifted")
    card = finish(args.model, card_model, dataset, calibration, settings)
    novelty, report = card["novelty"], calibration.report
    print(f"{args.model}: temperature {calibration.temperature:.3f}, ECE {before:.4f} -> {report['ece']:.4f}, "
          f"accuracy {report['accuracy']:.4f}; novelty {novelty['method']} threshold {novelty['threshold']:.4f}")
    print_sets(args.model, card["conformal"])


if __name__ == "__main__":
    main()

"""Evaluate a model folder on its dataset's validation (or test) split; prints a JSON report.

    python -m ml.evaluate --model models/default --data data [--tta 1] [--out report.json]
    python -m ml.evaluate --model models/default --data data --robustness --novelty \
        [--package-photos data/package-photos]
    python -m ml.evaluate --model models/default --data data --serving-policy --write-card
"""

import argparse
import json
from pathlib import Path

from ml.data.files import write_json_atomic
from ml.evaluate.farout import far_out_sets, novelty_report
from ml.evaluate.report import report_from_logits
from ml.evaluate.serving_policy import merged, serving_section
from ml.evaluate.suite import robustness_report
from ml.nets.cardmodel import CardModel
from ml.nets.device import pick_amp_dtype, pick_device
from ml.nets.modelfile import CARD_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml.evaluate", description="Evaluate a model folder on a dataset's "
                                     "validation (or test) split; prints a JSON report.")
    parser.add_argument("--model", required=True, help="model folder (weights + card.json)")
    parser.add_argument("--data", required=True, help="dataset root (CIFAR python layout or image folders)")
    parser.add_argument("--tta", type=int, default=None, choices=[0, 1, 2],
                        help="test-time augmentation level (default: the card's)")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation images held out (default: the card's, so the split matches training)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--robustness", action="store_true",
                        help="add the robustness suite (client variants, corruptions) to the report")
    parser.add_argument("--novelty", action="store_true",
                        help="add the novelty methods' AUROC on far-out sets (and on the classes an "
                             "open-set model left out) to the report")
    parser.add_argument("--package-photos", default=None,
                        help="folder made by scripts/export_package_photos.py, for the far-out sets")
    parser.add_argument("--suite-precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="autocast for the suite and novelty passes (auto: bf16 where supported, "
                             "about 1.8x faster with TTA; the clean report is always fp32 as served)")
    parser.add_argument("--serving-policy", action="store_true",
                        help="measure the precision gate and TTA policy the server uses on this device "
                             "(on the robustness suite too when the card has its figures; minutes)")
    parser.add_argument("--write-card", action="store_true",
                        help="with --serving-policy: write the measured policy into the model's card")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    card_model = CardModel.load(args.model, device)
    dataset = card_model.dataset(args.data, args.val_size)
    if args.tta is not None:
        card_model = card_model.with_card(tta=args.tta)
    # the clean report in full precision, as served; the suite and novelty passes in --suite-precision
    report = report_from_logits(card_model.outputs(dataset.val.images)[0], dataset.val.labels, dataset.classes,
                                dataset.val_name, card_model.tta)
    amp_dtype = pick_amp_dtype(args.suite_precision, device)
    cache_dir = Path(args.data) / ".cache"
    if args.robustness:
        report["robustness"] = robustness_report(card_model, dataset.val, cache_dir, amp_dtype)
    if args.novelty:
        unknowns = far_out_sets(args.package_photos)
        if dataset.unknown_val is not None:
            unknowns = {"held-out classes": dataset.unknown_val.images, **unknowns}
        report["novelty"] = novelty_report(card_model, dataset.val, unknowns, amp_dtype)
    if args.serving_policy:
        report["serving"] = serving_section(card_model, dataset.val, cache_dir)
        if args.write_card:
            card_path = Path(args.model) / CARD_FILE
            write_json_atomic(card_path, merged(json.loads(card_path.read_text()), report["serving"]))
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()

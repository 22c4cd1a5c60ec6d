"""Temperature scaling, so the probabilities a user sees are honest.

Label smoothing makes airnet under-confident (it says 60% where it is right 90% of the time). One
scalar temperature T, fitted on the validation split by minimising its cross-entropy, fixes that
without changing any prediction: probabilities are softmax(logits / T). `ml.train` fits it at the
end of training; this command fits it for an existing model folder and rewrites its card:

    python -m ml.calibrate --model models/default --data data
"""

import argparse

import torch
import torch.nn.functional as F

from ml.device import pick_device
from ml.evaluate import load_model_split, predict_logits, report_from_logits
from ml.modelfile import gallery_files, load_model_dir, write_model_dir


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


def calibrated_report(model, dataset, device, tta, norm):
    """(temperature, report) on the dataset's validation split, in full precision as served: the
    temperature is fitted on these logits and the report's probabilities use it."""
    logits = predict_logits(model, dataset.val, device, tta=tta, norm=norm)
    temperature = fit_temperature(logits, dataset.val.labels)
    return temperature, report_from_logits(logits / temperature, dataset.val.labels, dataset.classes,
                                           dataset.val_name, tta)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fit the temperature of a model folder on its "
                                     "validation split and rewrite its card and report.")
    parser.add_argument("--model", required=True, help="model folder to calibrate (rewritten atomically)")
    parser.add_argument("--data", default="data", help="the dataset the model was trained on")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, card = load_model_dir(args.model, device)
    dataset = load_model_split(args.data, card)
    norm = (card["normalization"]["mean"], card["normalization"]["std"])
    temperature, report = calibrated_report(model, dataset, device, card["tta"], norm)
    before = card["evaluation"]["ece"]
    card = dict(card, temperature=temperature, evaluation=report)
    write_model_dir(args.model, model, card, gallery_files(dataset.val.images, report, dataset.train,
                                                           dataset.classes))
    print(f"{args.model}: temperature {temperature:.3f}, ECE {before:.4f} -> {report['ece']:.4f}, "
          f"accuracy {report['accuracy']:.4f}")


if __name__ == "__main__":
    main()

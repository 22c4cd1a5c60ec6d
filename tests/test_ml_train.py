"""ml.train: learning, reproducibility, stop and resume, DDP, a run on real images."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import PROJECT_ROOT
from ml.calibrate import cli as calibrate
from ml.nets.cardmodel import CardModel
from ml.nets.modelfile import load_model_dir
from ml.nets.novelty import DEFAULT_KEEP_SHARE, DEFAULT_METHOD, ENERGY_TEMPERATURE, fit_threshold, novelty_scores
from ml.train.distributed import StopFlag
from ml.train.presets import PRESETS
from ml.nets.models import build_model
from ml.train.checkpoint import TrainState
from ml.train.cli import EXIT_STOPPED, build_parser, resolve_config
from ml.train.loop import RunSettings, jensen_shannon, logit_normalised, train, train_step

SMALL = ["--val-size", "40", "--threads", "1"]


def config_for(dataset, *flags):
    return resolve_config(build_parser().parse_args(["--data", str(dataset), *SMALL, *flags]))


def run_train(tmp_path, dataset, *flags, name="model", suite=False):
    """Train in process; the end-of-training suite (minutes) only where a test is about it."""
    records = []
    card = train(config_for(dataset, *flags), tmp_path / name, RunSettings(suite=suite), emit=records.append)
    return card, records


@pytest.mark.parametrize("preset", ["fast", "sgd"])  # Muon + linear decay; SGD + lookahead + warm-up
def test_short_training_lowers_the_loss(tmp_path, tiny_dataset, preset):
    card, records = run_train(tmp_path, tiny_dataset, "--preset", preset, "--widths", "8", "16", "16",
                              "--epochs", "4", "--batch-size", "40", "--precision", "fp32")
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 4 and steps[0]["total_steps"] == 20
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert {"loss", "images_per_s", "eta_s", "elapsed_s", "progress"} <= set(steps[-1])
    # the written folder is complete and loads
    model, loaded = load_model_dir(tmp_path / "model")
    assert loaded["evaluation"]["split"] == "validation" and loaded["evaluation"]["images"] == 40
    assert len(loaded["history"]) == 4 and loaded["hyperparameters"]["batch_size"] == 40
    assert loaded["data"]["eval_per_class"] == {c: 4 for c in loaded["classes"]}
    assert (tmp_path / "model" / "gallery" / "samples-cat.png").is_file()


def test_jensen_shannon_is_zero_for_agreeing_views_and_symmetric_and_at_most_log_2():
    a, b = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), torch.randn(8, 10)
    assert jensen_shannon(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # same softmax
    assert jensen_shannon(a, b).item() == pytest.approx(jensen_shannon(b, a).item())
    opposite = torch.tensor([[40.0, 0.0], [0.0, 40.0]])
    assert 0 < jensen_shannon(a, b).item() < jensen_shannon(opposite, opposite.flip(1)).item() <= 0.6932


def test_the_consistency_loss_adds_its_weighted_divergence_to_the_step_loss():
    """Same model, same batch, same random draws: with --consistency the step's loss grows by the
    weight times a Jensen-Shannon divergence (0..log 2) between the first images and their twins.
    Eval mode keeps BatchNorm from seeing the twins, so the rest of the loss is unchanged."""
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(20) % 10

    def step_loss(*flags):
        config = resolve_config(build_parser().parse_args(["--preset", "fast", "--precision", "fp32", *flags]))
        torch.manual_seed(0)
        model = build_model("airnet", num_classes=10, widths=[8, 16, 16]).eval()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        state = TrainState(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), None)
        _, loss = train_step(model, state, (images, labels), config, torch.Generator().manual_seed(2), None)
        return loss.item(), config

    plain, _ = step_loss()
    with_twins, config = step_loss("--consistency", "12", "--consistency-share", "0.5")
    assert (config["consistency"], config["consistency_share"]) == (12.0, 0.5)
    assert 0 < (with_twins - plain) / 12 <= 0.6932


def test_logit_norm_scores_every_row_at_norm_one_over_tau_whatever_the_logits_scale():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    scored = logit_normalised(logits, 0.04)
    assert torch.allclose(scored.norm(dim=1), torch.full((6,), 25.0), atol=1e-4)
    assert torch.allclose(logit_normalised(logits * 50, 0.04), scored, atol=1e-4)  # growing the logits gains nothing
    assert torch.equal(scored.argmax(1), logits.argmax(1))
    assert logit_normalised(logits, 0.0) is logits


def test_a_training_step_with_logit_norm_takes_its_loss_on_the_normalised_logits():
    """With --logit-norm the step's cross-entropy is the one of the normalised logits it returns."""
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(20) % 10
    config = resolve_config(build_parser().parse_args(["--preset", "fast", "--precision", "fp32", "--logit-norm",
                                                       "0.04", "--translate", "0", "--flip", "false"]))
    torch.manual_seed(0)
    model = build_model("airnet", num_classes=10, widths=[8, 16, 16]).eval()
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.0), torch.amp.GradScaler("cpu", enabled=False),
                       None)
    logits, loss = train_step(model, state, (images, labels), config, torch.Generator().manual_seed(2), None)
    assert config["logit_norm"] == 0.04
    smoothing = config["label_smoothing"]
    expected = torch.nn.functional.cross_entropy(logit_normalised(logits.detach(), 0.04), labels,
                                                 label_smoothing=smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = torch.nn.functional.cross_entropy(logits.detach(), labels, label_smoothing=smoothing)
    assert loss.item() != pytest.approx(plain.item(), rel=1e-3)


def test_training_clock_pauses_for_validation(tmp_path, tiny_dataset, monkeypatch):
    import ml.train.loop
    fast_predict = ml.train.loop.predict_outputs

    def slow_predict(*args, **kwargs):
        time.sleep(1.5)
        return fast_predict(*args, **kwargs)

    monkeypatch.setattr(ml.train.loop, "predict_outputs", slow_predict)
    card, _ = run_train(tmp_path, tiny_dataset, "--preset", "fast", "--widths", "8", "16", "16",
                        "--epochs", "2", "--batch-size", "40", "--precision", "fp32")
    timing = card["training"]
    assert timing["eval_seconds"] >= 3.0
    # validation time is outside train_seconds: both fit in the run's wall time without overlap
    assert timing["train_seconds"] + timing["eval_seconds"] <= timing["total_seconds"]
    assert card["history"][-1]["elapsed_s"] <= timing["train_seconds"]


def test_seed_preset_is_the_tutorial_recipe():
    config = resolve_config(build_parser().parse_args(["--preset", "seed"]))
    assert (config["arch"], config["lr"], config["momentum"], config["batch_size"], config["epochs"]) == \
        ("seednet", 0.001, 0.9, 5, 20)
    assert not config["nesterov"] and config["label_smoothing"] == 0 and config["schedule"] == "constant"


def test_flags_override_presets_and_batch_size_scales_lr():
    config = resolve_config(build_parser().parse_args(["--preset", "fast", "--batch-size", "512", "--epochs", "3"]))
    preset = PRESETS["fast"]
    assert config["epochs"] == 3 and config["batch_size"] == 512
    assert config["lr"] == pytest.approx(preset["lr"] * 512 / preset["batch_size"])
    config = resolve_config(build_parser().parse_args(["--preset", "fast", "--batch-size", "512", "--lr", "0.1"]))
    assert config["lr"] == 0.1


def test_training_is_reproducible_on_cpu(tmp_path, tiny_dataset):
    flags = ["--preset", "fast", "--widths", "8", "16", "16", "--epochs", "2", "--batch-size", "40",
             "--precision", "fp32", "--seed", "3"]
    _, first = run_train(tmp_path, tiny_dataset, *flags, name="a")
    _, second = run_train(tmp_path, tiny_dataset, *flags, name="b")
    digest = [r["weights_digest"] for r in first + second if r["type"] == "done"]
    assert digest[0] == digest[1]
    _, other = run_train(tmp_path, tiny_dataset, *flags[:-1], "4", name="c")
    assert [r["weights_digest"] for r in other if r["type"] == "done"][0] != digest[0]


def train_cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "ml.train", "--no-suite", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


# Returns as soon as the steps are logged; the limit is generous because a loaded machine starts torch slowly.
def wait_for_steps(events, count, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if events.exists():
            steps = [json.loads(l) for l in events.read_text().splitlines() if '"step"' in l]
            if len(steps) >= count:
                return
        time.sleep(0.05)
    raise AssertionError("training did not report progress")


def test_sigterm_leaves_a_checkpoint_that_resumes_to_the_same_model(tmp_path, tiny_dataset):
    flags = ["--data", str(tiny_dataset), *SMALL, "--preset", "seed", "--epochs", "3", "--batch-size", "5",
             "--seed", "1"]
    reference = train_cli(*flags, "--out", str(tmp_path / "ref"))
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out

    events = tmp_path / "events.jsonl"
    out, ckpt = tmp_path / "stopped", tmp_path / "stopped.resume.pt"
    process = train_cli(*flags, "--out", str(out), "--checkpoint", str(ckpt), "--events", str(events))
    wait_for_steps(events, 25)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == EXIT_STOPPED
    assert ckpt.is_file() and not out.exists()
    assert json.loads(events.read_text().splitlines()[-1])["type"] == "stopped"

    resumed = train_cli(*flags, "--out", str(out), "--checkpoint", str(ckpt), "--resume", "--events", str(events))
    resumed_out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_out
    assert '"type": "resumed"' in resumed_out
    digest = lambda text: [json.loads(l)["weights_digest"] for l in text.splitlines() if '"done"' in l][0]
    assert digest(resumed_out) == digest(ref_out)  # as if it had never stopped
    assert not ckpt.exists() and (out / "card.json").is_file()


@pytest.mark.parametrize("preset", ["sgd", "fast"])  # lookahead + translate + flip; Muon + whitening bias
def test_a_stop_mid_epoch_resumes_in_process_to_the_same_weights(tmp_path, tiny_dataset, preset):
    """The TrainState round trip (augmentation generator mid-epoch, lookahead average, optimizer
    and scaler state) through a weights_only checkpoint gives the weights of a run never stopped."""
    config = config_for(tiny_dataset, "--preset", preset, "--widths", "8", "16", "16", "--epochs", "3",
                        "--batch-size", "40", "--precision", "fp32", "--seed", "2")
    reference = []
    train(config, tmp_path / "ref", RunSettings(suite=False), emit=reference.append)
    stop, ckpt, records = StopFlag(), tmp_path / "run.resume.pt", []

    def stop_after_seven_steps(record):
        records.append(record)
        stop.requested = record.get("global_step") == 7  # epoch 2, step 2 of 5

    assert train(config, tmp_path / "run", RunSettings(ckpt, suite=False), emit=stop_after_seven_steps,
                 stop=stop) is None
    assert ckpt.is_file() and records[-1]["type"] == "stopped" and records[-1]["global_step"] == 7
    train(config, tmp_path / "run", RunSettings(ckpt, resume=True, suite=False), emit=records.append)
    digests = [[r["weights_digest"] for r in run if r["type"] == "done"] for run in (reference, records)]
    assert digests[0] == digests[1] and len(digests[0]) == 1
    assert not ckpt.exists()


def test_a_run_killed_without_warning_resumes_from_its_last_epoch_to_the_same_weights(tmp_path, tiny_dataset):
    """--checkpoint-every-epoch (what a queued job's trainer runs with): a run that dies mid-epoch
    with no chance to write anything resumes from the end of its last epoch as if never stopped."""
    config = config_for(tiny_dataset, "--preset", "fast", "--widths", "8", "16", "16", "--epochs", "3",
                        "--batch-size", "40", "--precision", "fp32", "--seed", "4")
    reference = []
    train(config, tmp_path / "ref", RunSettings(suite=False), emit=reference.append)
    ckpt, records = tmp_path / "run.resume.pt", []

    class Killed(Exception):
        pass

    def die_in_the_third_epoch(record):
        records.append(record)
        if record["type"] == "step" and record["epoch"] == 3:
            raise Killed  # no stop flag, no checkpoint written now: as SIGKILL would leave it
    with pytest.raises(Killed):
        train(config, tmp_path / "run", RunSettings(ckpt, suite=False, checkpoint_every_epoch=True),
              emit=die_in_the_third_epoch)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = []
    train(config, tmp_path / "run", RunSettings(ckpt, resume=True, suite=False), emit=resumed.append)
    assert [r["epoch"] for r in resumed if r["type"] == "resumed"] == [3]
    digests = [[r["weights_digest"] for r in run if r["type"] == "done"] for run in (reference, resumed)]
    assert digests[0] == digests[1] and len(digests[0]) == 1
    assert not ckpt.exists()


def test_resume_with_other_settings_is_refused(tmp_path, tiny_dataset):
    events, ckpt = tmp_path / "e.jsonl", tmp_path / "c.resume.pt"
    flags = ["--data", str(tiny_dataset), *SMALL, "--preset", "seed", "--epochs", "3", "--batch-size", "5"]
    process = train_cli(*flags, "--out", str(tmp_path / "m"), "--checkpoint", str(ckpt), "--events", str(events))
    wait_for_steps(events, 3)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    other = train_cli(*flags, "--lr", "0.5", "--out", str(tmp_path / "m"), "--checkpoint", str(ckpt), "--resume")
    text, _ = other.communicate(timeout=120)
    assert other.returncode != 0 and "other settings" in text


def test_ddp_with_two_cpu_processes_agrees(tmp_path, tiny_dataset):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    # Each rank's stdout goes to its own file (torchrun --redirects): on one shared pipe the two
    # ranks' lines can interleave mid-line.
    process = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "--log-dir", str(tmp_path / "logs"), "--redirects", "1",
         "-m", "ml.train", "--data", str(tiny_dataset),
         *SMALL, "--preset", "fast", "--widths", "8", "16", "16", "--epochs", "2", "--batch-size", "40",
         "--precision", "fp32", "--no-suite", "--out", str(tmp_path / "ddp")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert process.returncode == 0, process.stdout + process.stderr
    lines = [l for f in sorted((tmp_path / "logs").rglob("stdout.log")) for l in f.read_text().splitlines()]
    done = [json.loads(l) for l in lines if l.startswith("{") and '"done"' in l]
    assert sorted(d["rank"] for d in done) == [0, 1]
    assert done[0]["weights_digest"] == done[1]["weights_digest"]
    card = json.loads((tmp_path / "ddp" / "card.json").read_text())
    assert card["training"]["world_size"] == 2


@pytest.mark.slow
def test_training_on_a_few_hundred_real_images(tmp_path, real_data_dir):
    card, records = run_train(tmp_path, real_data_dir, "--preset", "fast", "--limit", "500", "--epochs", "2",
                              "--batch-size", "100")
    assert card["data"]["train_images"] == 500 and card["evaluation"]["images"] == 40
    epochs = [r for r in records if r["type"] == "epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert card["evaluation"]["accuracy"] > 0.15  # above chance after 2 short epochs


def test_calibrate_cli_refits_on_the_training_runs_own_validation_split(tmp_path, tiny_dataset):
    from ml.calibrate import cli as calibrate
    card, _ = run_train(tmp_path, tiny_dataset, "--preset", "fast", "--widths", "8", "16", "16",
                        "--epochs", "2", "--batch-size", "40", "--precision", "fp32", "--val-size", "60")
    card_path = tmp_path / "model" / "card.json"
    stale = dict(json.loads(card_path.read_text()), temperature=1.0)
    open_set = {"splits": [], "mean_auroc": {"energy": 0.85}}  # scripts/open_set's, from models of its own
    stale["novelty"] = dict(stale["novelty"], open_set=open_set)
    card_path.write_text(json.dumps(stale))
    calibrate.main(["--model", str(tmp_path / "model"), "--data", str(tiny_dataset)])
    _, rewritten = load_model_dir(tmp_path / "model")  # weights digest still verifies
    # same 60 held-out images as in training, so the same logits and the same fitted temperature
    assert rewritten["evaluation"]["images"] == 60
    assert rewritten["temperature"] == pytest.approx(card["temperature"], rel=1e-4)
    assert rewritten["evaluation"]["accuracy"] == pytest.approx(card["evaluation"]["accuracy"])
    assert rewritten["novelty"]["open_set"] == open_set  # a refit keeps what it did not measure
    histogram = rewritten["novelty"]["validation_histogram"]  # what the dashboard sets live traffic beside
    assert sum(histogram["counts"]) == histogram["images"] == 60 and len(histogram["edges"]) == 25


def test_calibrate_refits_the_novelty_threshold_at_the_energy_temperature_asked(tmp_path, tiny_dataset):
    run_train(tmp_path, tiny_dataset, "--preset", "fast", "--widths", "8", "16", "16",
              "--epochs", "1", "--batch-size", "40", "--precision", "fp32", "--val-size", "60")
    calibrate.main(["--model", str(tmp_path / "model"), "--data", str(tiny_dataset), "--no-suite",
                    "--energy-temperature", "2.5"])
    model, card = load_model_dir(tmp_path / "model")
    novelty = card["novelty"]
    assert novelty["method"] == "energy" and novelty["energy_temperature"] == 2.5
    assert "robustness" not in card and "far_out" not in novelty  # --no-suite measured nothing more
    card_model = CardModel(model, card)
    dataset = card_model.dataset(str(tiny_dataset))
    logits = card_model.raw_outputs(dataset.val.images)[0]
    scores = novelty_scores("energy", logits / card["temperature"], temperature=2.5)
    assert novelty["threshold"] == pytest.approx(fit_threshold(scores, DEFAULT_KEEP_SHARE), abs=1e-4)


def small_suite(monkeypatch):
    """The end-of-training suite on a few images (its defaults are sized for 5,000)."""
    import functools

    from ml.calibrate import finish
    monkeypatch.setattr(finish, "robustness_report", functools.partial(
        finish.robustness_report, variant_images=10, corruption_images=10))
    monkeypatch.setattr(finish, "far_out_sets", functools.partial(finish.far_out_sets, count=6))


def test_training_ends_with_novelty_and_robustness_in_the_card(
        tmp_path, tiny_dataset, monkeypatch):

    from ml.data.sources import load_dataset
    from ml.nets.modelfile import NOVELTY_FILE, load_novelty_bank
    from ml.data.outliers import PROCEDURAL_SETS
    from ml.predict.predictor import Predictor
    from ml.data.robustness import CORRUPTIONS, SEVERITIES, VARIANT_NAMES
    small_suite(monkeypatch)
    shares = ["--serving-aug", "0.5", "--crop-aug", "0.5", "--colour-aug", "0.5", "--blur-aug", "0.5",
              "--cutout-aug", "0.5"]
    card, records = run_train(tmp_path, tiny_dataset, "--preset", "fast", "--widths", "8", "16", "16",
                              "--epochs", "2", "--batch-size", "40", "--precision", "fp32", *shares, suite=True)
    names = ("serving", "crop", "colour", "blur", "cutout")
    assert all(card["hyperparameters"][f"{name}_aug"] == 0.5 for name in names)
    assert all(r["train_loss"] == r["train_loss"] for r in records if r["type"] == "epoch")  # not NaN
    _, loaded = load_model_dir(tmp_path / "model")
    novelty = loaded["novelty"]
    assert novelty["method"] == DEFAULT_METHOD and novelty["keep_share"] == DEFAULT_KEEP_SHARE
    assert novelty["energy_temperature"] == ENERGY_TEMPERATURE
    assert isinstance(novelty["threshold"], float)
    # the energy score needs no training-feature bank, so none is stored (knn's is, see test_ml_novelty)
    assert load_novelty_bank(tmp_path / "model", loaded) is None and not (tmp_path / "model" / NOVELTY_FILE).exists()
    far_out = novelty["far_out"]
    assert set(far_out["sets"]) == set(PROCEDURAL_SETS) and far_out["known_images"] == 40
    for entry in far_out["sets"].values():
        assert entry["images"] == 6 and set(entry["auroc"]) == {"msp", "energy", "knn"}
        assert all(0 <= value <= 1 for value in entry["auroc"].values()) and 0 <= entry["refused"] <= 1
    robustness = loaded["robustness"]
    variants, corruptions = robustness["variants"], robustness["corruptions"]
    assert list(variants["per_variant"]) == VARIANT_NAMES and variants["images"] == 10
    assert variants["inputs"] == 10 * len(VARIANT_NAMES) and 0 <= variants["agreement"] <= 1
    assert all({"accuracy", "agreement", "ece"} <= set(v) for v in variants["per_variant"].values())
    assert corruptions["images"] == 10 and corruptions["inputs"] == 10 * len(CORRUPTIONS) * SEVERITIES
    assert set(corruptions["per_corruption"]) == set(CORRUPTIONS)
    assert all(len(accuracies) == SEVERITIES for accuracies in corruptions["per_corruption"].values())
    # served, the card's threshold keeps the stated share of the validation images it was fitted on
    val = load_dataset(tiny_dataset, val_size=40).val
    answers = Predictor(tmp_path / "model", device="cpu").predict_arrays(list(val.images.permute(0, 2, 3, 1).numpy()))
    recognised = sum(a["recognised"] for a in answers)
    assert recognised >= 0.95 * len(answers)
    assert far_out["known_recognised"] >= 0.9  # the suite's pass (bf16 where the CPU has it) agrees


def test_an_open_set_run_without_the_suite_trains_on_its_classes_only(tmp_path, tiny_dataset):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse"]
    card = train(config_for(tiny_dataset, "--preset", "fast", "--widths", "8", "16", "16", "--epochs", "1",
                            "--batch-size", "40", "--precision", "fp32", "--classes", *classes),
                 tmp_path / "open", RunSettings(suite=False), emit=lambda record: None)
    assert card["classes"] == classes and card["hyperparameters"]["classes"] == classes
    assert card["data"]["train_images"] == 160 and card["evaluation"]["images"] == 32
    assert len(card["evaluation"]["confusion_matrix"]) == 8
    assert "robustness" not in card and card["novelty"]["method"] == DEFAULT_METHOD
    model, _ = load_model_dir(tmp_path / "open")
    assert model.head.out_features == 8

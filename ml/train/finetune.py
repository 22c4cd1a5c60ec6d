"""Where a training run starts: a fresh model, or (`--init-from`) a trained model folder's
weights with a short fine-tuning schedule, e.g. to fold reviewed user photos into a version."""

from ml.data.batches import normalize
from ml.nets.modelfile import load_model_dir, read_card
from ml.nets.models import arch_kwargs, build_model

WHITENING_IMAGES = 5000       # training images used to estimate the patch covariance
FINETUNE_EPOCHS = 2           # --init-from: a short schedule from trained weights (minutes on a CPU)
FINETUNE_LR_SCALE = 0.1       # and smaller steps, so the trained weights are adjusted rather than retrained


def fine_tuning(config, args):
    """--init-from: the model folder's architecture (its weights must fit) and, unless --epochs and
    --lr say otherwise, a short schedule at a tenth of the preset's learning rates. The whitening
    layer's bias was trained already, so it stays as it is."""
    card = read_card(args.init_from)
    config.update(arch=card["arch"]["name"], widths=card["arch"].get("kwargs", {}).get("widths"),
                  whiten_bias_epochs=0, init_from=str(args.init_from))
    if args.epochs is None:
        config["epochs"] = min(config["epochs"], FINETUNE_EPOCHS)
    if args.lr is None:
        config["lr"] *= FINETUNE_LR_SCALE
    if args.muon_lr is None:
        config["muon_lr"] *= FINETUNE_LR_SCALE


def initial_model(config, dataset):
    """The --init-from model's trained weights, else a fresh model (airnet's whitening fitted on
    training patches)."""
    model = build_model(config["arch"], num_classes=len(dataset.classes), **arch_kwargs(config))
    if config.get("init_from"):
        trained, card = load_model_dir(config["init_from"])
        if card["classes"] != list(dataset.classes):
            raise ValueError(f"--init-from {config['init_from']} knows {card['classes']}, the data {dataset.classes}")
        model.load_state_dict(trained.state_dict())
    elif config["arch"] == "airnet":
        model.init_whitening(normalize(dataset.train.images[:WHITENING_IMAGES]))
    return model

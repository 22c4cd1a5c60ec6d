"""The model this process serves: loaded once per worker (after fork), never per request."""

import threading

import torch
from flask import current_app

from ml.predict import Predictor

_lock = threading.Lock()
_predictors = {}


def current_predictor() -> Predictor:
    """The Predictor for the configured model folder, loaded on first use in this process."""
    model_dir = current_app.config["MODEL_DIR"]
    with _lock:
        if model_dir not in _predictors:
            torch.set_num_threads(int(current_app.config["TORCH_THREADS"]))
            _predictors[model_dir] = Predictor(model_dir, max_pixels=current_app.config["MAX_PIXELS"])
        return _predictors[model_dir]

"""ml/predict/explain.py on fixture models: the map's shape, range and determinism, that it follows the
input and the explained class (a model that reads only one corner per class), the overlay's
colours, and that an explanation waits for the model's lock like a forward pass."""

import threading

import numpy as np
import pytest
import torch

from ml.predict.explain import MAX_ALPHA, heat_overlay, saliency_map, scaled
from ml.predict.predictor import Predictor

CORNER = 8


class CornerModel(torch.nn.Module):
    """Class 0 reads only the top-left CORNERxCORNER pixels, class 1 only the bottom-right ones,
    the other classes nothing at all."""

    def forward(self, x):
        top_left = x[:, :, :CORNER, :CORNER].pow(2).mean((1, 2, 3))
        bottom_right = x[:, :, -CORNER:, -CORNER:].pow(2).mean((1, 2, 3))
        constant = torch.zeros(x.shape[0], 8, device=x.device)
        return torch.cat([top_left[:, None], bottom_right[:, None], constant], 1)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor(tiny_model_dir, "cpu")


@pytest.fixture(scope="module")
def corner_predictor(tiny_model_dir):
    predictor = Predictor(tiny_model_dir, "cpu")
    predictor.model = CornerModel()
    return predictor


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_map_has_the_input_shape_and_values_in_0_1(predictor):
    saliency = saliency_map(predictor, photo(), "cat")
    assert saliency.shape == (32, 32) and saliency.dtype == np.float32
    assert saliency.min() >= 0 and saliency.max() == 1


def test_same_input_same_map(predictor):
    assert np.array_equal(saliency_map(predictor, photo(3), "dog"), saliency_map(predictor, photo(3), "dog"))


def test_map_depends_on_the_input_and_the_class(predictor):
    base = saliency_map(predictor, photo(1), "ship")
    assert not np.allclose(base, saliency_map(predictor, photo(2), "ship"))
    assert not np.allclose(base, saliency_map(predictor, photo(1), "frog"))


@pytest.mark.parametrize("label, rows, cols", [
    ("airplane", slice(None, CORNER), slice(None, CORNER)),
    ("automobile", slice(-CORNER, None), slice(-CORNER, None)),
])
def test_saliency_lies_where_the_model_reads(corner_predictor, label, rows, cols):
    saliency = saliency_map(corner_predictor, photo(), label)
    inside = np.zeros_like(saliency, dtype=bool)
    inside[rows, cols] = True
    assert saliency[~inside].max() == 0
    assert saliency[inside].min() > 0 and saliency[inside].max() == 1


def test_a_class_that_reads_nothing_has_an_empty_map(corner_predictor):
    assert not saliency_map(corner_predictor, photo(), "bird").any()


def test_scaling_clips_a_spike_and_keeps_zeros():
    magnitude = np.zeros((32, 32))
    magnitude[0, 0] = 1000.0        # one extreme pixel
    magnitude[1:, :] = 1.0          # everything else alike
    saliency = scaled(magnitude)
    assert saliency[0, 0] == 1 and np.allclose(saliency[1:, :], 1) and saliency[0, 1:].max() == 0
    lone = np.zeros((32, 32))
    lone[5, 5] = 2.0                # fewer strong pixels than the percentile: the largest is the top
    assert scaled(lone)[5, 5] == 1 and scaled(lone).sum() == 1
    assert not scaled(np.zeros((32, 32))).any()


def test_overlay_is_transparent_where_nothing_mattered():
    saliency = np.zeros((32, 32), dtype=np.float32)
    saliency[10, 20] = 1.0
    saliency[11, 20] = 0.5
    rgba = heat_overlay(saliency)
    assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8
    assert rgba[..., 3].sum() == MAX_ALPHA + round(MAX_ALPHA / 2)
    assert rgba[10, 20, 3] == MAX_ALPHA and rgba[10, 20, 0] > rgba[10, 20, 1]  # red where it mattered most
    assert rgba[11, 20, 1] > rgba[10, 20, 1]                                   # yellower where less


def test_explaining_waits_for_the_models_lock(predictor):
    done = threading.Event()
    worker = threading.Thread(target=lambda: (saliency_map(predictor, photo(), "cat"), done.set()))
    with predictor.lock:  # as a forward pass of the micro-batcher holds it
        worker.start()
        assert not done.wait(0.3)
    worker.join(60)
    assert done.is_set()

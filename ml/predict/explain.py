"""Why the model answered as it did: a saliency map of its 32x32 input, by Captum's integrated
gradients of the explained class's logit, and a heat overlay to lay over the photo.

It explains the plain view of the photo, not the test-time-augmented average the answer comes
from: the shipped model's TTA level 2 makes five passes per integration step, which takes several
seconds on a 2-core CPU, and its other views are the same pixels mirrored or shifted by one, so
the map would hardly change. The baseline is the normalised zero, the training images' mean
colour: the map says which pixels, compared with a flat average picture, moved the class's score.
"""

import numpy as np
import torch
from captum.attr import IntegratedGradients

METHOD = "integrated_gradients"
DEFAULT_STEPS = 16  # Gauss-Legendre points: about 0.3 s on the shipped model, 1 CPU thread
CLIP_PERCENTILE = 99  # a few extreme pixels would otherwise fade the rest of the map
LOW_COLOUR = np.array([255, 221, 0], dtype=np.float32)   # overlay: yellow where a pixel mattered a little
HIGH_COLOUR = np.array([214, 0, 0], dtype=np.float32)    # red where it mattered most
MAX_ALPHA = 210  # the photo stays visible under the strongest pixels


def saliency_map(predictor, array: np.ndarray, label: str, steps: int = DEFAULT_STEPS) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how strongly each pixel of a decoded input array (Predictor.decode)
    moved the logit of `label`, either way, relative to the map's own strongest pixels."""
    x = predictor.inputs([array])
    target = predictor.classes.index(label)
    integrated = IntegratedGradients(predictor.model)
    # the Predictor's lock: an explanation never runs beside a (micro-)batch of the same model
    with predictor.lock, torch.enable_grad():
        attributions = integrated.attribute(x, target=target, n_steps=steps, internal_batch_size=steps)
    return scaled(attributions[0].detach().abs().sum(0).float().cpu().numpy())


def scaled(magnitude: np.ndarray) -> np.ndarray:
    """Non-negative values -> [0, 1], the CLIP_PERCENTILE-th value (or the largest) at 1."""
    top = np.percentile(magnitude, CLIP_PERCENTILE)
    top = top if top > 0 else magnitude.max()
    if top <= 0:  # the class's score does not depend on the input at all
        return np.zeros(magnitude.shape, dtype=np.float32)
    return np.clip(magnitude / top, 0, 1).astype(np.float32)


def heat_overlay(saliency: np.ndarray) -> np.ndarray:
    """(H, W) saliency in [0, 1] -> (H, W, 4) uint8 RGBA: transparent where nothing mattered, yellow
    to red and more opaque where more did, to lay over the photo (or the model's input)."""
    s = saliency[..., None]
    colour = LOW_COLOUR * (1 - s) + HIGH_COLOUR * s
    alpha = MAX_ALPHA * s
    return np.concatenate([colour, alpha], axis=2).round().astype(np.uint8)

"""ml.data.robustness: client variants decoded through ml.data.images, CIFAR-10-C-style corruptions, subsets."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import ml.data.robustness
from ml.data.images import decode_image
from ml.data.robustness import (CLIENT_VARIANTS, CORRUPTIONS, SEVERITIES, VARIANT_NAMES, build_client_variants,
                           cached_client_variants, corrupt, encode_client_photo, suite_subset)


def smooth_image(seed=0) -> np.ndarray:
    """A 32x32 photo-like image (low-frequency colour blobs) whose rotation is easy to see."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR))


def as_batch(*arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def mean_difference(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def test_every_variant_is_decoded_by_ml_images_from_the_encoded_bytes(monkeypatch):
    seen = []

    def counting_decode(source, *args, **kwargs):
        image = Image.open(io.BytesIO(source))
        seen.append((image.format, image.size, image.mode))
        return decode_image(source, *args, **kwargs)

    monkeypatch.setattr(ml.data.robustness, "decode_image", counting_decode)
    variants = ml.data.robustness._variants_of(smooth_image())
    assert variants.shape == (len(CLIENT_VARIANTS), 32, 32, 3) and variants.dtype == np.uint8
    assert len(seen) == len(CLIENT_VARIANTS)
    for (name, scale, _, fmt, _, extra), (seen_format, size, mode) in zip(CLIENT_VARIANTS, seen):
        assert seen_format == fmt, name
        assert min(size) == 32 * scale, name  # the upscaled photo, not the 32x32 original
        assert (mode == "RGBA") == (extra == "rgba") and (mode == "CMYK") == (extra == "cmyk"), name
        if extra and extra.startswith("letterbox"):
            assert size[0] > size[1], name


def test_build_gives_each_images_variants_in_order():
    images = [smooth_image(0), smooth_image(1)]
    built = build_client_variants(as_batch(*images), workers=1)
    assert built.shape == (len(CLIENT_VARIANTS), 2, 3, 32, 32) and built.dtype == torch.uint8
    for i, image in enumerate(images):
        expected = np.stack([decode_image(encode_client_photo(Image.fromarray(image), *spec[1:]))
                             for spec in CLIENT_VARIANTS])
        assert np.array_equal(built[:, i].permute(0, 2, 3, 1).numpy(), expected)


def test_png_nearest_variant_is_the_original_and_every_variant_is_close_to_it():
    image = smooth_image(2)
    variants = dict(zip(VARIANT_NAMES, ml.data.robustness._variants_of(image)))
    assert np.array_equal(variants["png x8 nearest"], image)
    for name, variant in variants.items():
        assert mean_difference(variant, image) < 6, name  # the same picture, upright, in its colours


def test_exif_rotated_variant_decodes_upright():
    image = smooth_image(3)
    data = encode_client_photo(Image.fromarray(image), 8, Image.BICUBIC, "JPEG", 90, "exif_rotate")
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.BOX))
    decoded = decode_image(data)
    assert mean_difference(stored, np.rot90(image)) < 6  # the pixels are stored turned left ...
    assert mean_difference(decoded, image) < 3  # ... and ml.data.images turns them back
    assert mean_difference(decoded, np.rot90(image)) > 10 * mean_difference(decoded, image)


def test_cached_variants_are_built_once(tmp_path, monkeypatch):
    images = as_batch(smooth_image(4))
    first = cached_client_variants(images, tmp_path, workers=1)

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt cached variants")

    monkeypatch.setattr(ml.data.robustness, "build_client_variants", refuse)
    assert torch.equal(cached_client_variants(images, tmp_path, workers=1), first)
    with pytest.raises(AssertionError):  # other images, other variants
        cached_client_variants(as_batch(smooth_image(5)), tmp_path, workers=1)


# ---- corruptions ----

@pytest.fixture(scope="module")
def clean():
    return as_batch(*[smooth_image(seed) for seed in range(6)])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_at_each_severity_keeps_uint8_shape_and_is_reproducible(clean, name):
    for severity in range(1, SEVERITIES + 1):
        out = corrupt(clean, name, severity)
        assert out.shape == clean.shape and out.dtype == torch.uint8, (name, severity)
        assert torch.equal(out, corrupt(clean, name, severity)), (name, severity)
        assert not torch.equal(out, clean), (name, severity)


def test_random_corruptions_differ_by_seed(clean):
    for name in ("gaussian noise", "shot noise", "impulse noise", "speckle noise", "fog"):
        assert not torch.equal(corrupt(clean, name, 3, seed=0), corrupt(clean, name, 3, seed=1)), name


@pytest.mark.parametrize("name", ["gaussian noise", "shot noise", "impulse noise", "speckle noise",
                                  "gaussian blur"])
def test_noise_and_blur_get_stronger_with_severity(clean, name):
    distance = [(corrupt(clean, name, s).float() - clean.float()).abs().mean().item()
                for s in range(1, SEVERITIES + 1)]
    assert distance == sorted(distance) and len(set(distance)) == SEVERITIES, distance


def test_contrast_gets_weaker_with_severity(clean):
    spread = [corrupt(clean, "contrast", s).float().std().item() for s in range(1, SEVERITIES + 1)]
    assert clean.float().std().item() > spread[0]
    assert spread == sorted(spread, reverse=True) and len(set(spread)) == SEVERITIES, spread


def test_blur_smooths_and_brightness_brightens(clean):
    def roughness(x):
        return x.float().diff(dim=3).abs().mean().item()

    assert roughness(corrupt(clean, "gaussian blur", 5)) < roughness(clean)
    assert corrupt(clean, "brightness", 5).float().mean() > clean.float().mean()


# ---- subsets ----

def test_suite_subset_is_class_balanced_sorted_and_fixed():
    labels = torch.arange(10).repeat_interleave(30)[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    pick = suite_subset(labels, 50)
    assert len(pick) == 50 and torch.bincount(labels[pick]).tolist() == [5] * 10
    assert torch.equal(pick, pick.sort().values) and len(set(pick.tolist())) == 50
    assert torch.equal(suite_subset(labels, 50), pick)
    assert not torch.equal(suite_subset(labels, 50, seed=1), pick)
    assert torch.equal(suite_subset(labels, 1000), torch.arange(300))

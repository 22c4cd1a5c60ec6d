"""ml.data.augment: the serving-path round-trip bank and the batched photo augmentations."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import ml.data.augment
from ml.data.augment import (BANK_COPIES, PIXMIX_SOURCES, blur_and_noise, build_client_bank, cached_client_bank,
                        client_mix, client_round_trip, colour_jitter, cutout, mixing_pictures, photo_augment, pixmix,
                        random_resized_crop, resampled, training_inputs)
from ml.data.outliers import procedural_set
from ml.train.presets import PRESETS
from ml.data.sources import Split
from ml.data.images import decode_image

STEPS = {"crop": random_resized_crop, "colour": colour_jitter, "blur": blur_and_noise, "cutout": cutout}


def textured(n=64, seed=0) -> torch.Tensor:
    """float (n, 3, 32, 32) in 0..1 with structure at several scales (so every step changes it)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear")
    return (0.7 * coarse + 0.3 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)


def uint8_images(n=6, seed=0) -> torch.Tensor:
    return (textured(n, seed) * 255).round().to(torch.uint8)


def changed(a, b) -> torch.Tensor:
    return (a != b).flatten(1).any(1)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_each_step_keeps_shape_dtype_and_range_and_is_reproducible(name):
    x = textured()
    first = STEPS[name](x, 0.5, torch.Generator().manual_seed(1))
    again = STEPS[name](x, 0.5, torch.Generator().manual_seed(1))
    other = STEPS[name](x, 0.5, torch.Generator().manual_seed(2))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_each_step_changes_about_the_requested_share(name):
    x = textured(400)
    for share in (0.0, 0.3, 1.0):
        out = STEPS[name](x, share, torch.Generator().manual_seed(3))
        fraction = changed(out, x).float().mean().item()
        if share == 0:
            assert torch.equal(out, x)  # nothing chosen: bit for bit the input
        else:
            assert abs(fraction - share) < 0.08, (share, fraction)


def test_untouched_images_of_a_partly_augmented_batch_are_bit_for_bit_the_input():
    x = textured(200)
    for step in STEPS.values():
        out = step(x, 0.5, torch.Generator().manual_seed(4))
        kept = ~changed(out, x)
        assert 0 < kept.sum() < len(x)
        assert torch.equal(out[kept], x[kept])


def test_crop_of_a_chosen_image_is_a_zoom_not_a_shift_of_colours():
    # channel 0 a left-to-right ramp, channel 1 a top-to-bottom one: a crop keeps both increasing,
    # and each image shows a narrower span of at least one of them (a part of the picture, enlarged)
    ramp = torch.linspace(0, 1, 32)
    x = torch.stack([ramp.view(1, 32).expand(32, 32), ramp.view(32, 1).expand(32, 32), torch.zeros(32, 32)])
    x = x.expand(16, 3, 32, 32).contiguous()
    out = random_resized_crop(x, 1.0, torch.Generator().manual_seed(0))
    assert (out[:, 0].diff(dim=2) >= -1e-6).all() and (out[:, 1].diff(dim=1) >= -1e-6).all()
    span_x = out[:, 0, :, -1] - out[:, 0, :, 0]
    span_y = out[:, 1, -1, :] - out[:, 1, 0, :]
    assert ((span_x.amax(1) < 0.99) | (span_y.amax(1) < 0.99)).all()


def test_colour_jitter_turns_about_the_grey_share_grey():
    x = textured(1000)
    out = colour_jitter(x, 1.0, torch.Generator().manual_seed(5))
    grey = (out.amax(1) - out.amin(1)).flatten(1).amax(1) < 1e-6
    assert abs(grey.float().mean().item() - ml.data.augment.GREY_SHARE) < 0.05


def test_cutout_blanks_one_square_of_at_most_the_stated_size():
    x = torch.randn(50, 3, 32, 32)
    out = cutout(x, 1.0, torch.Generator().manual_seed(6))
    for image_in, image_out in zip(x, out):
        hole = (image_out == 0).all(0) & (image_in != 0).any(0)
        rows, cols = hole.nonzero(as_tuple=True)
        assert 0 < len(rows) <= ml.data.augment.CUTOUT_SIZE ** 2
        size = ml.data.augment.CUTOUT_SIZE
        assert rows.max() - rows.min() < size and cols.max() - cols.min() < size
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a full rectangle


def shares(**given):
    return {"crop_aug": 0.0, "colour_aug": 0.0, "blur_aug": 0.0, **given}


def test_photo_augment_without_shares_returns_the_batch_and_draws_no_random_numbers():
    images = uint8_images(8)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    out = photo_augment(images, shares(), generator)
    assert out is images  # the uint8 batch itself: training without photo augmentation is unchanged
    assert torch.equal(generator.get_state(), state)  # translations later draw the same numbers


def test_photo_augment_keeps_shape_and_0_255_range_and_is_reproducible():
    images = uint8_images(32)
    config = shares(crop_aug=0.5, colour_aug=0.5, blur_aug=0.5)
    first = photo_augment(images, config, torch.Generator().manual_seed(8))
    again = photo_augment(images, config, torch.Generator().manual_seed(8))
    assert first.shape == images.shape and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 255
    assert torch.equal(first, again)
    assert not torch.equal(first, images.float())


@pytest.fixture
def few_mixing_pictures(monkeypatch):
    """8 pictures per source instead of 256, so the bank is drawn in a fraction of a second."""
    monkeypatch.setattr(ml.data.augment, "PIXMIX_PICTURES", 8)
    mixing_pictures.cache_clear()
    yield
    mixing_pictures.cache_clear()


def test_pixmix_keeps_shape_and_range_is_reproducible_and_leaves_unchosen_images_alone(few_mixing_pictures):
    x = textured(400)
    first = pixmix(x, 0.5, torch.Generator().manual_seed(1))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, pixmix(x, 0.5, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, pixmix(x, 0.5, torch.Generator().manual_seed(2)))
    assert torch.equal(pixmix(x, 0.0, torch.Generator().manual_seed(1)), x)
    # 0..4 rounds each, so a chosen image is left as it is a fifth of the time
    for share in (0.5, 1.0):
        fraction = changed(pixmix(x, share, torch.Generator().manual_seed(3)), x).float().mean().item()
        assert abs(fraction - share * 4 / 5) < 0.08, (share, fraction)


def test_pixmix_weights_follow_the_papers_two_beta_draws():
    a, b = ml.data.augment._pixmix_weights(40_000, torch.Generator().manual_seed(0))
    a, b = a.flatten(), b.flatten()
    blend = b > 0  # (Beta(3, 1), Beta(1, 3)) half the time, else (1 + Beta(1, 3), -Beta(1, 3))
    assert abs(blend.float().mean().item() - 0.5) < 0.02
    assert ((a[blend] > 0) & (a[blend] < 1)).all() and ((a[~blend] > 1) & (a[~blend] < 2)).all()
    assert abs(a[blend].mean().item() - 0.75) < 0.01 and abs(b[blend].mean().item() - 0.25) < 0.01
    assert abs(a[~blend].mean().item() - 1.25) < 0.01 and abs(b[~blend].mean().item() + 0.25) < 0.01


def test_pixmix_mixes_in_the_procedural_pictures_not_the_far_out_sets_own(few_mixing_pictures):
    pictures = mixing_pictures("cpu")
    assert pictures.shape == (8 * len(PIXMIX_SOURCES), 3, 32, 32) and 0 <= pictures.min() <= pictures.max() <= 1
    far_out = torch.cat([procedural_set(name, 8) for name in PIXMIX_SOURCES]).float() / 255  # what evaluation draws
    assert not any(torch.equal(picture, image) for picture in pictures for image in far_out)


def test_pixmix_partners_are_the_pictures_or_the_images_own_mirror(monkeypatch):
    grey = torch.full((400, 3, 32, 32), 0.5)  # its own mirror, and grey whatever it is mixed with
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 1.0
    monkeypatch.setattr(ml.data.augment, "mixing_pictures", lambda device: red)
    out = pixmix(grey, 1.0, torch.Generator().manual_seed(5))
    coloured = (out.amax(1) - out.amin(1)).flatten(1).amax(1) > 0.01
    # a chosen image mixes with the picture in 1 - P(no round takes it) of cases: well over a third
    assert 0.4 < coloured.float().mean() < 0.8
    monkeypatch.setattr(ml.data.augment, "mixing_pictures", lambda device: grey[:1] * 0.4)
    still_grey = pixmix(grey, 1.0, torch.Generator().manual_seed(5))
    assert ((still_grey.amax(1) - still_grey.amin(1)) < 1e-6).all()


def test_photo_augment_applies_pixmix_only_when_asked_and_old_configs_train_as_before(few_mixing_pictures):
    images = uint8_images(64)
    generator = torch.Generator().manual_seed(9)
    assert photo_augment(images, shares(), generator) is images  # a card from before pixmix_aug
    assert photo_augment(images, shares(pixmix_aug=0.0), generator) is images
    mixed = photo_augment(images, shares(pixmix_aug=1.0), torch.Generator().manual_seed(9))
    assert mixed.min() >= 0 and mixed.max() <= 255 and changed(mixed, images.float()).any()


# ---- the serving path ----

def test_a_round_trip_is_decoded_by_ml_images_from_encoded_bytes(monkeypatch):
    calls = []

    def counting_decode(source, *args, **kwargs):
        calls.append(Image.open(io.BytesIO(source)))  # bytes of an encoded photo, as an upload is
        return decode_image(source, *args, **kwargs)

    monkeypatch.setattr(ml.data.augment, "decode_image", counting_decode)
    arrays = uint8_images(3).permute(0, 2, 3, 1).numpy()
    bank = ml.data.augment._round_trips((arrays, 0))
    assert bank.shape == (BANK_COPIES, 3, 32, 32, 3) and bank.dtype == np.uint8
    assert len(calls) == BANK_COPIES * 3
    assert {image.format for image in calls} <= {"PNG", "JPEG", "WEBP"}
    assert all(min(image.size) >= 96 for image in calls)  # upscaled x3 or more before encoding


def test_a_png_nearest_integer_upscale_round_trip_returns_the_original_pixels(monkeypatch):
    import random
    monkeypatch.setattr(ml.data.augment, "FORMATS", ["PNG"])
    monkeypatch.setattr(ml.data.augment, "FILTERS", [Image.NEAREST])
    monkeypatch.setattr(ml.data.augment, "UPSCALE_RANGE", (8, 8))
    monkeypatch.setattr(ml.data.augment, "LETTERBOX_SHARE", 0.0)
    original = uint8_images(1)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(client_round_trip(original, random.Random(0)), original)


def test_lossy_round_trips_stay_close_to_the_original():
    import random
    rng = random.Random(1)
    original = uint8_images(1)[0].permute(1, 2, 0).numpy()
    trips = [client_round_trip(original, rng) for _ in range(12)]
    differences = [np.abs(t.astype(int) - original.astype(int)).mean() for t in trips]
    assert max(differences) < 25  # the same picture, not another one or a rotated one
    assert any(d > 0 for d in differences)  # and not all lossless


def test_bank_is_reproducible_per_seed_and_independent_of_the_worker_count():
    images = uint8_images(6)
    one = build_client_bank(images, seed=1, workers=1, chunk=2)
    two = build_client_bank(images, seed=1, workers=2, chunk=2)
    other = build_client_bank(images, seed=2, workers=1, chunk=2)
    assert one.shape == (BANK_COPIES, 6, 3, 32, 32) and one.dtype == torch.uint8
    assert torch.equal(one, two)
    assert not torch.equal(one, other)
    # every copy is a round trip of its own image: closer to it than to any other image
    distance = (one.float().unsqueeze(2) - images.float().unsqueeze(0)).abs().mean((3, 4, 5))
    assert (distance.argmin(2) == torch.arange(6)).all()


def test_cached_bank_is_built_once(tmp_path, monkeypatch):
    images = uint8_images(4)
    first = cached_client_bank(images, tmp_path / "cache", seed=0, workers=1)
    assert len(list((tmp_path / "cache").glob("client-bank-*.safetensors"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt a cached bank")

    monkeypatch.setattr(ml.data.augment, "build_client_bank", refuse)
    assert torch.equal(cached_client_bank(images, tmp_path / "cache", seed=0, workers=1), first)
    with pytest.raises(AssertionError):  # another seed is another bank
        cached_client_bank(images, tmp_path / "cache", seed=1, workers=1)


def test_client_mix_swaps_about_the_share_for_round_trips_of_the_same_image():
    n = 500
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    bank = torch.stack([images ^ 1, images ^ 2])  # stand-in round trips, each told apart by its bits
    split = Split(images, torch.arange(n) % 10)
    assert torch.equal(client_mix(split, bank, 0.0, seed=0, epoch=0).images, images)
    mixed = client_mix(split, bank, 0.3, seed=0, epoch=0)
    assert torch.equal(mixed.labels, split.labels)
    swapped = changed(mixed.images, images)
    assert abs(swapped.float().mean().item() - 0.3) < 0.06
    from_bank = ((mixed.images == bank[0]) | (mixed.images == bank[1])).flatten(1).all(1)
    assert torch.equal(from_bank, swapped)
    both = (mixed.images[swapped] == bank[0][swapped]).flatten(1).all(1)
    assert 0 < both.sum() < swapped.sum()  # both copies are used
    assert torch.equal(client_mix(split, bank, 0.3, seed=0, epoch=0).images, mixed.images)
    assert not torch.equal(client_mix(split, bank, 0.3, seed=0, epoch=1).images, mixed.images)
    assert changed(client_mix(split, bank, 1.0, seed=0, epoch=0).images, images).all()


def test_a_resampled_twin_is_pillows_upscale_and_area_downscale(monkeypatch):
    """The twin is what ml.data.images makes of a client's bilinear x3 upscale (BOX downscale)."""
    monkeypatch.setattr(ml.data.augment, "RESAMPLE_FACTORS", (3,))
    monkeypatch.setattr(ml.data.augment, "RESAMPLE_MODES", ("bilinear",))
    images = uint8_images(4)
    twin = resampled(images.float(), torch.Generator().manual_seed(0))
    for image, got in zip(images, twin):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((96, 96), Image.BILINEAR)
        expected = np.asarray(pil.resize((32, 32), Image.BOX)).astype(np.float32)
        assert np.abs(got.permute(1, 2, 0).numpy() - expected).max() <= 2.0
    assert changed(twin.round(), images.float()).all()  # a real low-pass, not the identity


def test_resampled_keeps_shape_and_the_mean_and_is_reproducible_per_seed():
    x = textured(16)
    first = resampled(x, torch.Generator().manual_seed(4))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, resampled(x, torch.Generator().manual_seed(4)))
    assert first.mean().item() == pytest.approx(x.mean().item(), abs=1e-3)


@pytest.mark.parametrize("consistency, twins", [(0.0, 0), (12.0, 5)])
def test_training_inputs_append_outliers_then_twins_of_the_first_images(consistency, twins):
    config = dict(PRESETS["fast"], outlier_share=0.1, consistency=consistency, consistency_share=0.25)
    x, outliers, got_twins = training_inputs(uint8_images(20), config, torch.Generator().manual_seed(0))
    assert (outliers, got_twins) == (2, twins) and len(x) == 20 + 2 + twins

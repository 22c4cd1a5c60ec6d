"""Micro-batching (webapp/predict/batching.py): concurrent requests share forward passes, each gets its own
results from the one model that made them, and a lone request never waits for the window."""

import threading
import time

import numpy as np
import pytest

from conftest import image_bytes, make_model_dir
from ml.data.images import CorruptImageError
from ml.predict.predictor import Predictor
from webapp import create_app
from webapp.predict import request_photos
from webapp.predict.batching import MicroBatcher, batcher


class RecordingPredictor(Predictor):
    """A real Predictor that also records the size of every forward pass."""

    def __init__(self, model_dir):
        super().__init__(model_dir, device="cpu")
        self.passes = []

    def predict_arrays(self, arrays):
        self.passes.append(len(arrays))
        return super().predict_arrays(arrays)


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    return (RecordingPredictor(make_model_dir(root / "a", seed=1, version="a")),
            RecordingPredictor(make_model_dir(root / "b", seed=2, version="b")))


def photos(count, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def expected(predictor, arrays):
    """What the model says about `arrays` on their own (not counted as a recorded pass)."""
    return Predictor.predict_arrays(predictor, arrays)


def same(results, wanted):
    assert [r["label"] for r in results] == [w["label"] for w in wanted]
    for r, w in zip(results, wanted):
        assert r["confidence"] == pytest.approx(w["confidence"], abs=1e-5)


def run_together(batcher, jobs, barrier_timeout=10):
    """Each job (predictor, arrays) in its own thread; every decode waits until all threads are
    decoding, so they are all in flight together (the batcher must give them that many decode
    slots). Returns [(arrays, results) or exception]."""
    barrier = threading.Barrier(len(jobs), timeout=barrier_timeout)
    outcomes = [None] * len(jobs)

    def worker(i, predictor, arrays):
        def decode():
            barrier.wait()
            if isinstance(arrays, Exception):
                raise arrays
            return arrays
        try:
            outcomes[i] = batcher.classify(predictor, decode)
        except Exception as error:  # noqa: BLE001 - handed back to the test
            outcomes[i] = error

    threads = [threading.Thread(target=worker, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a request never finished"
    return outcomes


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_results(predictors):
    predictor = predictors[0]
    predictor.passes.clear()
    jobs = [(predictor, photos(1 + i % 3, seed=i)) for i in range(8)]
    outcomes = run_together(MicroBatcher(window_ms=2000, max_images=32, decode_slots=8), jobs)
    assert sum(predictor.passes) == sum(len(a) for _, a in jobs)
    assert len(predictor.passes) <= 2  # at most one forward pass besides the first leader's own
    for (_, arrays), (returned, results) in zip(jobs, outcomes):
        assert returned is arrays
        same(results, expected(predictor, arrays))


def test_batches_never_exceed_max_images(predictors):
    predictor = predictors[0]
    predictor.passes.clear()
    jobs = [(predictor, photos(2, seed=10 + i)) for i in range(7)]
    outcomes = run_together(MicroBatcher(window_ms=2000, max_images=4, decode_slots=8), jobs)
    assert max(predictor.passes) <= 4 and sum(predictor.passes) == 14
    for (_, arrays), (_, results) in zip(jobs, outcomes):
        same(results, expected(predictor, arrays))


def test_a_request_larger_than_max_images_runs_whole(predictors):
    predictor = predictors[0]
    predictor.passes.clear()
    arrays = photos(6, seed=20)
    _, results = MicroBatcher(window_ms=5, max_images=4).classify(predictor, lambda: arrays)
    assert predictor.passes == [6]
    same(results, expected(predictor, arrays))


def test_a_lone_request_does_not_wait_for_the_window(predictors):
    batcher = MicroBatcher(window_ms=5000, max_images=32)
    begin = time.perf_counter()
    batcher.classify(predictors[0], lambda: photos(1, seed=30))
    assert time.perf_counter() - begin < 2


def test_a_batch_never_mixes_models_and_answers_come_from_each_requests_model(predictors):
    """As during a hot swap: requests holding the old and the new Predictor at the same time."""
    for predictor in predictors:
        predictor.passes.clear()
    jobs = [(predictors[i % 2], photos(2, seed=40 + i)) for i in range(8)]
    outcomes = run_together(MicroBatcher(window_ms=2000, max_images=32, decode_slots=8), jobs)
    assert sum(predictors[0].passes) == 8 and sum(predictors[1].passes) == 8
    for (predictor, arrays), (_, results) in zip(jobs, outcomes):
        same(results, expected(predictor, arrays))
    assert expected(predictors[0], jobs[0][1]) != expected(predictors[1], jobs[0][1])  # the models differ


def test_a_failed_decode_fails_only_its_request_and_nobody_waits_for_it(predictors):
    predictor = predictors[0]
    jobs = [(predictor, photos(1, seed=50)), (predictor, CorruptImageError("the file is empty")),
            (predictor, photos(1, seed=51))]
    begin = time.perf_counter()
    outcomes = run_together(MicroBatcher(window_ms=20_000, max_images=32, decode_slots=8), jobs)
    assert time.perf_counter() - begin < 15  # well inside the 20 s window
    assert isinstance(outcomes[1], CorruptImageError)
    same(outcomes[0][1], expected(predictor, jobs[0][1]))
    same(outcomes[2][1], expected(predictor, jobs[2][1]))


def test_a_failed_forward_pass_fails_every_request_of_the_batch(predictors):
    class Broken(RecordingPredictor):
        def predict_arrays(self, arrays):
            raise RuntimeError("forward failed")
    broken = Broken(predictors[0].model_dir)
    outcomes = run_together(MicroBatcher(window_ms=2000, max_images=32, decode_slots=8),
                            [(broken, photos(1, seed=60 + i)) for i in range(3)])
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    # and the batcher still works afterwards
    batcher = MicroBatcher(window_ms=5, max_images=32)
    run_together(batcher, [(broken, photos(1, seed=70))])
    _, results = batcher.classify(predictors[0], lambda: photos(1, seed=71))
    assert len(results) == 1


@pytest.mark.parametrize("window_ms, max_images", [(0, 32), (5, 1), (5, 0)])
def test_off_runs_each_request_alone(predictors, window_ms, max_images):
    predictor = predictors[0]
    predictor.passes.clear()
    batcher = MicroBatcher(window_ms, max_images, decode_slots=8)
    assert not batcher.enabled
    jobs = [(predictor, photos(1, seed=80 + i)) for i in range(4)]
    outcomes = run_together(batcher, jobs)
    assert predictor.passes == [1, 1, 1, 1]
    for (_, arrays), (_, results) in zip(jobs, outcomes):
        same(results, expected(predictor, arrays))


def app_config(tmp_path, model_dir) -> dict:
    return {"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "MODEL_DIR": str(model_dir)}


def test_settings_reach_the_app(tmp_path, tiny_model_dir, monkeypatch):
    config = app_config(tmp_path, tiny_model_dir)
    monkeypatch.setenv("BATCH_WINDOW_MS", "0")
    assert not batcher(create_app(config)).enabled
    monkeypatch.delenv("BATCH_WINDOW_MS")
    app = create_app(config)
    assert batcher(app).enabled and batcher(app).max_images == 32


def test_at_most_decode_slots_photos_are_decoded_at_once(predictors):
    batcher = MicroBatcher(window_ms=5, max_images=32, decode_slots=2)
    lock, inside, most = threading.Lock(), [0], [0]

    def decode():
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return photos(1, seed=90)
    threads = [threading.Thread(target=batcher.classify, args=(predictors[0], decode)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most[0] == 2


def test_a_request_is_awaited_while_its_body_is_still_being_read(tmp_path, tiny_model_dir, monkeypatch):
    """The body is read inside the batcher's decode step, so a batch leader already counts the
    request (and waits for it within the window) before its photos have arrived."""
    app = create_app(app_config(tmp_path, tiny_model_dir))
    counted_while_reading, read = [], request_photos.collect_files

    def collect_files(fields):
        counted_while_reading.append(batcher(app)._decoding)
        return read(fields)
    monkeypatch.setattr(request_photos, "collect_files", collect_files)
    response = app.test_client().post("/api/v1/predict", data=image_bytes(), content_type="image/jpeg")
    assert response.status_code == 200 and counted_while_reading == [1]
    assert batcher(app)._decoding == 0

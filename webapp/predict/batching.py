"""Micro-batching inside a worker: the photos of concurrent requests run as one forward pass.

Leader/follower, no extra thread: a request thread that finds no batch in progress leads one. It
waits up to BATCH_WINDOW_MS for the requests this worker is already receiving or decoding (the
`decode` step of a request includes reading its body; never for requests that may or may not
come: alone, a request runs at once), takes the queued requests of the same
Predictor up to BATCH_MAX_IMAGES images, runs them in one `predict_arrays` call and hands each
request its own results. Requests queued meanwhile wait; when the batch is done the oldest of them
leads the next one. A batch never mixes Predictors, so after a hot swap every answer still comes
from, and names, the one model that made it. BATCH_WINDOW_MS = 0 (or BATCH_MAX_IMAGES <= 1)
turns it off: each request runs its own forward pass.
"""

import threading
import time

from webapp.core import metrics

EXTENSION = "batcher"
DECODE_SLOTS = 2  # photos decoded at once per worker: a 12 MP decode takes ~40 MB, and more at a
                  # time would not go faster on the worker's one core; it bounds the worker's memory


class _Job:
    __slots__ = ("predictor", "arrays", "results", "error", "done", "lead")

    def __init__(self, predictor, arrays):
        self.predictor, self.arrays = predictor, arrays
        self.results = self.error = None
        self.done = self.lead = False


class MicroBatcher:
    def __init__(self, window_ms: float, max_images: int, decode_slots: int = DECODE_SLOTS):
        self.window_s = max(0.0, float(window_ms)) / 1000
        self.max_images = int(max_images)
        self.enabled = self.window_s > 0 and self.max_images > 1
        self._cond = threading.Condition()
        self._pending = []       # submitted jobs not yet in a batch, oldest first
        self._leading = False    # a leader is gathering or running a batch
        self._decoding = 0       # requests decoding their photos (or waiting to), about to submit
        self._decode_slots = threading.BoundedSemaphore(decode_slots)

    def classify(self, predictor, decode):
        """Run `decode()` -> arrays, then classify them, batched with concurrent requests.
        Returns (arrays, results); an exception of `decode` propagates and nothing is classified."""
        if not self.enabled:
            arrays = self._decode(decode)
            return arrays, self._forward(predictor, arrays)
        with self._cond:
            self._decoding += 1
        try:
            arrays = self._decode(decode)
        except BaseException:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()  # a leader waiting for this request stops waiting
            raise
        return arrays, self._submit(_Job(predictor, arrays))

    def _decode(self, decode):
        with self._decode_slots:
            return decode()

    @staticmethod
    def _forward(predictor, arrays):
        if arrays:
            metrics.BATCH_IMAGES.observe(len(arrays))
        return predictor.predict_arrays(arrays)

    def _submit(self, job):
        with self._cond:
            self._decoding -= 1
            self._pending.append(job)
            self._cond.notify_all()
            while self._leading and not job.done and not job.lead:
                self._cond.wait()
            if job.done:
                return self._outcome(job)
            self._leading = True  # this thread leads (it was idle, or the last leader handed over)
            batch = self._gather(job)
        try:
            self._run(batch)
        finally:
            with self._cond:
                for member in batch:
                    member.done = True
                if self._pending:
                    self._pending[0].lead = True
                else:
                    self._leading = False
                self._cond.notify_all()
        return self._outcome(job)

    def _gather(self, leader):
        """With the lock held: wait within the window for requests still decoding, then take the
        leader's job and the queued jobs of the same Predictor that fit, oldest first."""
        deadline = time.monotonic() + self.window_s
        while True:
            batch = self._fitting(leader)
            remaining = deadline - time.monotonic()
            if self._decoding == 0 or remaining <= 0 or sum(len(j.arrays) for j in batch) >= self.max_images:
                break
            self._cond.wait(remaining)
        taken = set(map(id, batch))
        self._pending = [job for job in self._pending if id(job) not in taken]
        return batch

    def _fitting(self, leader):
        batch, size = [leader], len(leader.arrays)
        for job in self._pending:
            fits = size + len(job.arrays) <= self.max_images
            if job is not leader and job.predictor is leader.predictor and fits:
                batch.append(job)
                size += len(job.arrays)
        return batch

    def _run(self, batch):
        """Outside the lock: one forward pass for the whole batch, results split per request."""
        try:
            results = self._forward(batch[0].predictor, [a for job in batch for a in job.arrays])
        except Exception as error:  # every request of the batch fails the same way
            for job in batch:
                job.error = error
            return
        start = 0
        for job in batch:
            job.results = results[start:start + len(job.arrays)]
            start += len(job.arrays)

    @staticmethod
    def _outcome(job):
        if job.error is not None:
            raise job.error
        return job.results


def init_app(app):
    app.extensions[EXTENSION] = MicroBatcher(app.config["BATCH_WINDOW_MS"], app.config["BATCH_MAX_IMAGES"])


def batcher(app) -> MicroBatcher:
    return app.extensions[EXTENSION]

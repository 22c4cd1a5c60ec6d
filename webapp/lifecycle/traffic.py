"""Live traffic: what users send, counted in each process and added into the shared database.

Every classified photo adds, in this process's memory, to sums keyed by (10-minute bucket, the
model version that answered, measure): photos, answers per class (the label), sure / unsure / none
answers, the sum of confidences, and the novelty scores binned. A background thread adds them into
the database every TRAFFIC_FLUSH_S seconds, and the process adds what is left when it exits
(atexit: a gunicorn worker recycled by max_requests, stopped or reloaded exits through it), so the
sums of every worker of every host add up and outlive the workers. A SIGKILLed worker loses at most
its last TRAFFIC_FLUSH_S seconds. A write that fails keeps the counts for the next flush and is
logged once; counting itself never touches the database, so it never fails a prediction.

The novelty scores are binned with the validation histogram's edges when the version's card has
one (card["novelty"]["validation_histogram"]), so the live and validation histograms compare bin
by bin; otherwise with FALLBACK_EDGES for the card's novelty method. The first and last bins are
open-ended. A bin's measure names its edges (a short hash), so counts binned with other edges never
mix into a histogram.

Nothing about a photo is stored but these sums. No Flask: callers pass a Site.
"""

import atexit
import bisect
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter, namedtuple

from webapp.lifecycle import db

log = logging.getLogger(__name__)

DEFAULT_FLUSH_S = 10.0          # TRAFFIC_FLUSH_S unset (a Site without the web app's settings)
BUCKET_S = 600                  # a bucket's length: a window ("last hour") is rounded out to whole buckets
KEEP_S = 35 * 86_400            # older buckets are deleted (the dashboard reads a week at most)
PRUNE_EVERY_S = 3_600           # how often a process deletes them
ANSWERS = ("sure", "unsure", "none")
# Edges for a card without a validation histogram: 20 equal bins over where each method's scores
# fall (msp: minus the top probability; energy: minus T x log-sum-exp of the logits, T about 1-4;
# knn: distance between unit feature vectors).
FALLBACK_RANGES = {"msp": (-1.0, 0.0), "energy": (-30.0, 0.0), "knn": (0.0, 2.0)}
FALLBACK_BINS = 20

Edges = namedtuple("Edges", "key edges validation")  # validation: the card's histogram dict, or None

UPSERT = ("INSERT INTO traffic (bucket, version, measure, amount) VALUES (:bucket, :version, :measure, :amount) "
          "ON CONFLICT (bucket, version, measure) DO UPDATE SET amount = traffic.amount + excluded.amount")


# ---- what a card says about binning ----

def validation_histogram(card: dict):
    """The card's {"edges": [K+1 ascending], "counts": [K], "images": N}, or None when it has
    none or one in a shape that cannot be read."""
    histogram = (card.get("novelty") or {}).get("validation_histogram")
    try:
        edges, counts = [float(e) for e in histogram["edges"]], [int(c) for c in histogram["counts"]]
        images = int(histogram.get("images") or sum(counts))
    except (KeyError, TypeError, ValueError):
        return None
    ascending = all(a < b for a, b in zip(edges, edges[1:]))
    if len(edges) < 2 or len(counts) != len(edges) - 1 or not ascending or images <= 0:
        return None
    return {"edges": edges, "counts": counts, "images": images}


def fallback_edges(method: str) -> list:
    low, high = FALLBACK_RANGES.get(method, FALLBACK_RANGES["msp"])
    return [low + (high - low) * i / FALLBACK_BINS for i in range(FALLBACK_BINS + 1)]


def novelty_edges(card: dict) -> Edges:
    """The edges live novelty scores are binned with for a version with this card."""
    histogram = validation_histogram(card)
    edges = histogram["edges"] if histogram else fallback_edges((card.get("novelty") or {}).get("method", "msp"))
    key = hashlib.sha256(json.dumps(edges).encode()).hexdigest()[:12]
    return Edges(key, edges, histogram)


def novelty_bin(edges: list, score: float) -> int:
    """The bin of `score`; below the first edge is bin 0, at or above the last the last bin."""
    return min(max(bisect.bisect_right(edges, score) - 1, 0), len(edges) - 2)


def bucket_of(at: float) -> int:
    return int(at // BUCKET_S) * BUCKET_S


# ---- counting in a process ----

def measures(results, edges: Edges) -> Counter:
    """measure -> amount for a batch of results (ml.predict.predictor's dicts)."""
    sums = Counter()
    for result in results:
        sums["photos"] += 1
        sums[f"answer:{result['answer']}"] += 1
        sums[f"label:{result['label']}"] += 1
        if math.isfinite(result["confidence"]):
            sums["confidence_sum"] += result["confidence"]
        if math.isfinite(result["novelty"]):
            sums[f"novelty:{edges.key}:{novelty_bin(edges.edges, result['novelty'])}"] += 1
    return sums


class Recorder:
    """One process's pending counts for one database, and the thread that adds them into it."""

    def __init__(self, url: str, flush_s: float):
        self.url, self.flush_s = url, flush_s
        self.pending = Counter()           # (bucket, version, measure) -> amount not yet written
        self.lock = threading.Lock()       # guards pending
        self.flushing = threading.Lock()   # one flush at a time: the exit flush waits for the thread's
        self.failing = False               # the last write failed (logged once, until one succeeds)
        self.pruned_at = 0.0
        self.thread = None
        self.edges_of = (None, None)       # (the card last counted for, its Edges): not rehashed per request

    def edges(self, card: dict) -> Edges:
        cached_card, edges = self.edges_of
        if cached_card is not card:  # a served card is never mutated; a hot swap brings a new one
            edges = novelty_edges(card)
            self.edges_of = (card, edges)
        return edges

    def count(self, version: str, card: dict, results, now=None) -> None:
        sums = measures(results, self.edges(card))
        bucket = bucket_of(time.time() if now is None else now)
        with self.lock:
            for measure, amount in sums.items():
                self.pending[(bucket, version, measure)] += amount
            if self.thread is None:  # started at the first count: after fork, in the worker
                self.thread = threading.Thread(target=self._run, name="traffic-flush", daemon=True)
                self.thread.start()

    def _run(self):
        while True:
            time.sleep(self.flush_s)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive any error (a failed write is handled in flush)
                log.exception("live traffic: flushing failed")

    def flush(self) -> bool:
        """Add the pending counts into the database in one transaction; False (counts kept for the
        next flush) when the write fails."""
        with self.flushing:
            with self.lock:
                taken, self.pending = self.pending, Counter()
            if not taken:
                return True
            try:
                self._write(taken)
            except Exception as error:
                with self.lock:
                    self.pending.update(taken)
                if not self.failing:
                    log.warning("live traffic: cannot write %d counts to the database, kept for the next "
                                "flush (%s: %s)", len(taken), error.__class__.__name__, str(error).splitlines()[0])
                self.failing = True
                return False
            if self.failing:
                log.warning("live traffic: the database takes counts again")
            self.failing = False
            self._prune_now_and_then()
            return True

    def _write(self, taken: Counter) -> None:
        # sorted: two processes upserting the same rows take their locks in the same order
        rows = [{"bucket": b, "version": v, "measure": m, "amount": a} for (b, v, m), a in sorted(taken.items())]
        with db.database(self.url) as conn, db.write_transaction(conn):
            conn.executemany(UPSERT, rows)

    def _prune_now_and_then(self) -> None:
        """Delete buckets older than KEEP_S, at most every PRUNE_EVERY_S; apart from the write, so
        that a failed delete never gives back counts already written."""
        if time.time() - self.pruned_at < PRUNE_EVERY_S:
            return
        self.pruned_at = time.time()
        try:
            with db.database(self.url) as conn:
                conn.execute("DELETE FROM traffic WHERE bucket < :before", {"before": bucket_of(time.time() - KEEP_S)})
        except Exception as error:  # noqa: BLE001 - old buckets can wait for the next hour
            log.warning("live traffic: deleting old buckets failed (%s)", error.__class__.__name__)


_recorders = {}  # database URL -> this process's Recorder
_recorders_lock = threading.Lock()


def recorder(site) -> Recorder:
    url = site.database_url
    with _recorders_lock:
        if url not in _recorders:
            _recorders[url] = Recorder(url, float(site.settings.get("TRAFFIC_FLUSH_S") or DEFAULT_FLUSH_S))
        return _recorders[url]


def flush_all() -> None:
    """Write every recorder's pending counts now (at exit; tests)."""
    for each in list(_recorders.values()):
        each.flush()


def _forget_after_fork():
    """A forked child starts with no counts: its parent writes its own, and the child's thread
    would not exist."""
    global _recorders_lock
    _recorders.clear()
    _recorders_lock = threading.Lock()


atexit.register(flush_all)
os.register_at_fork(after_in_child=_forget_after_fork)


# ---- reading ----

def totals(site, since: int, version: str) -> Counter:
    """measure -> amount over the buckets from `since` on, for one version."""
    with site.database() as conn:
        rows = conn.execute("SELECT measure, SUM(amount) AS amount FROM traffic WHERE bucket >= :since "
                            "AND version = :version GROUP BY measure", {"since": since, "version": version})
        return Counter({row["measure"]: row["amount"] for row in rows})


def photos_by_version(site, since: int) -> dict:
    """version -> photos over the buckets from `since` on."""
    with site.database() as conn:
        rows = conn.execute("SELECT version, SUM(amount) AS photos FROM traffic WHERE bucket >= :since "
                            "AND measure = 'photos' GROUP BY version", {"since": since})
        return {row["version"]: int(row["photos"]) for row in rows}

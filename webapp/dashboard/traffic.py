"""What the dashboard says about live traffic (webapp/lifecycle/traffic.py counts it): for one
model version, over the last hour, day and week, the photos, answers per class, the shares of sure,
unsure and not-recognised answers, the mean confidence and the novelty histogram beside the
validation split's; and the drift test behind the banner.

The drift test: over the last day, is the share of photos not recognised higher than the version's
card expects (1 - the share of validation images it recognised)? A one-sided exact binomial test,
P(X >= observed) for X ~ Binomial(photos, expected share). The banner shows when p < DRIFT_P, the
observed share is at least DRIFT_RATIO times the expected one and at least DRIFT_MIN_PHOTOS photos
were answered: with thousands of photos a day a tiny, harmless excess is already "significant",
and with a handful none is.
"""

import math
import time
from datetime import datetime, timezone

from webapp.dashboard import charts
from webapp.dashboard.charts import Chart
from webapp.lifecycle import traffic

WINDOWS = (("hour", "Last hour", 3_600), ("day", "Last day", 86_400), ("week", "Last week", 7 * 86_400))
DRIFT_WINDOW = "day"
DRIFT_P = 0.001
DRIFT_RATIO = 2.0
DRIFT_MIN_PHOTOS = 50
DRIFT_TEST = "one-sided exact binomial test"


def window_start(now: float, seconds: int) -> int:
    """The first bucket of the window of `seconds` ending at `now`: the window is rounded out to
    whole buckets, so it covers `seconds` to `seconds` + one bucket."""
    return traffic.bucket_of(now - seconds)


def live_traffic(site, version: str, card: dict, threshold_override=None, now=None) -> dict:
    """Everything the Live traffic section and /api/v1/traffic show for one version."""
    now = time.time() if now is None else now
    edges = traffic.novelty_edges(card)
    windows = {}
    for name, title, seconds in WINDOWS:
        since = window_start(now, seconds)
        summary = window_summary(traffic.totals(site, since, version), card.get("classes") or [], edges)
        others = sum(n for v, n in traffic.photos_by_version(site, since).items() if v != version)
        windows[name] = {"title": title, "since": iso(since), **summary, "other_versions_photos": others}
    validation = edges.validation
    return {"version": version, "windows": windows,
            "novelty": {"method": (card.get("novelty") or {}).get("method"), "edges": edges.edges,
                        "edges_from": "validation histogram" if validation else "fixed (no validation histogram)",
                        "validation": shares(validation["counts"]) if validation else None,
                        "validation_images": validation["images"] if validation else None},
            "drift": drift(windows[DRIFT_WINDOW], expected_unrecognised(card), threshold_override)}


def iso(at: int) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_summary(sums, classes: list, edges) -> dict:
    """Photos, answers per class, sure / unsure / none shares, mean confidence and the novelty
    histogram (counts and shares, binned with `edges`) from a window's sums."""
    photos = int(sums.get("photos", 0))
    answers = {kind: int(sums.get(f"answer:{kind}", 0)) for kind in traffic.ANSWERS}
    seen = sorted(m.removeprefix("label:") for m in sums if m.startswith("label:"))
    labels = {c: int(sums.get(f"label:{c}", 0)) for c in [*classes, *(c for c in seen if c not in classes)]}
    bins = [int(sums.get(f"novelty:{edges.key}:{i}", 0)) for i in range(len(edges.edges) - 1)]
    return {"photos": photos, "labels": labels, "answers": answers,
            "answer_shares": {kind: share(n, photos) for kind, n in answers.items()},
            "mean_confidence": share(sums.get("confidence_sum", 0.0), photos),
            "novelty_counts": bins, "novelty_shares": shares(bins)}


def share(part, whole):
    return part / whole if whole else None


def shares(counts: list):
    total = sum(counts)
    return [n / total for n in counts] if total else None


def expected_unrecognised(card: dict):
    """The share of validation images the card's threshold does not recognise: measured
    (far_out.known_recognised), else the share it was fitted for (keep_share); None if neither."""
    novelty = card.get("novelty") or {}
    recognised = (novelty.get("far_out") or {}).get("known_recognised", novelty.get("keep_share"))
    if not isinstance(recognised, (int, float)) or not 0 < recognised <= 1:
        return None
    return 1.0 - float(recognised)


def binomial_upper_tail(observed: int, n: int, p: float) -> float:
    """P(X >= observed) for X ~ Binomial(n, p), summed exactly term by term (log-gamma for the
    coefficients). The terms fall away from the mode, so the sum stops once they no longer count."""
    if observed <= 0:
        return 1.0
    if observed > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def term(k):
        return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)

    if observed > (n + 1) * p:  # above the mode: the upper tail's terms shrink as k grows
        return min(1.0, _sum_shrinking(term, range(observed, n + 1)))
    return max(0.0, 1.0 - _sum_shrinking(term, range(observed - 1, -1, -1)))  # 1 - P(X <= observed - 1)


def _sum_shrinking(term, ks) -> float:
    total = 0.0
    for k in ks:
        value = term(k)
        total += value
        if value <= total * 1e-17:
            break
    return total


def drift(day: dict, expected, threshold_override) -> dict:
    """The drift test on a window's summary; `drifting` is what raises the banner, `untested` says
    why there is no test."""
    photos, unrecognised = day["photos"], day["answers"]["none"]
    result = {"test": DRIFT_TEST, "window": DRIFT_WINDOW, "photos": photos, "not_recognised": unrecognised,
              "observed_share": share(unrecognised, photos), "expected_share": expected, "p_value": None,
              "p_below": DRIFT_P, "ratio_at_least": DRIFT_RATIO, "min_photos": DRIFT_MIN_PHOTOS,
              "drifting": False, "untested": None}
    if threshold_override is not None:
        result["untested"] = ("the server's NOVELTY_THRESHOLD replaces the card's threshold, so the card's "
                              "expected share does not apply")
    elif expected is None:
        result["untested"] = "the model card records no share of validation images recognised"
    elif photos < DRIFT_MIN_PHOTOS:
        result["untested"] = f"fewer than {DRIFT_MIN_PHOTOS} photos in the last day"
    if result["untested"]:
        return result
    result["p_value"] = binomial_upper_tail(unrecognised, photos, expected)
    result["drifting"] = result["p_value"] < DRIFT_P and unrecognised / photos >= DRIFT_RATIO * expected
    return result


def novelty_chart(view: dict, window: str, threshold):
    """Live novelty shares of `window` beside the validation split's, same bins; None without live photos."""
    live = view["windows"][window]["novelty_shares"]
    if live is None:
        return None
    novelty, title = view["novelty"], view["windows"][window]["title"]
    series = [(title, live)]
    if novelty["validation"]:
        series.insert(0, ("Validation", novelty["validation"]))
    return charts.histogram(novelty["edges"], series, Chart(
        "chart-traffic-novelty", f"Novelty scores: {' beside '.join(label.lower() for label, _ in series[::-1])}",
        "Novelty score (higher: less like the training images)", "Share of photos"), marker=threshold)


def classes_chart(view: dict):
    """Each class's share of the answers, per window; None without live photos."""
    windows = [w for w in view["windows"].values() if w["photos"]]
    if not windows:
        return None
    classes = list(windows[-1]["labels"])
    return charts.bar_chart(classes, [(w["title"], [w["labels"].get(c, 0) / w["photos"] for c in classes])
                                      for w in windows],
                            Chart("chart-traffic-classes", "Answers per class in live traffic", "Share of answers"),
                            value_format="{:.0%}")

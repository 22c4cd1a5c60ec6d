"""Live traffic (webapp/lifecycle/traffic.py, webapp/dashboard/traffic.py): counts of every worker
add up in the shared database and outlive the workers, windows are whole buckets, novelty scores
are binned with the card's validation edges, the drift banner shows for a shifted stream and not for
a matched one, and a database that refuses writes fails no prediction."""

import io
import math
import multiprocessing
import re
from fractions import Fraction
from pathlib import Path

import pytest
import sqlalchemy
import torch
from alembic import command
from alembic.config import Config

from conftest import REFUSE_EVERYTHING, image_bytes, start_server
from ml.nets.novelty import bin_counts
from scripts.serve_tools import multipart, request
from webapp import create_app
from webapp.dashboard import traffic as dashboard_traffic
from webapp.dashboard.traffic import binomial_upper_tail, drift, window_start
from webapp.lifecycle import db, traffic
from webapp.lifecycle.site import Site

T0 = 1_800_000_000  # a bucket boundary (divisible by 600)
HISTOGRAM = {"edges": [-3.0, -2.0, -1.0, 0.0], "counts": [10, 60, 30], "images": 100}
CARD = {"classes": ["cat", "dog"], "novelty": {"method": "msp", "threshold": -0.5, "keep_share": 0.95,
                                               "validation_histogram": HISTOGRAM}}
MEASURE = re.compile(r"photos|confidence_sum|answer:(sure|unsure|none)|label:\w+|novelty:[0-9a-f]{12}:\d+")


def result(label="cat", answer="sure", confidence=0.9, novelty=-2.5):
    return {"label": label, "confidence": confidence, "candidates": [label], "answer": answer,
            "recognised": answer != "none", "novelty": novelty, "top": []}


def stream(photos: int, refused: int) -> list:
    return [result(answer="none", novelty=-0.1) if i < refused else result() for i in range(photos)]


def sqlite_site(tmp_path) -> Site:
    return Site(tmp_path, {"TRAFFIC_FLUSH_S": 3600})


def photo_form(count, **colour):
    files = [(io.BytesIO(image_bytes(color=((40 * i) % 256, 90, 160), **colour)), f"{i}.jpg") for i in range(count)]
    return {"data": {"image": files}, "content_type": "multipart/form-data"}


def stored_measures(site) -> set:
    with site.database() as conn:
        return {row["measure"] for row in conn.execute("SELECT DISTINCT measure FROM traffic")}


def quiet_app(tmp_path, model_dir):
    """An app whose counts are written only when a test flushes them (no background flush meanwhile)."""
    return create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "MODEL_DIR": str(model_dir),
                       "TRAFFIC_FLUSH_S": 3600})


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return quiet_app(tmp_path, tiny_model_dir)


@pytest.fixture
def refusing_app(tmp_path, refusing_model_dir):
    """An app whose model recognises no photo (its card expects 5% not recognised)."""
    return quiet_app(tmp_path, refusing_model_dir)


# ---- across workers, restarts, hosts ----

def test_counts_of_two_gunicorn_workers_add_up_through_recycling_and_a_stop(tmp_path, tiny_model_dir):
    """Two workers, each recycled after a few requests (max_requests), and a flush period longer
    than the test: every count reaches the database only by the flush at a worker's exit."""
    instance = tmp_path / "instance"
    server = start_server(instance, tiny_model_dir, workers=2,
                          env_extra={"WEB_MAX_REQUESTS": "4", "WEB_DRAIN_S": "0", "TRAFFIC_FLUSH_S": "3600"})
    labels = []
    try:
        for i in range(12):
            body, ctype = multipart([(f"{i}.png", image_bytes("PNG", color=(20 * i, 80, 200 - 10 * i)), "image/png")])
            status, answer = request(server.base, "POST", "/api/v1/predict", body, ctype, timeout=60)
            assert status == 200
            labels.append(answer["predictions"][0]["label"])
    finally:
        server.stop()
    assert server.log_path.read_text().count("Booting worker") >= 4  # recycled: more workers than two ran

    # a fresh app on the same instance reads what the workers left
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "MODEL_DIR": str(tiny_model_dir)})
    hour = app.test_client().get("/api/v1/traffic").get_json()["windows"]["hour"]
    assert hour["photos"] == 12
    assert {label: n for label, n in hour["labels"].items() if n} == {x: labels.count(x) for x in set(labels)}


def test_postgres_adds_the_counts_of_two_processes_flushing_at_once(postgres_url):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [context.Process(target=flush_three_times, args=(postgres_url, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    sums = traffic.totals(Site(Path("/nonexistent"), {"DATABASE_URL": postgres_url}), T0, "v1")
    assert (sums["photos"], sums["answer:none"], sums["label:cat"]) == (2 * 3 * 10, 2 * 3 * 2, 2 * 3 * 10)
    assert sums["confidence_sum"] == pytest.approx(2 * 3 * 10 * 0.9)


def flush_three_times(url, barrier):
    recorder = traffic.Recorder(url, 3600)
    barrier.wait()
    for _ in range(3):
        recorder.count("v1", CARD, stream(10, 2), now=T0 + 1)
        assert recorder.flush()


def test_a_forked_child_does_not_write_its_parents_counts_again(tmp_path):
    site = sqlite_site(tmp_path)
    traffic.recorder(site).count("v1", CARD, stream(3, 0))
    child = multiprocessing.get_context("fork").Process(target=traffic.flush_all)
    child.start()
    child.join(30)
    traffic.flush_all()
    assert traffic.totals(site, 0, "v1")["photos"] == 3


def test_the_upgrade_from_0003_adds_the_traffic_table_and_keeps_the_rest(tmp_path):
    url = db.sqlite_url(tmp_path)
    engine = sqlalchemy.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.execute(sqlalchemy.text("INSERT INTO jobs (status, params, spec, created) "
                                     "VALUES ('failed', '{}', '{}', 1)"))
    engine.dispose()
    with db.database(url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()["version_num"] == "0004"
        assert conn.execute("SELECT status FROM jobs").fetchone()["status"] == "failed"
    recorder = traffic.Recorder(url, 3600)
    recorder.count("v1", CARD, stream(2, 1))
    assert recorder.flush() and traffic.totals(sqlite_site(tmp_path), 0, "v1")["answer:none"] == 1


# ---- through the real upload path ----

def test_a_prediction_through_the_api_moves_the_counts_and_stores_nothing_else(app):
    client = app.test_client()
    answers = client.post("/api/v1/predict", **photo_form(3)).get_json()["predictions"]
    traffic.flush_all()
    hour = client.get("/api/v1/traffic").get_json()["windows"]["hour"]
    assert hour["photos"] == 3 and sum(hour["novelty_counts"]) == 3
    assert {k: v for k, v in hour["labels"].items() if v} == {a["label"]: sum(b["label"] == a["label"] for b in answers)
                                                               for a in answers}
    assert hour["answers"] == {kind: sum(a["answer"] == kind for a in answers) for kind in ("sure", "unsure", "none")}
    assert hour["mean_confidence"] == pytest.approx(sum(a["confidence"] for a in answers) / 3)
    assert all(MEASURE.fullmatch(m) for m in stored_measures(Site.of(app)))  # sums only, nothing of a photo


def test_a_database_that_refuses_writes_fails_no_prediction_and_loses_no_count(app, caplog):
    client, site = app.test_client(), Site.of(app)
    assert client.post("/api/v1/predict", **photo_form(1)).status_code == 200  # the database is made
    traffic.flush_all()
    with site.database() as conn:
        conn.execute("ALTER TABLE traffic RENAME TO traffic_away")  # every write now fails
    for _ in range(2):
        assert client.post("/api/v1/predict", **photo_form(2)).status_code == 200
        assert traffic.recorder(site).flush() is False
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1  # logged once
    with site.database() as conn:
        conn.execute("ALTER TABLE traffic_away RENAME TO traffic")
    assert traffic.recorder(site).flush() is True
    assert traffic.totals(site, 0, "shipped")["photos"] == 5


# ---- windows and bins ----

def test_windows_are_the_last_hour_day_and_week_rounded_out_to_whole_buckets(tmp_path):
    site, now = sqlite_site(tmp_path), T0 + 300
    recorder = traffic.Recorder(db.sqlite_url(tmp_path), 3600)
    for at in (now, T0 - 3600, T0 - 3601, T0 - 86_400, T0 - 86_401, T0 - 7 * 86_400, T0 - 7 * 86_400 - 1):
        recorder.count("v1", CARD, stream(1, 0), now=at)
    recorder.flush()
    windows = dashboard_traffic.live_traffic(site, "v1", CARD, now=now)["windows"]
    assert [windows[w]["photos"] for w in ("hour", "day", "week")] == [2, 4, 6]
    assert windows["hour"]["since"] == "2027-01-15T07:00:00Z"
    assert window_start(now, 3600) == T0 - 3600 and window_start(T0, 3600) == T0 - 3600


def test_novelty_scores_are_binned_with_the_cards_validation_edges(tmp_path):
    site = sqlite_site(tmp_path)
    recorder = traffic.Recorder(db.sqlite_url(tmp_path), 3600)
    scores = (-9.0, -3.0, -2.5, -2.0, -0.5, 0.0, 7.0)  # below the first edge and above the last: the end bins
    recorder.count("v1", CARD, [result(novelty=s) for s in scores], now=T0)
    recorder.flush()
    view = dashboard_traffic.live_traffic(site, "v1", CARD, now=T0)
    assert view["novelty"]["edges"] == HISTOGRAM["edges"]
    assert view["novelty"]["validation"] == [0.1, 0.6, 0.3]
    assert view["windows"]["hour"]["novelty_counts"] == [3, 1, 3]


def test_live_scores_fall_in_the_bins_the_trainer_counted_validation_scores_in():
    """The same convention as ml.nets.novelty.bin_counts (which made the card's histogram): a score
    on an inner edge belongs to the bin above it; beyond the ends, to the end bins."""
    edges = [-12.0, -10.5, -9.0, -7.5, -6.0]
    scores = [-20.0, -12.0, -10.5, -10.0, -9.0, -7.5000001, -7.5, -6.0, 3.0]
    expected = bin_counts(torch.tensor(scores, dtype=torch.float64), edges).tolist()
    assert [sum(traffic.novelty_bin(edges, s) == i for s in scores) for i in range(4)] == expected


def test_a_card_without_a_validation_histogram_bins_with_fixed_edges(client):
    answers = client.post("/api/v1/predict", **photo_form(2)).get_json()["predictions"]
    traffic.flush_all()
    view = client.get("/api/v1/traffic").get_json()
    assert view["novelty"]["validation"] is None and view["novelty"]["edges"] == traffic.fallback_edges("msp")
    assert view["windows"]["hour"]["novelty_counts"][traffic.novelty_bin(view["novelty"]["edges"],
                                                                         answers[0]["novelty"])] >= 1
    page = client.get("/dashboard").get_data(as_text=True)
    assert "the validation distribution\n    is not recorded" in page and 'id="chart-traffic-novelty"' in page


# ---- the drift test and its banner ----

@pytest.mark.parametrize("n, p", [(1, 0.3), (12, 0.05), (40, 0.5), (60, 0.05), (60, 0.93)])
def test_the_binomial_tail_is_the_exact_sum(n, p):
    exact_p = Fraction(p)
    for observed in range(n + 2):
        exact = sum(math.comb(n, k) * exact_p ** k * (1 - exact_p) ** (n - k) for k in range(observed, n + 1))
        assert binomial_upper_tail(observed, n, p) == pytest.approx(float(exact), rel=1e-9, abs=1e-15)


def test_the_binomial_tail_of_a_million_photos_is_quick_to_sum():
    assert binomial_upper_tail(50_000, 1_000_000, 0.05) == pytest.approx(0.5, abs=0.01)
    assert binomial_upper_tail(60_000, 1_000_000, 0.05) < 1e-100


def test_drift_needs_significance_twice_the_rate_and_enough_photos():
    def day(photos, refused):
        return {"photos": photos, "answers": {"none": refused}}
    assert drift(day(1000, 150), 0.05, None)["drifting"]
    assert not drift(day(1000, 50), 0.05, None)["drifting"]                     # matched
    assert not drift(day(100_000, 8_000), 0.05, None)["drifting"]               # significant, but 1.6 times
    assert drift(day(100_000, 8_000), 0.05, None)["p_value"] < 1e-100
    assert drift(day(49, 49), 0.05, None)["untested"].startswith("fewer than 50")
    assert "NOVELTY_THRESHOLD" in drift(day(1000, 900), 0.05, -1.0)["untested"]
    assert drift(day(1000, 900), None, None)["untested"]


def test_a_shifted_stream_through_the_upload_path_raises_the_banner(refusing_app):
    client = refusing_app.test_client()
    for _ in range(4):
        answers = client.post("/api/v1/predict", **photo_form(15)).get_json()["predictions"]
        assert all(a["answer"] == "none" for a in answers)
    traffic.flush_all()
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'id="drift-banner"' in page
    banner = page[page.index('id="drift-banner"'):page.index("</div>", page.index('id="drift-banner"'))]
    assert "60 of 60 photos" in banner and "one-sided exact binomial test" in banner and "5.0%" in banner
    assert client.get("/api/v1/traffic").get_json()["drift"]["drifting"] is True


def test_a_matched_stream_raises_no_banner(refusing_app):
    site = Site.of(refusing_app)
    card = {**CARD, "novelty": REFUSE_EVERYTHING}  # the served card's expectation: 5% not recognised
    traffic.recorder(site).count("shipped", card, stream(1000, 50))
    traffic.flush_all()
    client = refusing_app.test_client()
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'id="drift-banner"' not in page and "no drift" in page
    assert client.get("/api/v1/traffic").get_json()["drift"]["p_value"] > 0.4

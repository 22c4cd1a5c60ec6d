"""The accuracy dashboard (/dashboard), its gallery route and the SVG chart builders, on model
folders made here with cards whose numbers are known."""

import io
import re
from xml.etree import ElementTree

import pytest
from PIL import Image

from conftest import make_model_dir
from ml import CIFAR10_CLASSES
from ml.nets.modelfile import load_model_dir, write_model_dir
from webapp.dashboard import charts
from webapp.lifecycle import versions

CLASSES = list(CIFAR10_CLASSES)
PNG = b"\x89PNG\r\n\x1a\n"


def confusion_matrix():
    """Row i: 40 + i correct, i + 1 mistaken for the next class, nothing else."""
    return [[40 + i if j == i else (i + 1 if j == (i + 1) % 10 else 0) for j in range(10)] for i in range(10)]


def png(size=(32, 32), colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def full_card_parts():
    matrix = confusion_matrix()
    total = sum(map(sum, matrix))
    return {
        "name": "dash-test", "version": "full-1", "created": "2026-11-29T10:00:00+00:00", "tta": 2,
        "parameters": 1234567,
        "serving": {"tta": {"level": 2, "confident_at": 0.9, "passes": 1.4321},
                    "precision": {"cpu": {"dtype": "bf16", "passed": True, "agreement": 0.9987, "accuracy": 0.8768,
                                          "accuracy_fp32": 0.8772, "why": None},
                                  "cuda": {"dtype": "fp16", "passed": False, "agreement": 0.97,
                                           "why": "top-1 agreement 97.00% < 99.5%"}}},
        "hyperparameters": {"epochs": 3, "lr": 0.25, "note": "<script>alert(1)</script>"},
        "data": {"source": "image-folder:data", "eval_split": "validation", "train_images": 4500,
                 "eval_images": 555, "train_per_class": {c: 400 + 10 * i for i, c in enumerate(CLASSES)},
                 "eval_per_class": {c: 41 + 2 * i for i, c in enumerate(CLASSES)}, "val_size": 555,
                 "split_seed": 7},
        "history": [{"type": "epoch", "epoch": e, "epochs": 3,
                     "train_loss": 2.5 - 0.5 * e, "val_loss": 2.6 - 0.4 * e,
                     "train_accuracy": 0.2 * e, "val_accuracy": 0.19 * e, "elapsed_s": 30.0 * e}
                    for e in (1, 2, 3)],
        "evaluation": {
            "split": "validation", "images": total, "tta": 2, "accuracy": 0.8772, "loss": 0.4321,
            "per_class_accuracy": {c: round(0.5 + 0.04 * i + 0.0031, 4) for i, c in enumerate(CLASSES)},
            "classes": CLASSES, "confusion_matrix": matrix, "ece": 0.0456,
            "calibration_bins": [
                {"low": 0.0, "high": 0.2, "count": 0, "accuracy": None, "confidence": None},
                {"low": 0.2, "high": 0.4, "count": 50, "accuracy": 0.3, "confidence": 0.31},
                {"low": 0.4, "high": 0.6, "count": 100, "accuracy": 0.45, "confidence": 0.52},
                {"low": 0.6, "high": 0.8, "count": 150, "accuracy": 0.74, "confidence": 0.7},
                {"low": 0.8, "high": 1.0, "count": 255, "accuracy": 0.93, "confidence": 0.9}],
            "misclassified": [
                {"index": 5, "true": "cat", "predicted": "dog", "confidence": 0.912,
                 "image": "gallery/misclassified-000.png"},
                {"index": 9, "true": "ship", "predicted": "airplane", "confidence": 0.654,
                 "image": "gallery/misclassified-001.png"},
                {"index": 11, "true": "frog", "predicted": "bird", "confidence": 0.5, "image": "../card.json"}],
        },
        "training": {"train_seconds": 125.4, "total_seconds": 140.0, "device": "cuda", "cpu": "x86_64",
                     "precision": "torch.bfloat16", "world_size": 1, "threads": 2},
        "versions": {"python": "3.11.7", "torch": "2.14.1"},
    }


def gallery_files():
    files = {f"gallery/misclassified-00{i}.png": png(colour=(50 * i, 0, 0)) for i in range(2)}
    files.update({f"gallery/samples-{c}.png": png((256, 32), (i * 20, 90, 90)) for i, c in enumerate(CLASSES)})
    return files


def make_full_model_dir(path, **overrides):
    """A model folder with a complete card (known numbers) and its gallery."""
    make_model_dir(path)
    model, card = load_model_dir(path)
    card = {**card, **full_card_parts(), **overrides}
    write_model_dir(path, model, card, gallery_files())
    return path


@pytest.fixture(scope="module")
def full_model_dir(tmp_path_factory):
    return make_full_model_dir(tmp_path_factory.mktemp("dash") / "full")


def make_client(tmp_path, model_dir):
    from webapp import create_app
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "MODEL_DIR": str(model_dir)})
    return app.test_client()


@pytest.fixture
def dash(tmp_path, full_model_dir):
    return make_client(tmp_path, full_model_dir)


@pytest.fixture
def page(dash):
    response = dash.get("/dashboard")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def svg(page_html, chart_id):
    match = re.search(rf'<svg[^>]*id="{chart_id}".*?</svg>', page_html, re.S)
    assert match, f"no chart {chart_id}"
    return match.group(0)


def section(page_html, section_id):
    """One section of the page, whitespace between tags removed."""
    match = re.search(rf'<section id="{section_id}".*?</section>', page_html, re.S)
    assert match, f"no section {section_id}"
    return re.sub(r">\s+<", "><", match.group(0))


# -- the page --------------------------------------------------------------------------------------

def test_summary_shows_accuracy_split_images_and_tta(page):
    summary = section(page, "summary")
    assert "87.7%" in summary  # overall accuracy 0.8772
    assert "0.432" in summary and "4.6%" in summary  # loss and ECE
    total = f"{sum(map(sum, confusion_matrix())):,}"
    assert f"<strong>validation</strong> split ({total} images" in summary
    assert "augmentation level 2" in summary


def test_per_class_accuracy_table_and_chart(page):
    summary = section(page, "summary")
    for i, name in enumerate(CLASSES):
        accuracy = f"{0.5 + 0.04 * i + 0.0031:.1%}"
        assert re.search(rf'<th scope="row">{name}</th><td class="num">{41 + 2 * i}</td>'
                         rf'<td class="num">{re.escape(accuracy)}</td>', summary)
    assert svg(page, "chart-per-class").count('class="bar"') == 10


def test_confusion_heat_map_cells_and_table(page):
    chart = svg(page, "chart-confusion")
    cells = re.findall(r'<g class="cell"><title>([^<]*)</title><rect[^>]*fill="(#[0-9a-f]{6})"[^>]*/>'
                       r"<text[^>]*>(\d+)</text>", chart)
    assert len(cells) == 100
    matrix = confusion_matrix()
    assert [int(n) for _, _, n in cells] == [n for row in matrix for n in row]
    assert "True class cat, predicted class deer: 4 (" in chart
    # shading follows the share of the row: the diagonal is darker than a mistake, zero is lightest
    fills = {title.split(":")[0]: fill for title, fill, _ in cells}
    assert fills["True class cat, predicted class cat"] != fills["True class cat, predicted class deer"]
    assert fills["True class cat, predicted class horse"] == charts.heat_colour(0)
    table = section(page, "confusion")
    assert "<caption" in table and table.count('class="num diag"') == 10
    assert '<th scope="row">cat</th><td class="num">0</td><td class="num">0</td><td class="num">0</td>' \
           '<td class="num diag">43</td><td class="num">4</td>' in table


def test_history_line_charts_and_table(page):
    for chart_id in ("chart-loss", "chart-accuracy"):
        chart = svg(page, chart_id)
        assert chart.count("<polyline") == 2 and chart.count("<circle") == 6
    history = section(page, "history")
    assert '<th scope="row">2</th><td class="num">1.500</td><td class="num">1.800</td>' \
           '<td class="num">40.0%</td><td class="num">38.0%</td><td class="num">1 min 00 s</td>' in history


def test_calibration_diagram_ece_and_table(page):
    calibration = section(page, "calibration")
    assert "<strong>4.6%</strong>" in calibration
    assert svg(page, "chart-calibration").count('<g class="bin">') == 4  # the empty bin draws nothing
    assert '<th scope="row">60%–80%</th><td class="num">150</td><td class="num">74.0%</td>' \
           '<td class="num">70.0%</td>' in calibration


def test_misclassified_gallery_images_load(page, dash):
    gallery = section(page, "misclassified")
    images = re.findall(r'<img src="([^"]+)"[^>]*alt="([^"]+)"', gallery)
    assert [alt for _, alt in images] == ["Validation image of a cat, classified as dog",
                                          "Validation image of a ship, classified as airplane"]
    assert "91.2% confident" in gallery and "<strong>frog</strong>" in gallery  # listed, no image
    assert "card.json" not in gallery and gallery.count("no image") == 1
    for url, _ in images:
        response = dash.get(url)
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.data.startswith(PNG)


def test_dataset_overview_and_samples(page, dash):
    dataset = section(page, "dataset")
    assert "4,500 training images and 555 validation images" in dataset
    assert '<th scope="row">truck</th><td class="num">490</td><td class="num">59</td>' in dataset
    assert svg(page, "chart-dataset").count('class="bar"') == 20
    samples = re.findall(r'<img src="([^"]+)"[^>]*alt="Eight training images of the class (\w+)"', dataset)
    assert [name for _, name in samples] == CLASSES
    response = dash.get(samples[3][0])
    assert response.status_code == 200 and Image.open(io.BytesIO(response.data)).size == (256, 32)


def test_model_card_facts_and_escaped_hyperparameters(page):
    card = section(page, "model-card")
    for text in ("airnet(widths=[8, 16, 16])", "1,234,567", "2 min 05 s", "cuda", "torch.bfloat16",
                 "image-folder:data", "held out with seed 7", "python 3.11.7, torch 2.14.1", "full-1",
                 "2026-11-29T10:00:00+00:00", "level 2 for photos under 90% confidence after one pass",
                 "1.43 passes per photo", "bf16: top-1 agreement with fp32 99.87%, accuracy 87.68% (fp32 87.72%)",
                 "fp32 (fp16 refused: top-1 agreement 97.00% &lt; 99.5%)"):
        assert text in card, text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card and "<script>" not in card


def test_page_is_fit_for_a_strict_csp_and_accessible(page):
    assert "<script" not in page and 'style="' not in page
    assert not re.search(r"<[^>]+\son[a-z]+=", page)  # no inline event handlers
    assert page.count("<figcaption>") >= 8 and page.count("<caption") == 7  # 6 + live traffic's windows
    for chart in re.findall(r"<svg[^>]*>", page):
        assert 'role="img"' in chart and "aria-labelledby" in chart
    assert 'href="/static/dashboard.css"' in page


# -- robustness and "none of these" ------------------------------------------------------------------

def robustness_part():
    """A card's robustness suite (ml.evaluate) with known numbers."""
    variant = {"inputs": 500, "accuracy": 0.9, "ece": 0.021, "mean_confidence": 0.91, "agreement": 0.97}
    return {"precision": "torch.float32", "tta": 2,
            "variants": {"inputs": 1000, "images": 500, "accuracy": 0.8964, "ece": 0.0187, "mean_confidence": 0.9,
                         "agreement": 0.9712,
                         "per_variant": {"png x3 bilinear": variant,
                                         "cmyk jpeg q90 x8": dict(variant, agreement=0.955, accuracy=0.881)}},
            "corruptions": {"inputs": 2000, "images": 200, "accuracy": 0.7345, "ece": 0.0291, "mean_confidence": 0.75,
                            "per_corruption": {"gaussian noise": [0.8, 0.7, 0.6, 0.5, 0.4],
                                               "fog": [0.9, 0.88, 0.85, 0.8, 0.72]}}}


def novelty_part():
    """A card's "none of these" section (ml/nets/novelty.py) with known numbers."""
    def detection(sets):
        return {"known_images": 5000, "known_recognised": 0.9512,
                "sets": {name: {"images": 300, "auroc": {"msp": msp, "energy": 0.61, "knn": knn}, "refused": refused}
                         for name, msp, knn, refused in sets}}
    return {"method": "knn", "threshold": 0.8773, "keep_share": 0.95, "fitted_on": "5000 validation images",
            "k": 10, "bank_images": 10000, "bank_sha256": "0" * 64,
            "far_out": detection([("noise", 0.51, 0.992, 0.97), ("solid colours", 0.62, 0.962, 0.9)]),
            "open_set": detection([("cat, dog held out", 0.7, 0.861, 0.41)])}


@pytest.fixture(scope="module")
def shift_page(tmp_path_factory):
    """The dashboard of a card that has the robustness suite and the novelty section. (Its bank
    file is not there: the dashboard reads only the card, and the served model is another.)"""
    folder = tmp_path_factory.mktemp("shift")
    model_dir = make_full_model_dir(folder / "model", robustness=robustness_part(), novelty=novelty_part())
    response = make_client(folder, model_dir).get("/dashboard")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_robustness_figures_beside_clean_accuracy(shift_page):
    summary = section(shift_page, "summary")
    assert "87.7%" in summary
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", summary))
    assert "On photos sent the way clients send them: 97.1% agree with the original, 89.6% accurate, ECE 1.9%." in text
    assert "Under common corruptions (2 kinds, 5 severities): mean accuracy 73.5%, ECE 2.9%." in text


def test_robustness_tables_per_variant_and_per_corruption(shift_page):
    robustness = section(shift_page, "robustness")
    assert '<th scope="row">cmyk jpeg q90 x8</th><td class="num">500</td><td class="num">95.5%</td>' \
           '<td class="num">88.1%</td><td class="num">91.0%</td><td class="num">2.1%</td>' in robustness
    assert '<th scope="row">fog</th><td class="num">90.0%</td><td class="num">88.0%</td><td class="num">85.0%</td>' \
           '<td class="num">80.0%</td><td class="num">72.0%</td><td class="num">83.0%</td>' in robustness
    assert robustness.count('<th scope="col" class="num">Severity') == 5
    assert "<strong>87.7%</strong>" in robustness  # clean accuracy for comparison


def test_none_of_these_section(shift_page):
    novelty = section(shift_page, "none-of-these")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", novelty))
    for words in ("knn", "k = 10", "10,000 training images", "0.877", "95.0% of validation images stay recognised",
                  "95.1% of 5,000 images"):
        assert words in text, words
    # the method used first, then the others measured; the share refused at the threshold
    assert '<th scope="col" class="num">AUROC knn (used)</th><th scope="col" class="num">AUROC energy</th>' \
           '<th scope="col" class="num">AUROC msp</th>' in novelty
    assert '<th scope="row">noise</th><td class="num">300</td><td class="num">0.992</td><td class="num">0.610</td>' \
           '<td class="num">0.510</td><td class="num">97.0%</td>' in novelty
    assert "averages 0.977 over 2 sets, lowest 0.962" in text  # far-out
    assert '<th scope="row">cat, dog held out</th>' in novelty and "it is 0.861" in text  # open set
    assert 'href="#robustness"' in shift_page and 'href="#none-of-these"' in shift_page


def test_prediction_sets_coverage_and_size_beside_the_accuracy(tmp_path, page):
    """From the card's conformal section (held-out validation half) and the suite's sets figures."""
    robustness = robustness_part()
    robustness["variants"]["sets"] = {"coverage": 0.9634, "mean_set_size": 1.2}
    robustness["corruptions"]["sets"] = {"coverage": 0.8812, "mean_set_size": 1.4567}
    sets = {"method": "raps", "coverage": 0.95, "threshold": 1.03, "lambda": 0.1, "k_reg": 1,
            "held_out": {"images": 2500, "coverage": 0.9488, "mean_set_size": 1.1312, "size_histogram": [1, 2]}}
    model_dir = make_full_model_dir(tmp_path / "model", robustness=robustness, conformal=sets)
    summary = section(make_client(tmp_path, model_dir).get("/dashboard").get_data(as_text=True), "summary")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", summary))
    assert ("Prediction sets (raps, stated coverage 95.0%): the true class was among the candidates for 94.9% of "
            "2,500 held-out validation images, with 1.131 candidates on average; on photos sent the way clients "
            "send them 96.3% (1.200 candidates); under common corruptions 88.1% (1.457).") in text
    assert 'id="prediction-sets"' not in page  # a card from before the sets


def test_a_threshold_setting_is_shown_beside_the_cards(tmp_path):
    from webapp import create_app
    model_dir = make_full_model_dir(tmp_path / "model", novelty=novelty_part())
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "MODEL_DIR": str(model_dir),
                      "NOVELTY_THRESHOLD": 0.9})
    novelty = section(app.test_client().get("/dashboard").get_data(as_text=True), "none-of-these")
    assert re.search(r"0\.877 in the card; this server uses\s+0\.900 \(the <code>NOVELTY_THRESHOLD</code>", novelty)


@pytest.mark.parametrize("named, shown", [({"energy_temperature": 4.0}, "temperature 4.0"),
                                          ({}, "temperature 1.0")])  # a card from before it: t = 1
def test_the_energy_score_shows_its_temperature(tmp_path, named, shown):
    spec = dict(novelty_part(), method="energy", threshold=-3.1, **named)
    model_dir = make_full_model_dir(tmp_path / "model", novelty=spec)
    novelty = section(make_client(tmp_path, model_dir).get("/dashboard").get_data(as_text=True), "none-of-these")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", novelty))
    assert "energy score" in text and shown in text and "k = 10" not in text


def test_a_card_without_the_new_sections_does_not_show_them(page):
    assert 'id="robustness"' not in page and 'id="none-of-these"' not in page
    assert 'href="#robustness"' not in page and "sent the way clients send them" not in page


def test_a_malformed_robustness_or_novelty_part_is_left_out(tmp_path):
    model_dir = make_full_model_dir(tmp_path / "odd", robustness={"variants": {"per_variant": [1, 2]}},
                                    novelty={"threshold": 0.5})
    html = make_client(tmp_path, model_dir).get("/dashboard").get_data(as_text=True)
    assert "87.7%" in section(html, "summary")
    assert 'id="robustness"' not in html and 'id="none-of-these"' not in html


def test_card_without_optional_parts_renders(tmp_path, tiny_model_dir):
    response = make_client(tmp_path, tiny_model_dir).get("/dashboard")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count("not recorded for this model") >= 8
    assert "<svg" not in html and "<img" not in html
    assert "airnet(widths=[8, 16, 16])" in section(html, "model-card")


def test_malformed_card_parts_are_not_recorded_not_errors(tmp_path):
    evaluation = dict(full_card_parts()["evaluation"], confusion_matrix=[[1, 2], [3]], calibration_bins="x",
                      misclassified=[{"image": 5}], per_class_accuracy={"cat": None, "dog": 0.5})
    model_dir = make_full_model_dir(tmp_path / "odd", history="none", evaluation=evaluation, data=None,
                                    hyperparameters=[1, 2])
    response = make_client(tmp_path, model_dir).get("/dashboard")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    summary = section(html, "summary")
    assert "87.7%" in summary  # what the card does hold is shown, e.g. per-class accuracy ("—" for none)
    assert '<th scope="row">cat</th><td class="num">—</td><td class="num">—</td>' in summary
    assert '<th scope="row">dog</th><td class="num">—</td><td class="num">50.0%</td>' in summary
    for part in ("confusion", "history", "calibration", "misclassified"):
        assert "not recorded for this model" in section(html, part), part
    assert html.count("<svg") == 1  # only the per-class accuracy chart


def test_unreadable_card_says_so(tmp_path):
    model_dir = make_model_dir(tmp_path / "broken")
    (model_dir / "card.json").write_text("{not json")
    response = make_client(tmp_path, model_dir).get("/dashboard")
    assert response.status_code == 200
    assert "model card of this version cannot be read" in response.get_data(as_text=True)


def test_unknown_version_is_404(dash):
    for version in ("nope", "../full", ""):
        assert dash.get("/dashboard", query_string={"version": version}).status_code == 404


@pytest.fixture
def hostile_gallery(tmp_path):
    """A model folder whose gallery holds traps: a symlink out of it and a non-PNG named .png."""
    model_dir = make_full_model_dir(tmp_path / "hostile")
    (tmp_path / "secret.png").write_bytes(png())
    (model_dir / "gallery" / "link.png").symlink_to(tmp_path / "secret.png")
    (model_dir / "gallery" / "evil.png").write_text(
        "<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>")
    (model_dir / "card.png").write_bytes(png())
    return model_dir


def test_gallery_route_refuses_anything_but_gallery_pngs(tmp_path, hostile_gallery):
    client = make_client(tmp_path, hostile_gallery)
    version = re.search(r'<option value="([^"]+)" selected', client.get("/dashboard").get_data(as_text=True))[1]
    base = f"/dashboard/gallery/{version}/"
    assert client.get(base + "samples-cat.png").status_code == 200
    for name in ("..%2Fcard.png", "%2e%2e%2fcard.png", "../card.png", "..%5Ccard.png", "link.png", "evil.png",
                 "missing.png", ".png", "samples-cat.PNG", "samples-cat.png.png", "%00.png", "card.png",
                 "..%2F..%2Fsecret.png", "samples-cat.jpg"):
        response = client.get(base + name)
        assert response.status_code == 404, name
        assert response.mimetype != "image/png"
    assert client.get("/dashboard/gallery/nope/samples-cat.png").status_code == 404


# -- model versions --------------------------------------------------------------------------------

@pytest.fixture
def two_versions(tmp_path, monkeypatch, full_model_dir):
    """A stand-in for the version store's list, with two versions."""
    other = make_full_model_dir(tmp_path / "other", version="other-2", evaluation=dict(
        full_card_parts()["evaluation"], accuracy=0.5432))
    monkeypatch.setattr(versions, "list_versions", lambda site: [
        {"id": "v-new", "path": str(other), "active": False, "created": "2026-11-29T12:00:00+00:00",
         "metrics": {"accuracy": 0.5432}},
        {"id": "v-old", "path": str(full_model_dir), "active": True, "created": "2026-11-28T12:00:00+00:00"}])
    return make_client(tmp_path, full_model_dir)


def test_version_menu_lists_versions_and_chooses_one(two_versions):
    html = two_versions.get("/dashboard").get_data(as_text=True)
    assert re.search(r'<form class="version-form" method="get"', html)
    assert '<option value="v-new">v-new · 54.3% accurate · 2026-11-29 12:00</option>' in html
    assert '<option value="v-old" selected>v-old · 2026-11-28 12:00 (active)</option>' in html
    assert "87.7%" in section(html, "summary")
    chosen = two_versions.get("/dashboard?version=v-new").get_data(as_text=True)
    assert "54.3%" in section(chosen, "summary") and '<option value="v-new" selected>' in chosen
    assert "/dashboard/gallery/v-new/samples-cat.png" in chosen
    assert two_versions.get("/dashboard/gallery/v-new/samples-cat.png").status_code == 200
    assert two_versions.get("/dashboard?version=full-1").status_code == 404


# -- chart builders --------------------------------------------------------------------------------

def test_heat_map_has_a_cell_per_count():
    matrix = [[r * 10 + c for c in range(10)] for r in range(10)]
    chart = charts.heat_map(matrix, CLASSES, CLASSES, charts.Chart("h", "T"))
    assert chart.count("<rect") == 100
    numbers = re.findall(r"<rect[^>]*/><text[^>]*>(\d+)</text>", chart)
    assert [int(n) for n in numbers] == list(range(100))
    assert chart.startswith("<svg") and '<title id="h-title">T</title>' in chart


def test_line_chart_draws_one_polyline_per_series_and_escapes_labels():
    chart = charts.line_chart([1, 2, 3], [("a <b>", [0.1, 0.2, 0.3]), ("c&d", [0.3, None, float("nan")])],
                              charts.Chart("l", 'x"<y>', x_label="Epoch", y_label="Loss"))
    assert chart.count("<polyline") == 2 and chart.count("<circle") == 4  # missing values are skipped
    assert "a &lt;b&gt;" in chart and "c&amp;d" in chart and "<b>" not in chart
    assert "x&#34;&lt;y&gt;" in chart
    assert_well_formed(chart)


def test_line_chart_with_one_epoch_or_fixed_range():
    chart = charts.line_chart([1], [("acc", [0.5])], charts.Chart("one", "t", x_label="Epoch", y_label="Accuracy"),
                              y_range=(0, 1), y_format="{:.0%}")
    assert chart.count("<circle") == 1 and ">100%<" in chart and ">0%<" in chart
    assert_well_formed(chart)


def test_bar_chart_bars_and_values():
    chart = charts.bar_chart(["x<y", "z"], [("train", [10, 20]), ("val", [1, 2])],
                             charts.Chart("b", "t", x_label="Images"))
    assert chart.count('class="bar"') == 4 and "x&lt;y" in chart
    widths = [float(w) for w in re.findall(r'<rect x="100" y="[^"]+" width="([^"]+)"', chart)]
    assert widths[2] == pytest.approx(2 * widths[0])  # 20 is twice 10 (bars go x-train, x-val, z-train...)
    assert_well_formed(chart)


def test_reliability_diagram_skips_empty_bins():
    bins = full_card_parts()["evaluation"]["calibration_bins"]
    chart = charts.reliability_diagram(bins, charts.Chart("r", "t"))
    assert chart.count('<g class="bin">') == 4 and "stroke-dasharray" in chart
    assert chart.count('stroke="#d9480f" stroke-width="3"/></g>') == 4  # a mean-confidence line per bin
    assert "accuracy 74.0%, mean confidence 70.0%" in chart
    assert_well_formed(chart)


def test_nice_ticks():
    assert charts.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert charts.nice_ticks(0.37, 2.31) == [0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert charts.nice_ticks(5, 5) == [5, 5.2, 5.4, 5.6, 5.8, 6.0]


def assert_well_formed(markup):
    """The chart is well-formed XML."""
    root = ElementTree.fromstring(str(markup))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


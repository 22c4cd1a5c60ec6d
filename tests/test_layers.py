"""The import structure holds: no package imports one of a layer above it, ml never imports the
web app, the lifecycle imports no web framework, and no circle (scripts/import_graph.py)."""

from scripts import import_graph


def test_no_upward_import_and_no_circle():
    assert import_graph.problems() == []


def test_the_check_sees_an_upward_import_and_a_circle(monkeypatch):
    graph = {"ml.data": {"ml.train"}, "ml.train": {"ml.data"}, "webapp.lifecycle": {"webapp.core"},
             "webapp.core": {"webapp.lifecycle"}}
    monkeypatch.setattr(import_graph, "package_graph", lambda: (graph, {"webapp.lifecycle": {"flask"}}))
    found = "\n".join(import_graph.problems())
    assert "ml.data imports ml.train, a layer above it" in found
    assert "webapp.lifecycle imports webapp.core, a layer above it" in found
    assert "webapp.lifecycle imports flask" in found
    assert "circle: ml.data -> ml.train -> ml.data" in found


def test_every_file_of_ml_and_webapp_is_in_the_graph():
    graph, _ = import_graph.package_graph()
    assert {"ml.data", "ml.nets", "ml.train", "webapp.lifecycle", "webapp.core", "webapp"} <= set(graph)

"""The project's import structure: which package imports which, drawn from the source.

    python -m scripts.import_graph            # the drawing in docs/architecture.md (Mermaid)
    python -m scripts.import_graph --check    # exit 1 and say why on an upward import or a circle

A "package" is a second-level package (`ml.data`, `webapp.lifecycle`, ...) or a top-level module of
`webapp` (`webapp.settings`, `webapp` itself for create_app). Every import counts, also one inside a
function. tests/test_layers.py runs the check.
"""

import argparse
import ast
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# lowest first: a package may import only packages of an earlier layer or of its own
LAYERS = {
    "ml": [["ml"], ["ml.data"], ["ml.nets"], ["ml.evaluate", "ml.predict"], ["ml.calibrate"],
           ["ml.train", "ml.export"]],
    "webapp": [["webapp.settings"], ["webapp.lifecycle"], ["webapp.core"],
               ["webapp.predict"], ["webapp.feedback", "webapp.dashboard"], ["webapp.admin"], ["webapp"]],
}
WEB_FRAMEWORK = ("flask", "flask_wtf", "werkzeug", "jinja2")


def package_of(module: str) -> str:
    """ml.data.images -> ml.data; webapp.settings -> webapp.settings; webapp -> webapp."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set:
    """Absolute names this file imports (`from webapp import x` names `webapp.x` when x is a
    module or package of webapp, else `webapp`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                folder = PROJECT_ROOT / Path(*candidate.split("."))
                names.add(candidate if folder.is_dir() or folder.with_suffix(".py").is_file() else node.module)
    return names


def project_files() -> list:
    return sorted(p for top in LAYERS for p in (PROJECT_ROOT / top).rglob("*.py"))


def package_graph() -> dict:
    """{package: {packages of this project it imports}}, and third-party names per package."""
    graph, external = {}, {}
    for path in project_files():
        source = package_of(module_name(path))
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in LAYERS:
                target = package_of(name)
                if target != source:
                    graph.setdefault(source, set()).add(target)
            else:
                external.setdefault(source, set()).add(top)
        graph.setdefault(source, set())
    return graph, external


def layer_index(package: str):
    for top, layers in LAYERS.items():
        for i, layer in enumerate(layers):
            if package in layer:
                return top, i
    return None


def problems() -> list:
    """Upward imports, imports across ml/webapp the wrong way, Flask in lifecycle, circles."""
    graph, external = package_graph()
    found = []
    for source, targets in sorted(graph.items()):
        where = layer_index(source)
        if where is None:
            found.append(f"{source} is in no layer of scripts/import_graph.py")
            continue
        for target in sorted(targets):
            there = layer_index(target)
            if target.startswith("webapp") and source.startswith("ml"):
                found.append(f"{source} imports {target}: ml never imports the web app")
            elif there and there[0] == where[0] and there[1] > where[1]:
                found.append(f"{source} imports {target}, a layer above it")
    for framework in sorted(set(external.get("webapp.lifecycle", ())) & set(WEB_FRAMEWORK)):
        found.append(f"webapp.lifecycle imports {framework}: the lifecycle imports no web framework")
    found += [f"circle: {' -> '.join(circle)}" for circle in circles(graph)]
    return found


def circles(graph: dict) -> list:
    """Every elementary circle found by depth-first search from each package (small graph)."""
    found = []

    def walk(path):
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                walk(path + [nxt])
    for start in sorted(graph):
        walk([start])
    return found


def mermaid() -> str:
    graph, _ = package_graph()
    lines = ["flowchart BT"]
    for source, targets in sorted(graph.items()):
        lines += [f"    {source.replace('.', '_')}[{source}] --> {t.replace('.', '_')}[{t}]" for t in sorted(targets)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if not args.check:
        print(mermaid())
        return 0
    found = problems()
    print("\n".join(found) if found else "no upward import, no circle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

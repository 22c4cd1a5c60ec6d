"""Model versions as downloadable ONNX or TorchScript files (ml.export), made on the first request
and cached in `<instance>/exports/` under the weights' checksum: a version whose weights change (the
shipped model after an upgrade) gets a new file, never a stale one. The guards are the callers'
(admin pages: session; admin API: bearer token).
"""

from pathlib import Path

from flask import current_app, send_file

from ml.nets.modelfile import ModelFileError, read_card
from webapp.core.errors import AppError
from webapp.core.site import current_site
from webapp.lifecycle.versions import VersionError, store

EXPORT_DIR = "exports"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}  # ml.export.FORMATS, without importing it here


def export_file(version_id: str, fmt: str) -> Path:
    """The cached export of a version, written (atomically) when missing."""
    if fmt not in SUFFIXES:
        raise AppError(404, "not_found", f"no export format {fmt!r}; choose from {sorted(SUFFIXES)}")
    path = store(current_site()).path(version_id)
    try:
        sha = read_card(path)["weights_sha256"]
    except ModelFileError as error:
        raise VersionError(f"version {version_id} is damaged and cannot be exported: {error}", "refused") from None
    target = Path(current_app.instance_path) / EXPORT_DIR / f"{version_id}-{sha[:16]}{SUFFIXES[fmt]}"
    if not target.is_file():
        # Imported on the first export only: onnx and onnxruntime add 47 MB and 1.2 s to every
        # worker at start (measured), and most workers never export.
        from ml.export.formats import export_model
        try:
            export_model(path, fmt, target)
        except ModelFileError as error:
            raise VersionError(f"version {version_id} is damaged and cannot be exported: {error}", "refused") from None
    return target


def download(version_id: str, fmt: str):
    """The export as an attachment named after the version."""
    target = export_file(version_id, fmt)
    return send_file(target, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"cifar10-{version_id}{SUFFIXES[fmt]}", max_age=0)

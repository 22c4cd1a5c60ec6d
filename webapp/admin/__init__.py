"""Administration: the pages under /admin (login, jobs, versions; `pages`), the management JSON
API under /api/v1/admin (`api`) and model downloads as ONNX or TorchScript (`exports`). The
feedback review pages and routes live in webapp.feedback."""

from webapp.admin import api, pages

PAGES = (pages.bp,)
APIS = (api.bp,)

"""gunicorn settings (read by `make serve`). The model loads in each worker after fork."""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
timeout = 60

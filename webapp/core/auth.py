"""Admin credentials, login throttling and the two guards: `login_required` (pages, session cookie)
and `token_required` (the JSON management API, `Authorization: Bearer <token>`).

The password comes from ADMIN_PASSWORD and the token from ADMIN_TOKEN. When unset, the first
process to start generates a strong one, stores only its hash in the instance folder and prints
it once to the log; the file is created with an atomic exclusive link, so when several gunicorn
workers start together exactly one generates and prints. Failed logins are counted per client in
the admin database (webapp.core.ratelimit), so throttling holds across workers.
"""

import hashlib
import hmac
import os
import secrets
import sys
import tempfile
import time
from functools import wraps
from pathlib import Path

from flask import current_app, redirect, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.core.errors import error_response, wants_json
from webapp.core.ratelimit import LOGIN_FAILURES, client_address
from webapp.core.site import current_site

PASSWORD_FILE = "admin_password.hash"
TOKEN_FILE = "admin_token.hash"
SESSION_HOURS = 12


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _create_once(path: Path, content: str) -> bool:
    """Create `path` holding `content` unless it exists; True when this call created it."""
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # atomic and exclusive: fails when another process got there first
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _announce(what, secret, path):
    message = (f"ADMIN {what} generated (shown once; only its hash is kept in {path}; "
               f"set ADMIN_{what} to choose your own): {secret}")
    print(message, file=sys.stderr, flush=True)


def init_app(app):
    """Generate the password and token that are not configured (once per instance folder)."""
    instance = Path(app.instance_path)
    if not app.config.get("ADMIN_PASSWORD"):
        password = secrets.token_urlsafe(18)
        if _create_once(instance / PASSWORD_FILE, generate_password_hash(password)):
            _announce("PASSWORD", password, instance / PASSWORD_FILE)
    if not app.config.get("ADMIN_TOKEN"):
        token = secrets.token_urlsafe(32)
        if _create_once(instance / TOKEN_FILE, _sha256(token)):
            _announce("TOKEN", token, instance / TOKEN_FILE)


def _stored(name) -> str:
    """The stored hash; empty when the file is gone (then nothing matches until a restart
    generates a new secret)."""
    try:
        return (Path(current_app.instance_path) / name).read_text().strip()
    except FileNotFoundError:
        return ""


def check_password(password: str) -> bool:
    configured = current_app.config.get("ADMIN_PASSWORD")
    if configured:
        return hmac.compare_digest(_sha256(password), _sha256(configured))
    stored = _stored(PASSWORD_FILE)
    return bool(stored) and check_password_hash(stored, password)


def check_token(token: str) -> bool:
    configured = current_app.config.get("ADMIN_TOKEN")
    expected = _sha256(configured) if configured else _stored(TOKEN_FILE)
    return bool(token and expected) and hmac.compare_digest(_sha256(token), expected)


def _credential_id() -> str:
    """Changes when the password changes, which ends every session made with the old one."""
    configured = current_app.config.get("ADMIN_PASSWORD")
    return _sha256(_sha256(configured) if configured else _stored(PASSWORD_FILE))[:16]


# ---- throttling ----

def throttle_wait() -> int:
    """Seconds this client must wait before trying again (0 when it may try now)."""
    with current_site().database() as conn:
        return LOGIN_FAILURES.wait_s(conn, client_address())


def record_failure():
    with current_site().database() as conn:
        LOGIN_FAILURES.record(conn, client_address())


def clear_failures():
    with current_site().database() as conn:
        LOGIN_FAILURES.clear(conn, client_address())


# ---- sessions and guards ----

def log_in():
    session.clear()  # a fresh session: no fixation
    session["admin"] = _credential_id()
    session["admin_since"] = time.time()


def log_out():
    session.clear()


def logged_in() -> bool:
    return (session.get("admin") == _credential_id()
            and time.time() - session.get("admin_since", 0) < SESSION_HOURS * 3600)


def safe_next(target) -> str:
    """Only a path inside /admin is a valid place to return to after login."""
    if target and target.startswith("/admin") and "//" not in target and "\\" not in target:
        return target
    return url_for("admin.home")


def login_required(view):
    """Pages: redirect to the login page. JSON endpoints under /admin (polling): 401 JSON."""
    @wraps(view)
    def guarded(*args, **kwargs):
        if logged_in():
            return view(*args, **kwargs)
        if wants_json():
            return error_response(401, "unauthorized", "log in at /admin/login")
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    return guarded


def token_required(view):
    """The management API: `Authorization: Bearer <ADMIN_TOKEN>`; cookies are not enough."""
    @wraps(view)
    def guarded(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and check_token(token.strip()):
            return view(*args, **kwargs)
        response = error_response(401, "unauthorized", "send Authorization: Bearer <ADMIN_TOKEN>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
        return response
    return guarded

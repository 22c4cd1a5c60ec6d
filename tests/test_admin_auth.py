"""Admin authentication: login pages, bearer token, CSRF, throttling, generated credentials."""

import os
import subprocess
import sys
import time

import pytest

from admin_support import PASSWORD, TOKEN, admin_config, auth_headers, csrf_token, login
from conftest import PROJECT_ROOT
from webapp import create_app


@pytest.fixture
def admin_app(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    return create_app(admin_config(tmp_path, tiny_model_dir, data))


@pytest.fixture
def client(admin_app):
    return admin_app.test_client()


@pytest.mark.parametrize("path", ["/admin", "/admin/jobs/new", "/admin/jobs/1"])
def test_pages_redirect_to_login_without_a_session(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=/admin")


def test_polling_json_answers_401_without_a_session(client):
    response = client.get("/admin/jobs/1.json")
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("method, path", [
    ("get", "/api/v1/admin/jobs"), ("post", "/api/v1/admin/jobs"), ("get", "/api/v1/admin/jobs/1"),
    ("post", "/api/v1/admin/jobs/1/cancel"), ("get", "/api/v1/admin/versions"),
    ("post", "/api/v1/admin/versions/shipped/activate")])
def test_api_answers_401_without_a_token(client, method, path):
    for headers in ({}, auth_headers("wrong-token"), {"Authorization": f"Basic {TOKEN}"}):
        response = getattr(client, method)(path, headers=headers, json={})
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_api_accepts_the_token_and_a_session_cookie_is_not_enough(client):
    assert client.get("/api/v1/admin/versions", headers=auth_headers()).status_code == 200
    assert login(client).status_code == 302
    assert client.get("/admin").status_code == 200          # the session works for pages...
    assert client.get("/api/v1/admin/versions").status_code == 401  # ...but not for the API


def test_login_logout(client):
    response = client.post("/admin/login", data={"password": "wrong", "csrf_token": csrf_token(client)})
    assert response.status_code == 401
    assert "Wrong password" in response.get_data(as_text=True)
    assert client.get("/admin").status_code == 302
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/admin"
    assert client.get("/admin").status_code == 200
    token = csrf_token(client, "/admin")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin").status_code == 302


def test_login_returns_only_to_admin_pages(client):
    token = csrf_token(client)
    response = client.post("/admin/login", data={"password": PASSWORD, "csrf_token": token,
                                                 "next": "https://evil.example/"})
    assert response.headers["Location"] == "/admin"
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin")})
    response = client.post("/admin/login", data={"password": PASSWORD, "csrf_token": csrf_token(client),
                                                 "next": "/admin/jobs/new"})
    assert response.headers["Location"] == "/admin/jobs/new"


def test_posts_without_a_csrf_token_are_refused_and_change_nothing(client, admin_app):
    response = client.post("/admin/login", data={"password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin").status_code == 302           # not logged in
    login(client)
    for path, data in (("/admin/jobs", {"preset": "seed", "epochs": "1"}),
                       ("/admin/versions/shipped/activate", {}), ("/admin/jobs/1/cancel", {}),
                       ("/admin/logout", {})):
        assert client.post(path, data=data).status_code == 400
        assert client.post(path, data=dict(data, csrf_token="forged")).status_code == 400
    assert client.get("/admin").status_code == 200            # still logged in: logout refused
    assert client.get("/api/v1/admin/jobs", headers=auth_headers()).json["jobs"] == []  # no job started


def test_failed_logins_are_throttled_across_workers(tmp_path, tiny_model_dir):
    """Two app instances on one instance folder stand for two gunicorn workers: the failures
    counted by one throttle the other, and even the right password waits."""
    config = admin_config(tmp_path, tiny_model_dir, tmp_path, LOGIN_MAX_FAILURES=3)
    first, second = create_app(config).test_client(), create_app(config).test_client()
    for client in (first, second, first):
        response = client.post("/admin/login", data={"password": "guess", "csrf_token": csrf_token(client)})
        assert response.status_code == 401
    for client in (second, first):
        response = client.post("/admin/login", data={"password": PASSWORD, "csrf_token": csrf_token(client)})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert "Too many failed attempts" in response.get_data(as_text=True)
    assert first.get("/admin").status_code == 302


def test_throttle_window_expires_and_success_clears_failures(tmp_path, tiny_model_dir):
    config = admin_config(tmp_path, tiny_model_dir, tmp_path, LOGIN_MAX_FAILURES=2, LOGIN_WINDOW_S=1)
    client = create_app(config).test_client()
    for _ in range(2):
        client.post("/admin/login", data={"password": "guess", "csrf_token": csrf_token(client)})
    assert login(client).status_code == 429
    time.sleep(1.2)
    assert login(client).status_code == 302


GENERATE = """
import sys
from webapp import create_app
create_app({"INSTANCE_PATH": sys.argv[1], "MODEL_DIR": sys.argv[2]})
"""


def test_credentials_are_generated_once_hashed_and_printed_once(tmp_path, tiny_model_dir):
    """Three processes start at once on a fresh instance folder (like gunicorn workers): exactly
    one generates and prints the password and the token; only hashes are stored; they work."""
    instance = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_PASSWORD", "ADMIN_TOKEN")}
    processes = [subprocess.Popen([sys.executable, "-c", GENERATE, str(instance), str(tiny_model_dir)],
                                  cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    outputs = [p.communicate(timeout=120)[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    printed = [line for out in outputs for line in out.splitlines() if line.startswith("ADMIN ")]
    passwords = [line.rsplit(": ", 1)[1] for line in printed if line.startswith("ADMIN PASSWORD")]
    tokens = [line.rsplit(": ", 1)[1] for line in printed if line.startswith("ADMIN TOKEN")]
    assert len(passwords) == 1 and len(tokens) == 1, printed
    password, token = passwords[0], tokens[0]
    assert len(password) >= 20 and len(token) >= 40
    stored = (instance / "admin_password.hash").read_text() + (instance / "admin_token.hash").read_text()
    assert password not in stored and token not in stored
    assert oct((instance / "admin_password.hash").stat().st_mode & 0o777) == "0o600"

    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "MODEL_DIR": str(tiny_model_dir)})
    client = app.test_client()
    assert login(client, "not-it").status_code == 401
    assert login(client, password).status_code == 302
    assert client.get("/api/v1/admin/versions", headers=auth_headers(token)).status_code == 200
    assert client.get("/api/v1/admin/versions", headers=auth_headers(password)).status_code == 401

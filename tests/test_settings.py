"""The factory's one settings table: defaults, then <instance>/config.py, then the environment
(converted by the table's type), then test_config; and the wiring done in create_app."""

from webapp import create_app
from webapp.predict.request_photos import InMemoryRequest
from webapp.settings import SETTINGS


def make_app(tmp_path, **test_config):
    return create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "ADMIN_PASSWORD": "x", "ADMIN_TOKEN": "y",
                       **test_config})


def test_defaults_config_file_environment_and_test_config_in_that_order(tmp_path, monkeypatch):
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "config.py").write_text("MAX_FILES = 3\nLOGIN_WINDOW_S = 7\nTRAIN_NPROC = 5\n")
    monkeypatch.setenv("LOGIN_WINDOW_S", "12.5")
    monkeypatch.setenv("TRAIN_NPROC", "2")
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "yes")
    config = make_app(tmp_path, TRAIN_NPROC=4).config
    assert config["BATCH_MAX_IMAGES"] == dict((n, d) for n, d, _ in SETTINGS)["BATCH_MAX_IMAGES"]  # default
    assert config["MAX_FILES"] == 3                       # instance config over the default
    assert config["LOGIN_WINDOW_S"] == 12.5               # environment over the config file, as a float
    assert config["SESSION_COOKIE_SECURE"] is True        # "yes" is a flag
    assert config["TRAIN_NPROC"] == 4                     # test_config over everything


def test_every_setting_is_listed_once_and_port_belongs_to_gunicorn(tmp_path):
    names = [name for name, _, _ in SETTINGS]
    assert len(names) == len(set(names)) and "PORT" not in names
    assert "PORT" not in make_app(tmp_path).config


def test_the_factory_wires_the_request_class_and_the_filters(tmp_path):
    app = make_app(tmp_path)
    assert app.request_class is InMemoryRequest
    assert {"pct", "num", "duration", "when"} <= set(app.jinja_env.filters)
    assert app.jinja_env.from_string("{{ 0.9222 | pct }} {{ 1234 | num }} {{ 2052 | duration }}").render() == \
        "92.2% 1,234 34 min 12 s"


def addresses_seen(app) -> list:
    """The client address the rate limits count, for a request sent through one proxy (nginx)."""
    from webapp.core.ratelimit import client_address
    seen = []
    app.add_url_rule("/whoami", "whoami", lambda: seen.append(client_address()) or "")
    app.test_client().get("/whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                          environ_base={"REMOTE_ADDR": "127.0.0.1"})
    return seen


def test_x_forwarded_for_counts_only_behind_a_configured_proxy(tmp_path):
    assert addresses_seen(make_app(tmp_path / "direct")) == ["127.0.0.1"]  # a client cannot pick its address
    assert addresses_seen(make_app(tmp_path / "behind", PROXY_HOPS=1)) == ["203.0.113.9"]  # nginx's word

"""Security headers on every response (placeholder until the web app issue)."""


def init_app(app):
    pass

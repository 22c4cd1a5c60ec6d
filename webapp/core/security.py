"""Security headers on every response (errors are answered by webapp.core.errors), and the
client's address and scheme as the trusted proxies in front (PROXY_HOPS) saw them."""

from werkzeug.middleware.proxy_fix import ProxyFix

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "img-src 'self' data: blob:",  # previews of the user's own photos are object URLs in the page
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",  # camera: "Take a photo"
}


def add_security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app):
    app.after_request(add_security_headers)
    hops = int(app.config["PROXY_HOPS"])
    if hops > 0:  # behind nginx every client would otherwise be nginx's address, one rate limit for all
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

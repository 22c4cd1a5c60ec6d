"""What every feature of the web app shares: the one error type and its handler (`errors`),
security headers, Prometheus metrics, rate limits, admin credentials and guards (`auth`), number
formatting for the pages, URL parameters naming rows (`params`), and the gunicorn worker
(`graceful`). Imports the lifecycle and ml, never a feature package.

Kept empty: gunicorn's master imports `webapp.core.graceful`, and with it this file, so nothing
here may import Flask's app, prometheus_client or torch.
"""

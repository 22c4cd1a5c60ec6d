"""The model lifecycle, shared by the web app and the job runner, with no Flask: the admin
database (`db`), training jobs (`jobs`, their runner `jobrunner`, processes `procs`), the model
store (`versions`) and its promotion gate (`gate`), and the photos users sent (`feedback`).

Nothing here reads a request or `current_app`: callers pass a `Site` (the instance folder and the
settings), and errors carry a code that webapp.core.errors turns into an HTTP status.
"""

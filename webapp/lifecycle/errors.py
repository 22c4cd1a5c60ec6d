"""The lifecycle's refusals: a message and a stable `code` (bad_request, not_found, job_running,
...). webapp.core.errors answers them with the HTTP status it maps each code to."""


class LifecycleError(Exception):
    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.message, self.code = message, code

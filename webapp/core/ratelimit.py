"""Per-client rate limits, counted in the admin database so they hold across workers: at most
`max_setting` events of a client within the last `window_setting` seconds (both names in the
SETTINGS table). Failed admin logins and feedback photos are each counted with one.
"""

import time

from flask import current_app, request


def client_address() -> str:
    return request.remote_addr or "unknown"


class RateLimit:
    def __init__(self, table: str, max_setting: str, window_setting: str):
        self.table, self.max_setting, self.window_setting = table, max_setting, window_setting

    def wait_s(self, conn, client: str) -> int:
        """Seconds before `client` may act again (0: now); forgets events older than the window."""
        config = current_app.config
        window = float(config[self.window_setting])
        conn.execute(f"DELETE FROM {self.table} WHERE at < :before", {"before": time.time() - window})
        rows = conn.execute(f"SELECT at FROM {self.table} WHERE client = :client ORDER BY at",
                            {"client": client}).fetchall()
        if len(rows) < int(config[self.max_setting]):
            return 0
        return max(1, int(rows[0]["at"] + window - time.time()) + 1)

    def record(self, conn, client: str) -> None:
        conn.execute(f"INSERT INTO {self.table} (client, at) VALUES (:client, :at)",
                     {"client": client, "at": time.time()})

    def clear(self, conn, client: str) -> None:
        conn.execute(f"DELETE FROM {self.table} WHERE client = :client", {"client": client})


LOGIN_FAILURES = RateLimit("login_failures", "LOGIN_MAX_FAILURES", "LOGIN_WINDOW_S")
FEEDBACK_SENDS = RateLimit("feedback_sends", "FEEDBACK_MAX_SENDS", "FEEDBACK_WINDOW_S")

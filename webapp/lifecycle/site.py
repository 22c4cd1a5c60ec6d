"""Where the lifecycle works: a `Site` is an instance folder and the settings table's values
(whose DATABASE_URL names the database: unset, the instance folder's SQLite file).

The web app passes `Site.of(current_app)` (webapp.core.site); a script or a test can build one from
any instance folder and a dict. Nothing in webapp.lifecycle reads Flask's `current_app`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from webapp.lifecycle.db import database, database_url


@dataclass(frozen=True, eq=False)
class Site:
    instance: Path       # the instance folder: database, model store, jobs, feedback photos
    settings: Mapping    # name -> value, as webapp.settings.SETTINGS lists them

    @classmethod
    def of(cls, app) -> "Site":
        """The site of an app: anything with `instance_path` and `config`, as a Flask app has."""
        return cls(Path(app.instance_path), app.config)

    @property
    def database_url(self) -> str:
        return database_url(self.instance, self.settings.get("DATABASE_URL"))

    def database(self):
        """`with site.database() as conn:` one connection for a block of work, closed after."""
        return database(self.database_url)

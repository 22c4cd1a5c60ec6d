"""The admin tables of the single-host product (jobs, metrics, log lines, login failures, feedback).

An instance folder's SQLite file from before migrations existed already has them: a table that is
there is left as it is, so that file upgrades in place.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def _table(name, *columns, indexes=()):
    if name in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(name, *columns)
    for index_name, index_columns in indexes:
        op.create_index(index_name, name, index_columns)


def upgrade():
    seconds = sa.Double
    _table("jobs",
           sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
           sa.Column("status", sa.Text, nullable=False), sa.Column("params", sa.Text, nullable=False),
           sa.Column("spec", sa.Text, nullable=False), sa.Column("created", seconds, nullable=False),
           sa.Column("started", seconds), sa.Column("finished", seconds),
           sa.Column("runner_pid", sa.Integer), sa.Column("runner_start", sa.Text), sa.Column("pid", sa.Integer),
           sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
           *(sa.Column(n, sa.Integer) for n in ("epoch", "epochs", "step", "steps_per_epoch",
                                                "global_step", "total_steps")),
           *(sa.Column(n, seconds) for n in ("progress", "elapsed_s", "eta_s")),
           sa.Column("version", sa.Text), sa.Column("result", sa.Text), sa.Column("error", sa.Text))
    _table("metrics", sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
           sa.Column("job_id", sa.Integer, nullable=False), sa.Column("type", sa.Text, nullable=False),
           sa.Column("record", sa.Text, nullable=False), indexes=[("metrics_job", ["job_id", "seq"])])
    _table("log_lines", sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
           sa.Column("job_id", sa.Integer, nullable=False), sa.Column("line", sa.Text, nullable=False),
           indexes=[("log_lines_job", ["job_id", "seq"])])
    _table("login_failures", sa.Column("client", sa.Text, nullable=False), sa.Column("at", seconds, nullable=False),
           indexes=[("login_failures_client", ["client", "at"])])
    _table("feedback", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
           sa.Column("hash", sa.Text, nullable=False, unique=True), sa.Column("claimed", sa.Text, nullable=False),
           sa.Column("label", sa.Text, nullable=False), sa.Column("predicted", sa.Text),
           sa.Column("version", sa.Text), sa.Column("status", sa.Text, nullable=False, server_default="pending"),
           sa.Column("created", seconds, nullable=False), sa.Column("reviewed", seconds),
           sa.Column("sends", sa.Integer, nullable=False, server_default="1"),
           indexes=[("feedback_status", ["status", "label"])])
    _table("feedback_sends", sa.Column("client", sa.Text, nullable=False), sa.Column("at", seconds, nullable=False),
           indexes=[("feedback_sends_client", ["client", "at"])])

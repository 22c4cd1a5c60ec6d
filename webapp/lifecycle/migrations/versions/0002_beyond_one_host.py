"""Beyond one host: where a job runs and its worker's heartbeat, at most one queued or running
job enforced by the database itself (a partial unique index, for every host at once), and the
active model version as a row with a generation number.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

NOT_OVER = "status IN ('queued', 'running')"


def upgrade():
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("host", sa.Text))
        jobs.add_column(sa.Column("device", sa.Text))
        jobs.add_column(sa.Column("processes", sa.Integer))
        jobs.add_column(sa.Column("heartbeat", sa.Double))
    # Every row that is not over has the same indexed value (true), and only those rows are in the
    # index: a second one cannot be inserted or updated into that state, whichever host tries.
    op.execute(f"CREATE UNIQUE INDEX one_job_not_over ON jobs (({NOT_OVER})) WHERE {NOT_OVER}")
    op.create_table("active_model", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("version", sa.Text, nullable=False),
                    sa.Column("generation", sa.Integer, nullable=False),
                    sa.Column("changed", sa.Double, nullable=False))

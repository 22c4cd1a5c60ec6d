"""Jobs over several worker hosts (`nodes` above 1): the rendezvous endpoint of the job's first
node, and one row per node that a worker took, so every host can see which workers take part.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("rendezvous", sa.Text))
    # The primary key is what makes a node taken once: two workers racing for the same node rank
    # cannot both insert it, whichever hosts they run on.
    op.create_table("job_nodes",
                    sa.Column("job_id", sa.Integer, primary_key=True),
                    sa.Column("node_rank", sa.Integer, primary_key=True),
                    sa.Column("host", sa.Text, nullable=False), sa.Column("device", sa.Text),
                    sa.Column("processes", sa.Integer), sa.Column("joined", sa.Double, nullable=False),
                    sa.Column("heartbeat", sa.Double), sa.Column("finished", sa.Double),
                    sa.Column("returncode", sa.Integer), sa.Column("error", sa.Text))

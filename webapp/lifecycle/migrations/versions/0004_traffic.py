"""Live traffic: what users send, as counts per 10-minute bucket and served model version, added
into by every web worker of every host (webapp/lifecycle/traffic.py). Nothing about a photo is
stored but these sums.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    # One row per (bucket, version, measure): the primary key is what lets every worker add its
    # counts with one INSERT ... ON CONFLICT DO UPDATE, on SQLite and PostgreSQL alike.
    op.create_table("traffic",
                    sa.Column("bucket", sa.BigInteger, primary_key=True),
                    sa.Column("version", sa.Text, primary_key=True),
                    sa.Column("measure", sa.Text, primary_key=True),
                    sa.Column("amount", sa.Double, nullable=False))

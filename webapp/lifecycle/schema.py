"""The admin database's tables, as SQLAlchemy Core sees them (the same on SQLite and PostgreSQL).

The migrations in webapp/lifecycle/migrations create and change them; this module is what the code
reads and writes. Timestamps are seconds since the epoch in DOUBLE PRECISION: PostgreSQL's REAL has
24 bits of mantissa, a resolution of about 2 minutes at today's epoch.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

ACTIVE = ("queued", "running")  # the job states of a job that is not over

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("status", sa.Text, nullable=False),       # queued, running, succeeded, failed, cancelled
    sa.Column("params", sa.Text, nullable=False),       # JSON: what the admin asked for
    sa.Column("spec", sa.Text, nullable=False),         # JSON: command, folders, gate margin (for the runner)
    sa.Column("created", sa.Double, nullable=False), sa.Column("started", sa.Double),
    sa.Column("finished", sa.Double),
    sa.Column("runner_pid", sa.Integer), sa.Column("runner_start", sa.Text), sa.Column("pid", sa.Integer),
    sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
    *(sa.Column(name, sa.Integer) for name in ("epoch", "epochs", "step", "steps_per_epoch",
                                                 "global_step", "total_steps")),
    *(sa.Column(name, sa.Double) for name in ("progress", "elapsed_s", "eta_s")),
    sa.Column("version", sa.Text), sa.Column("result", sa.Text), sa.Column("error", sa.Text),
    # where it runs (migration 0002): the host and device of its worker, and that worker's heartbeat
    sa.Column("host", sa.Text), sa.Column("device", sa.Text), sa.Column("processes", sa.Integer),
    sa.Column("heartbeat", sa.Double),
    sa.Column("rendezvous", sa.Text),  # migration 0003: host:port of a multi-node job's first node
)

# The nodes of a job run by several workers (migration 0003): node 0 is the worker that took the
# job, node r > 0 the worker that took its r-th follower entry from the queue.
job_nodes = sa.Table(
    "job_nodes", metadata,
    sa.Column("job_id", sa.Integer, primary_key=True), sa.Column("node_rank", sa.Integer, primary_key=True),
    sa.Column("host", sa.Text, nullable=False), sa.Column("device", sa.Text), sa.Column("processes", sa.Integer),
    sa.Column("joined", sa.Double, nullable=False), sa.Column("heartbeat", sa.Double),
    sa.Column("finished", sa.Double), sa.Column("returncode", sa.Integer), sa.Column("error", sa.Text),
)

metrics = sa.Table(
    "metrics", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False), sa.Column("type", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)

log_lines = sa.Table(
    "log_lines", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False), sa.Column("line", sa.Text, nullable=False),
)

login_failures = sa.Table(
    "login_failures", metadata,
    sa.Column("client", sa.Text, nullable=False), sa.Column("at", sa.Double, nullable=False),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hash", sa.Text, nullable=False, unique=True),  # of the re-encoded photo's pixels
    sa.Column("claimed", sa.Text, nullable=False),     # what the user said it is: a class name or 'none'
    sa.Column("label", sa.Text, nullable=False),       # the label after review
    sa.Column("predicted", sa.Text), sa.Column("version", sa.Text),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),  # pending, accepted, rejected
    sa.Column("created", sa.Double, nullable=False), sa.Column("reviewed", sa.Double),
    sa.Column("sends", sa.Integer, nullable=False, server_default="1"),
)

feedback_sends = sa.Table(
    "feedback_sends", metadata,
    sa.Column("client", sa.Text, nullable=False), sa.Column("at", sa.Double, nullable=False),
)

# The version every web worker of every host serves (migration 0002): one row, id 1. `generation`
# grows by one at every change, so a worker compares one integer to know it must reload.
active_model = sa.Table(
    "active_model", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("changed", sa.Double, nullable=False),
)

# Live traffic (migration 0004; webapp/lifecycle/traffic.py): sums over the photos a model version
# answered in a 10-minute bucket. `bucket` is the bucket's start in seconds since the epoch;
# `measure` names what is summed: "photos", "answer:sure|unsure|none", "confidence_sum",
# "label:<class>", "novelty:<edges key>:<bin>". Nothing else about a photo is stored.
traffic = sa.Table(
    "traffic", metadata,
    sa.Column("bucket", sa.BigInteger, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("measure", sa.Text, primary_key=True),
    sa.Column("amount", sa.Double, nullable=False),
)

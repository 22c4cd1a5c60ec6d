"""The servers of the multi-host tests (scripts/cluster/servers.py) answer their real clients
(SQLAlchemy, redis-py, boto3), stop leaving no process behind, say why when they cannot start, and
run inside a host of scripts.cluster_net.Hosts, reached over its bridge."""

import shutil
import subprocess
import sys
import uuid

import pytest

from scripts.cluster.servers import Postgres, Redis, SeaweedS3, ServerError, availability, pid_alive
from scripts.cluster_net import Hosts, can_make_namespaces
from conftest import cluster_folder, require_cluster_server

pytestmark = pytest.mark.slow


def test_postgres_takes_a_table_through_sqlalchemy(postgres_server):
    import sqlalchemy as sa
    assert postgres_server.url.startswith("postgresql+psycopg://app@127.0.0.1:")
    engine = sa.create_engine(postgres_server.url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE IF NOT EXISTS photos (id serial PRIMARY KEY, label text)"))
            connection.execute(sa.text("INSERT INTO photos (label) VALUES ('cat'), ('ship')"))
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT label FROM photos ORDER BY id")).scalars().all()
            assert connection.execute(sa.text("SELECT current_database()")).scalar() == "app"
        assert rows[-2:] == ["cat", "ship"]
    finally:
        engine.dispose()


def test_redis_sets_and_gets(redis_server):
    import redis
    assert redis_server.url.startswith("redis://127.0.0.1:") and redis_server.url.endswith("/0")
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


def test_s3_makes_a_bucket_and_keeps_an_object(s3_server):
    import boto3
    from botocore.exceptions import ClientError
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
    assert s3_server.create_bucket("photos") == "photos"
    assert s3_server.create_bucket("photos") == "photos"  # again: already there, no error
    client.put_object(Bucket="photos", Key="v1/card.json", Body=b'{"version": "v1"}')
    assert client.get_object(Bucket="photos", Key="v1/card.json")["Body"].read() == b'{"version": "v1"}'
    names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert {"photos", s3_server.bucket} <= names  # its own bucket was made at start
    assert s3_server.url == f"s3://{s3_server.bucket}"
    assert s3_server.url_for("versions/") == f"s3://{s3_server.bucket}/versions"
    assert s3_server.env["AWS_ENDPOINT_URL"] == s3_server.endpoint
    stranger = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id="nobody",
                            aws_secret_access_key="wrong", region_name="us-east-1")
    with pytest.raises(ClientError):
        stranger.get_object(Bucket="photos", Key="v1/card.json")


@pytest.mark.parametrize("kind", ["postgres", "redis", "s3"])
def test_stop_leaves_no_process_and_start_again_keeps_the_data(kind):
    cls = require_cluster_server(kind)
    folder = cluster_folder(kind)
    try:
        server = cls(folder)
        with server:
            pids = server.pids
            assert server.process.pid in pids  # (a connection's backend may come and go)
            if kind == "postgres":
                import sqlalchemy as sa
                engine = sa.create_engine(server.url)
                with engine.begin() as connection:
                    connection.execute(sa.text("CREATE TABLE kept (n int)"))
                    connection.execute(sa.text("INSERT INTO kept VALUES (7)"))
                engine.dispose()
                assert len(pids) > 2  # the postmaster's children, in sessions of their own, are counted
        assert not [pid for pid in pids if pid_alive(pid)]
        assert server.pids == []
        server.stop()  # idempotent
        if kind == "postgres":  # same port, same data
            with server.start():
                engine = sa.create_engine(server.url)
                with engine.connect() as connection:
                    assert connection.execute(sa.text("SELECT n FROM kept")).scalar() == 7
                engine.dispose()
                pids = server.pids
            assert not [pid for pid in pids if pid_alive(pid)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_server_that_cannot_start_says_why_with_its_log(tmp_path):
    require_cluster_server("redis")
    with pytest.raises(ServerError) as failed:
        Redis(tmp_path, host="192.0.2.1", timeout=10)  # TEST-NET-1: not an address of this machine
    message = str(failed.value)
    assert "exited with code" in message and str(tmp_path / "redis.log") in message
    assert "192.0.2.1" in message.split("the end of", 1)[1]  # redis-server's own words about the bind


def test_availability_names_every_server():
    assert set(availability()) == {"postgres", "redis", "s3"}
    assert all(isinstance(why, str) for why in availability().values())


NAMESPACES, WHY_NOT = can_make_namespaces()


@pytest.mark.skipif(not NAMESPACES, reason=WHY_NOT)
def test_servers_run_inside_a_host_and_answer_over_the_bridge():
    for kind in ("postgres", "redis", "s3"):
        require_cluster_server(kind)
    folders = {kind: cluster_folder(kind + "-ns") for kind in ("postgres", "redis", "s3")}
    try:
        with Hosts("pcsrv", ["db", "client"]) as hosts:
            address = hosts.address("db")
            inside = hosts.command("db", [])
            with Postgres(folders["postgres"], host=address, prefix=inside) as db, \
                    Redis(folders["redis"], host=address, prefix=inside) as queue, \
                    SeaweedS3(folders["s3"], host=address, prefix=inside) as store:
                hosts.check_route(address)  # this process reaches them over the bridge, nowhere else
                assert db.url == f"postgresql+psycopg://app@{address}:{db.port}/app"
                # they run inside host db
                assert subprocess.run(["ip", "netns", "identify", str(db.pids[-1])], capture_output=True,
                                      text=True).stdout.strip() == hosts.namespace("db")
                token = uuid.uuid4().hex
                client_code = (
                    "import sys, boto3, psycopg, redis\n"
                    f"with psycopg.connect({db.url.replace('+psycopg', '')!r}, autocommit=True) as c:\n"
                    f"    print(c.execute('SELECT %s', ({token!r},)).fetchone()[0])\n"
                    f"r = redis.Redis.from_url({queue.url!r}); r.set('k', {token!r}); print(r.get('k').decode())\n"
                    f"s3 = boto3.client('s3', endpoint_url={store.endpoint!r}, aws_access_key_id={store.access_key!r},"
                    f" aws_secret_access_key={store.secret_key!r}, region_name='us-east-1')\n"
                    f"s3.put_object(Bucket={store.bucket!r}, Key='k', Body={token!r}.encode())\n"
                    f"print(s3.get_object(Bucket={store.bucket!r}, Key='k')['Body'].read().decode())\n")
                done = subprocess.run(hosts.command("client", [sys.executable, "-c", client_code]),
                                      capture_output=True, text=True, timeout=60)
                assert done.stdout.split() == [token] * 3, done.stderr[-2000:]
                pids = db.pids + queue.pids + store.pids
        assert not [pid for pid in pids if pid_alive(pid)]
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)

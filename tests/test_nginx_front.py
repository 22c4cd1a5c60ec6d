"""Two web hosts behind nginx with the project's configuration (deploy/nginx.conf): reloading,
stopping, restarting or SIGKILLing a host loses no prediction (scripts/bench_reload.py, which also
prints the latencies). Loopback only; skipped, saying why, where nginx is not installed."""

import pytest

from conftest import SHIPPED_MODEL
from scripts.bench_reload import make_photos, photo_file, run_through_nginx
from scripts.nginx_front import nginx_binary

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (make servers, as root)")]


def test_no_prediction_is_lost_while_hosts_reload_stop_restart_or_die():
    photo = photo_file(*make_photos(1, kinds="client")[4])
    result = run_through_nginx(str(SHIPPED_MODEL), photo, clients=16, phase_s=4)
    names = [row["phase"] for row in result["phases"]]
    assert names == ["steady", "HUP host A", "HUP host B", "TERM host B", "host B started again", "SIGKILL host A"]
    for row in result["phases"]:
        # a string, not a tuple: pytest cuts a long repr in the middle, and the phase is what says why
        assert row["requests"] > 20 and row["failures"] == 0, (
            f"phase {row['phase']!r}: {row['failures']} of {row['requests']} failed {row['failure_samples'][:3]}; "
            f"phases {[(r['phase'], r['requests'], r['failures']) for r in result['phases']]}; "
            f"nginx error log: {result['nginx_errors'][-1500:]}")

"""A lock left by a killed run is removed only when it is provably stale: taken by a run of this host (so psutil
can see whether that run lives) and no snakemake process of this host works in the directory. A lock of a run on
another host (a shared filesystem on a cluster) is never removed: Snakemake's own `--unlock` is for that."""
import socket
import subprocess
import sys

from dery.checks import LOCK_HOST, claim_lock_host, clear_stale_lock


def locked(tmp_path, host: str | None):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x\n")
    if host is not None:
        (tmp_path / ".snakemake" / LOCK_HOST).write_text(host + "\n")
    return locks


def test_a_killed_run_of_this_host_leaves_a_lock_that_is_removed(tmp_path):
    locks = locked(tmp_path, socket.gethostname())
    assert clear_stale_lock(tmp_path) is True
    assert list(locks.iterdir()) == []


def test_a_lock_taken_on_another_host_is_kept(tmp_path):
    locks = locked(tmp_path, "node17.cluster")
    assert clear_stale_lock(tmp_path) is False
    assert len(list(locks.iterdir())) == 1


def test_a_lock_of_unknown_origin_is_kept(tmp_path):
    locks = locked(tmp_path, None)  # left by a version of dery that did not record its host, or by plain Snakemake
    assert clear_stale_lock(tmp_path) is False
    assert len(list(locks.iterdir())) == 1


def test_a_lock_of_a_live_run_of_this_host_is_kept(tmp_path):
    locks = locked(tmp_path, socket.gethostname())
    # a process whose command line says snakemake and whose working directory is this one
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "snakemake"], cwd=tmp_path)
    try:
        assert clear_stale_lock(tmp_path) is False
    finally:
        live.kill()
        live.wait()
    assert len(list(locks.iterdir())) == 1


def test_the_run_taking_the_lock_records_its_host_but_never_over_a_held_lock(tmp_path):
    claim_lock_host(tmp_path)
    assert (tmp_path / ".snakemake" / LOCK_HOST).read_text().strip() == socket.gethostname()
    (tmp_path / ".snakemake" / LOCK_HOST).write_text("node17.cluster\n")
    (tmp_path / ".snakemake" / "locks").mkdir()
    (tmp_path / ".snakemake" / "locks" / "0.output.lock").write_text("x\n")
    claim_lock_host(tmp_path)  # node17's run holds the lock: this run will be refused, and must not rename it
    assert (tmp_path / ".snakemake" / LOCK_HOST).read_text().strip() == "node17.cluster"

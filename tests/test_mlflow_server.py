"""MLflow as the result store: a real `mlflow server` on 127.0.0.1 over HTTP, and the SQLite default under
parallel Snakemake jobs. Runs are named and tagged deterministically and never duplicated."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import clone_project, project_env

from dery import cli
from dery import tracking as T

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_records(work: Path) -> list[dict]:
    """The records the stages wrote (what `track` ingests), skipped candidates excluded."""
    recs = [json.loads(f.read_text()) for f in (work / "results").rglob("*.metrics.json")]
    return [r for r in recs if not r.get("skip")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with its own SQLite store, as a team would run it; stopped after the module."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with open(home / "server.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1", "--backend-store-uri",
                                 f"sqlite:///{home}/server.db", "--default-artifact-root",
                                 (home / "artifacts").as_uri()],
                                stdout=log, stderr=subprocess.STDOUT, cwd=home)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_snakemake(work: Path, uri: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in project_env(work).items() if k != T.URI_ENV}
    if uri is not None:
        env[T.URI_ENV] = uri
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "params/smoke.yaml",
                           *args], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def served(smoke_project, server, tmp_path_factory):
    """The finished smoke run pointed at the server: Snakemake re-runs exactly the jobs that talk to
    MLflow (the ingest, the tables read back, the figures drawn from them), with 2 parallel jobs."""
    work = clone_project(smoke_project, tmp_path_factory.mktemp("served") / "project")
    # the copy sits at another path: mark its finished outputs current first (as made, with the local
    # store), as `dery restore` does after a clone
    run_snakemake(work, None, "--touch")
    proc = run_snakemake(work, server)
    return work, server, proc


def test_the_pipeline_logs_every_record_to_the_server_and_reads_the_tables_back(served):
    work, uri, proc = served
    assert "rule track:" in proc.stdout + proc.stderr, "pointing at a new store re-ran the ingest"
    runs = T.runs(uri, "smoke")
    recs = metric_records(work)
    assert sorted(runs["tags.dery.key"]) == sorted(r["key"] for r in recs), "one run per record, no more"
    assert {"pretrain", "partition", "reassembly", "proxy", "finetune"} <= set(runs["tags.stage"])
    ingested = json.loads((work / "results" / "mlflow" / "ingested.json").read_text())
    assert ingested["tracking_uri"] == uri and ingested["added"] == len(recs)
    assert f"Read back from MLflow ({uri})" in (work / "results" / "summary.md").read_text()


def test_the_server_holds_the_same_table_as_the_local_store(served, smoke_project, tmp_path):
    _, uri, _ = served
    over_http = cli.results(None, "smoke", uri, str(tmp_path / "http.csv"))
    local = cli.results(None, "smoke", T.sqlite_uri(smoke_project / "results" / "mlflow.db"), str(tmp_path / "db.csv"))
    assert (tmp_path / "http.csv").read_text() == (tmp_path / "db.csv").read_text()
    body = lambda md: md.split("\n", 3)[3]  # noqa: E731  (all but the title and the store's URI)
    assert body(over_http) == body(local)


def test_runs_are_named_and_tagged_from_their_job(served):
    _, uri, _ = served
    runs = T.runs(uri, "smoke").set_index("tags.dery.key")
    ft = runs.loc["finetune/tiny/rank0/FZ"]
    assert ft["tags.mlflow.runName"] == "finetune-tiny-rank0-FZ"
    assert (ft["tags.stage"], ft["tags.budget"], ft["tags.protocol"], ft["tags.kind"]) == ("finetune", "tiny", "FZ",
                                                                                          "assembly")
    assert runs.loc["pretrain/vit_A", "tags.model"] == "vit_A"
    assert runs["tags.dery.params_hash"].nunique() == 1 and len(runs["tags.dery.params_hash"].iloc[0]) == 12
    assert runs["tags.dery.git_commit"].notna().all()
    assert (runs["tags.mlflow.runName"] == [k.replace("/", "-") for k in runs.index]).all()


def test_rerunning_the_ingest_adds_no_run(served):
    work, uri, _ = served
    before = len(T.runs(uri, "smoke"))
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name("smoke")
    all_before = len(MlflowClient(uri).search_runs([exp.experiment_id], max_results=50000))
    run_snakemake(work, uri, "--forcerun", "track")
    assert json.loads((work / "results" / "mlflow" / "ingested.json").read_text())["added"] == 0
    assert len(MlflowClient(uri).search_runs([exp.experiment_id], max_results=50000)) == all_before
    assert len(T.runs(uri, "smoke")) == before


def test_parallel_jobs_left_the_sqlite_store_whole(smoke_project):
    """The session's smoke run ran 2 jobs at a time; only `track` wrote to SQLite, once, all of it."""
    logs = "".join(f.read_text(errors="replace") for f in (smoke_project / "results" / "logs").rglob("*.log"))
    assert "database is locked" not in logs and "OperationalError" not in logs
    runs = T.runs(T.sqlite_uri(smoke_project / "results" / "mlflow.db"), "smoke")
    assert sorted(runs["tags.dery.key"]) == sorted(r["key"] for r in metric_records(smoke_project))
    assert not (smoke_project / "mlruns").exists(), "no stray ./mlruns: artifacts stay under results/"


def test_dery_results_reads_the_server(served, tmp_path):
    _, uri, _ = served
    proc = subprocess.run([str(Path(sys.executable).parent / "dery"), "results", "--experiment", "smoke",
                           "--csv", str(tmp_path / "t.csv")], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, T.URI_ENV: uri})
    assert proc.returncode == 0, proc.stderr
    assert "## Budget `tiny`" in proc.stdout and f"({uri})" in proc.stdout


class FailingServer:
    """A server that answers its /health probe but fails every API call (503): it goes down between the start
    of the run (checked before any job) and the ingest at its end."""

    def __enter__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                self.send_response(200 if self.path.startswith("/health") else 503)
                self.end_headers()
                self.wfile.write(b"OK" if self.path.startswith("/health") else b"unavailable")

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()


def test_a_server_that_fails_at_the_ingest_loses_no_result_and_the_next_run_only_logs(smoke_project, tmp_path):
    """The server fails when the pipeline ends: the ingest stops saying nothing is lost; every fine-tuned
    model and metrics file stays; once the server is back, the re-run trains nothing."""
    work = clone_project(smoke_project, tmp_path / "project")
    cfg = (work / "params" / "smoke.yaml").read_text() + "\ntracking: {attempts: 2, retry_wait_s: 0.1}\n"
    (work / "params" / "flaky.yaml").write_text(cfg)
    finetuned = {f: f.stat().st_mtime_ns for f in (work / "results" / "finetune").rglob("*") if f.is_file()}
    with FailingServer() as uri:
        # MLflow's own client retries a 503 with a doubling backoff for minutes before dery's retries see it
        env = {**project_env(work), T.URI_ENV: uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
        down = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "params/flaky.yaml"],
                              cwd=work, env=env, capture_output=True, text=True)
    assert down.returncode != 0
    log = (work / "results" / "logs" / "track.log").read_text()
    assert "Nothing is lost" in log and "metrics.json" in log
    assert {f: f.stat().st_mtime_ns for f in finetuned} == finetuned, "no fine-tuning result was touched"
    back = run_snakemake_with(work, "params/flaky.yaml")
    out = back.stdout + back.stderr
    assert "rule track:" in out and not re.search(r"rule (finetune_\w+|pretrain_zoo|extract_features):", out)
    assert (work / "results" / "summary.md").exists()


def test_a_server_that_is_down_at_the_start_stops_the_run_before_any_job(smoke_project, tmp_path):
    work = clone_project(smoke_project, tmp_path / "project")
    before = {f: f.stat().st_mtime_ns for f in (work / "results").rglob("*") if f.is_file()}
    env = {**project_env(work), T.URI_ENV: f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "params/smoke.yaml"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("$DERY_TRACKING_URI: the MLflow server at http://127.0.0.1:" in proc.stderr
            and "did not answer" in proc.stderr)
    assert {f: f.stat().st_mtime_ns for f in (work / "results").rglob("*") if f.is_file()} == before


def run_snakemake_with(work: Path, params: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in project_env(work).items() if k != T.URI_ENV}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", params],
                          cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc

"""Logging to MLflow never costs a result: a locked SQLite store is waited for, an unreachable server fails
fast with the fix, and a run cut off mid-logging is neither shown nor taken as already logged."""
import socket
import sqlite3
import threading
import time

import pytest

from dery import tracking as T

EXPERIMENT = "tracking-test"


def records(acc: float = 0.8) -> list[dict]:
    return [T.record("finetune/small/rank0/FT", {"stage": "finetune", "budget": "small"}, {"lr": 0.001},
                     {"test_acc": acc}, {"val_acc": [0.5, 0.7]}),
            T.record("zoo/resnet18_A", {"stage": "pretrain", "model": "resnet18_A"}, {"arch": "resnet18"},
                     {"val_acc": 0.9})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store(tmp_path):
    uri = T.sqlite_uri(tmp_path / "mlflow.db")
    T.ingest(records(), uri, EXPERIMENT)  # creates the schema and the experiment
    return uri, tmp_path / "mlflow.db"


def test_a_store_locked_by_another_writer_is_waited_for(store):
    uri, db = store
    holder = sqlite3.connect(db, timeout=0, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: every MLflow write now fails "database is locked"
    release = threading.Timer(6.0, holder.rollback)
    release.start()
    try:
        stats = T.ingest(records(acc=0.85), uri, EXPERIMENT, attempts=6, wait_s=1.0)
    finally:
        release.join()
        holder.close()
    assert stats == {"added": 1, "skipped": 1}
    df = T.runs(uri, EXPERIMENT)
    assert df.set_index("tags.dery.key").loc["finetune/small/rank0/FT", "metrics.test_acc"] == pytest.approx(0.85)


def test_a_store_locked_for_good_fails_with_a_message_that_nothing_is_lost(store):
    uri, db = store
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(T.StoreUnavailable) as err:
            T.ingest(records(acc=0.5), uri, EXPERIMENT, attempts=2, wait_s=0.1)
    finally:
        holder.rollback()
        holder.close()
    msg = str(err.value)
    assert "database is locked" in msg and "Nothing is lost" in msg and "metrics.json" in msg
    assert T.runs(uri, EXPERIMENT).set_index("tags.dery.key").loc["finetune/small/rank0/FT", "metrics.test_acc"] == 0.8


def test_an_unreachable_server_fails_fast_naming_the_fix():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    t = time.monotonic()
    with pytest.raises(T.StoreUnavailable) as err:
        T.ingest(records(), uri, EXPERIMENT, attempts=2, wait_s=0.1)
    assert time.monotonic() - t < 30, "MLflow's own client would retry for minutes"
    msg = str(err.value)
    assert uri in msg and "did not answer" in msg and "DERY_TRACKING_URI" in msg and "re-run" in msg
    with pytest.raises(T.StoreUnavailable, match="did not answer"):
        T.runs(uri, EXPERIMENT)  # `dery results` too


def test_a_run_cut_off_mid_logging_is_completed_by_the_next_ingest(store):
    uri, _ = store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    rec = records(acc=0.9)[0]
    # the state a killed ingest leaves: a run with the record's key and hash, never terminated, no metrics
    client.create_run(exp, tags={"dery.key": rec["key"], "dery.hash": T.content_hash(rec)})
    shown = T.runs(uri, EXPERIMENT).set_index("tags.dery.key")
    assert shown.loc[rec["key"], "metrics.test_acc"] == 0.8, "an unfinished run is not a result"
    assert T.ingest([rec], uri, EXPERIMENT) == {"added": 1, "skipped": 0}
    assert T.runs(uri, EXPERIMENT).set_index("tags.dery.key").loc[rec["key"], "metrics.test_acc"] == 0.9
    assert T.ingest([rec], uri, EXPERIMENT) == {"added": 0, "skipped": 1}


# ---------------------------------------------------------------- MLflow as its users read it (issue 15)
JOB_END = 1_700_000_000.25  # when the fake jobs finished (the record files' mtime), seconds
BENCH = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
SPLITS = {"data_dir": "/data/fashion-mnist", "target_train": [5, 3, 9, 1, 7, 2], "target_val": [4, 8],
          "source_A_train": [10, 11, 13], "source_A_val": [12], "source_A_classes": [0, 1]}
FINGERPRINT = {"stages": {"zoo": "0123abcd"}, "files": {},
               "environment": {"torch": "2.9.0", "numpy": "2.1.0", "timm": "1.0", "cpu_model": "Test CPU",
                               "cpu_avx512f": False, "torch_cpu_capability": "AVX2", "requested": {"mode": "strict"},
                               "env": {"OMP_NUM_THREADS": "1"}}}


def write_job(root, metrics: str, bench: str | None, rec: dict, seconds: float = 120.5, end: float = JOB_END):
    """A record file as a stage leaves it, and the benchmark TSV Snakemake writes for its job."""
    import json
    import os

    f = root / metrics
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(rec))
    os.utime(f, (end, end))
    if bench:
        b = root / bench
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_text(BENCH + f"{seconds}\t0:02:00\t812.5\t2048.0\t700.1\t710.2\t1.5\t0.25\t93.1\t111.9\n")
    return str(f)


@pytest.fixture
def project(tmp_path):
    """Three finished jobs (fine-tuning with epoch curves, pretraining, partition) and what `track` reads."""
    import json

    ft = T.record("finetune/small/rank0/FT", {"stage": "finetune", "budget": "small"}, {"lr": 0.001},
                  {"test_acc": 0.8}, {"epoch_val_acc": [0.5, 0.6, 0.7], "epoch_train_loss": [2.0, 1.0, 0.5]})
    pre = T.record("pretrain/resnet18_A", {"stage": "pretrain", "model": "resnet18_A", "source": "A"},
                   {"arch": "resnet18"}, {"val_acc": 0.9})
    part = T.record("partition", {"stage": "partition"}, {"k": 3}, {"objective": 1.5})
    files = [write_job(tmp_path, "results/finetune/small/rank0_FT.metrics.json",
                       "results/benchmarks/finetune/small/rank0_FT.tsv", ft),
             write_job(tmp_path, "results/zoo/resnet18_A.metrics.json",
                       "results/benchmarks/pretrain_zoo/resnet18_A.tsv", pre, seconds=30.0),
             write_job(tmp_path, "results/partition/equivalence_sets.metrics.json", "results/benchmarks/partition.tsv",
                       part, seconds=2.0)]
    (tmp_path / "results/data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "results/data/splits.json").write_text(json.dumps(SPLITS))
    (tmp_path / "results/fingerprint.json").write_text(json.dumps(FINGERPRINT))
    uri = T.sqlite_uri(tmp_path / "mlflow.db")

    def track():
        from dery.stages.summary import track as run_track

        run_track(files, uri, EXPERIMENT, "abc123abc123", str(tmp_path / "ingested.json"), 2, 0.1,
                  str(tmp_path / "results/fingerprint.json"), T.benchmark_files(files),
                  str(tmp_path / "results/data/splits.json"), test_images=5, probe_images=4)
        return json.loads((tmp_path / "ingested.json").read_text())

    return track, uri, files


def logged_runs(uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return {r.data.tags["dery.key"]: r for r in client.search_runs([exp], max_results=1000)}


def test_a_record_is_logged_with_its_jobs_real_start_and_end_time(project):
    track, uri, _ = project
    assert track()["added"] == 3
    from mlflow.tracking import MlflowClient

    run = logged_runs(uri)["finetune/small/rank0/FT"]
    end = int(JOB_END * 1000)
    assert (run.info.start_time, run.info.end_time) == (end - 120_500, end), "the job's times, not the ingest's"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "test_acc")
    assert [(m.value, m.timestamp) for m in history] == [(0.8, end)]
    assert logged_runs(uri)["partition"].info.start_time == end - 2_000


def test_per_epoch_curves_keep_their_steps_spread_over_the_job(project):
    track, uri, _ = project
    track()
    from mlflow.tracking import MlflowClient

    run = logged_runs(uri)["finetune/small/rank0/FT"]
    history = sorted(MlflowClient(uri).get_metric_history(run.info.run_id, "epoch_val_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    times = [m.timestamp for m in history]
    assert run.info.start_time < times[0] < times[1] < times[2] == run.info.end_time


def test_runs_carry_mlflows_standard_tags_and_the_ones_dery_reads(project):
    track, uri, _ = project
    track()
    tags = logged_runs(uri)["finetune/small/rank0/FT"].data.tags
    commit = T.git_commit(short=False)
    assert tags["mlflow.source.git.commit"] == commit and (commit == "unknown" or len(commit) == 40)
    assert tags["dery.git_commit"] == T.git_commit(), "kept: claims.py and tests read the short twin"
    assert tags["mlflow.source.name"] == "workflow/rules/finetune.smk:finetune_assembly"
    assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.runName"] == "finetune-small-rank0-FT"
    assert tags["dery.key"] == "finetune/small/rank0/FT" and tags["dery.params_hash"] == "abc123abc123"
    assert tags["dery.fingerprint.zoo"] == "0123abcd" and tags["dery.cpu"] == "Test CPU"
    assert (tags["dery.env.torch"], tags["dery.env.env.OMP_NUM_THREADS"]) == ("2.9.0", "1"), "the environment"
    assert (logged_runs(uri)["pretrain/resnet18_A"].data.tags["mlflow.source.name"]
            == "workflow/rules/zoo.smk:pretrain_zoo")


def test_each_run_logs_the_datasets_its_job_used_with_their_digests(project):
    track, uri, _ = project
    track()
    runs = logged_runs(uri)

    def inputs(key):
        return {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"],
                                 d.dataset.source) for d in runs[key].inputs.dataset_inputs}

    ft = inputs("finetune/small/rank0/FT")
    assert {k: v[1] for k, v in ft.items()} == {"target_train": "training", "target_val": "validation",
                                               "target_test": "testing"}
    assert ft["target_train"][0] == T.Split("target_train", SPLITS["target_train"], "", "").digest
    assert ft["target_test"][0] == T.Split("target_test", [0, 1, 2, 3, 4], "", "").digest, "first test_images images"
    assert "/data/fashion-mnist" in ft["target_train"][2]
    assert len({v[0] for v in ft.values()}) == 3, "each split its own digest"
    assert set(inputs("pretrain/resnet18_A")) == {"source_A_train", "source_A_val"}
    assert inputs("partition")["probe"][0] == T.Split("probe", SPLITS["target_train"][:4], "", "").digest


def test_the_jobs_benchmark_figures_are_metrics_of_its_run(project):
    track, uri, _ = project
    track()
    metrics = logged_runs(uri)["finetune/small/rank0/FT"].data.metrics
    assert metrics["job.seconds"] == 120.5 and metrics["job.max_rss_mb"] == 812.5
    assert metrics["job.cpu_seconds"] == 111.9 and metrics["job.io_in_mb"] == 1.5
    assert logged_runs(uri)["pretrain/resnet18_A"].data.metrics["job.seconds"] == 30.0


def test_reingesting_adds_no_run_even_after_the_job_reran_with_the_same_result(project):
    import os

    from mlflow.tracking import MlflowClient

    track, uri, files = project
    assert track()["added"] == 3
    assert (track()["added"], track()["skipped"]) == (0, 3)
    os.utime(files[0], (JOB_END + 3600, JOB_END + 3600))  # the same record written again an hour later
    assert track()["added"] == 0, "the hash is of the record alone, not of its job's times"
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])) == 3


def test_a_run_logged_by_the_older_format_is_logged_once_more_and_then_shown(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = T.sqlite_uri(tmp_path / "mlflow.db")
    rec = records()[1]
    T.ingest([], uri, EXPERIMENT)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    # how the previous format logged: started at the ingest, no format tag, timestamps 0
    old = client.create_run(exp, tags={"dery.key": rec["key"], "dery.hash": T.content_hash(rec)}).info.run_id
    client.set_terminated(old)
    # the job ran long before that ingest; its run must still count as the latest logged
    job = T.Job(start_ms=1_000_000, end_ms=2_000_000)
    assert T.ingest([rec], uri, EXPERIMENT, jobs={rec["key"]: job}) == {"added": 1, "skipped": 0}
    shown = T.runs(uri, EXPERIMENT).set_index("tags.dery.key").loc[rec["key"]]
    assert shown["run_id"] != old and shown["tags.dery.log_format"] == T.LOG_FORMAT
    assert T.ingest([rec], uri, EXPERIMENT, jobs={rec["key"]: job}) == {"added": 0, "skipped": 1}


def test_log_batch_splits_a_record_larger_than_one_request(tmp_path):
    """MlflowClient.log_batch chunks by MLflow's request limits (1000 metrics, 100 params): dery sends it all."""
    uri = T.sqlite_uri(tmp_path / "mlflow.db")
    rec = T.record("big", {"stage": "x"}, {f"p{i}": i for i in range(250)}, {f"m{i}": i for i in range(1200)},
                   {"curve": [float(i) for i in range(1500)]})
    T.ingest([rec], uri, EXPERIMENT)
    from mlflow.tracking import MlflowClient

    run = logged_runs(uri)["big"]
    assert len(run.data.params) == 250 and len(run.data.metrics) == 1201
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "curve")) == 1500


def test_every_ingested_record_file_maps_to_its_rules_benchmark():
    """dery.tracking.JOBS against workflow/rules/*.smk: each rule's `metrics=` output and its `benchmark:`."""
    import re
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    sample = {"model": "resnet18_A", "budget": "small", "rank": "3", "protocol": "FZ", "seed": "1", "slot": "2",
              "arm": "randcuts0", "stitch": "trained"}

    def fill(p: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: sample[m.group(1)], p)

    seen = set()
    for smk in ("zoo.smk", "partition.smk", "reassembly.smk", "finetune.smk", "claims.smk", "bench.smk"):
        for block in re.split(r"^rule ", (rules / smk).read_text(), flags=re.MULTILINE)[1:]:
            name = block.split(":", 1)[0].strip()
            out = re.search(r'metrics="([^"]+\.metrics\.json)"', block)
            if not out:
                continue
            bench = re.search(r'benchmark:\s*\n\s*"([^"]+)"', block).group(1)
            assert T.job_rule(fill(out.group(1))) == (smk, name, fill(bench)), name
            assert T.job_rule("/abs/" + fill(out.group(1)))[2] == "/abs/" + fill(bench)
            seen.add(name)
    assert seen == {r for _, _, r, _ in T.JOBS}

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

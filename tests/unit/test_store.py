import sqlite3
from pathlib import Path

import pytest

from bot.adapters.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "opsbot.db")


def open_(store: Store, key: str = "g1") -> tuple[int, str]:
    inc, how = store.open_or_join(key, title="502 on web01", labels={"host": "web01"},
                                  runbook="nginx-502", hosts=["web01"], notes=[], actor="test")
    return inc.id, how


def test_one_group_one_incident_and_reopen(store: Store) -> None:
    assert open_(store) == (1, "opened")
    assert open_(store) == (1, "joined")
    store.update_incident(1, status="resolved", phase="resolved")
    assert open_(store) == (1, "reopened")
    assert store.get_incident(1).status == "open"
    assert open_(store, "g2") == (2, "opened")


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = Store(tmp_path / "s.db")
    open_(first)
    first.create_approval(incident_id=1, run_id=1, runbook="nginx-502", step_id="start",
                          host="web01", params={}, digest="d", display="x",
                          requested_by="alertmanager", ttl=60)
    first.close()
    again = Store(tmp_path / "s.db")
    assert again.open_incident_for_host("web01").ref == "INC-1"
    assert len(again.pending_approvals()) == 1


def test_first_decision_wins(store: Store) -> None:
    open_(store)
    row = store.create_approval(incident_id=1, run_id=1, runbook="r", step_id="s", host="h",
                                params={}, digest="d", display="c", requested_by="u", ttl=60)
    assert store.decide(row["token"], "approved", "U1") is True
    assert store.decide(row["token"], "rejected", "U2") is False
    assert store.get_approval(row["token"])["decided_by"] == "U1"


def _audit_db(tmp_path: Path) -> tuple[Store, Path]:
    path = tmp_path / "a.db"
    store = Store(path)
    open_(store)
    for i in range(5):
        store.audit("test.event", "tester", 1, n=i)
    assert store.verify_audit().ok
    return store, path


@pytest.mark.parametrize("tamper", [
    "UPDATE audit SET detail = '{\"n\":99}' WHERE seq = 3",
    "DELETE FROM audit WHERE seq = 3",
    "UPDATE audit SET seq = seq + 100 WHERE seq = 3",
    "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
    "INSERT INTO audit (seq, ts, actor, action, incident_id, detail, prev_hash, hash) "
    "SELECT 100, ts, actor, action, incident_id, detail, hash, hash FROM audit WHERE seq = 6",
])
def test_any_tampering_is_detected(tmp_path: Path, tamper: str) -> None:
    store, path = _audit_db(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(tamper)
    conn.commit()
    report = store.verify_audit()
    assert not report.ok and report.bad_seq is not None
    assert "ALTERED at record" in report.line()


def test_swapping_two_records_is_detected(tmp_path: Path) -> None:
    store, path = _audit_db(tmp_path)
    conn = sqlite3.connect(path)
    a, b = (conn.execute("SELECT ts, actor, action, incident_id, detail FROM audit WHERE seq=?",
                         (s,)).fetchone() for s in (3, 4))
    for seq, row in ((3, b), (4, a)):
        conn.execute("UPDATE audit SET ts=?, actor=?, action=?, incident_id=?, detail=? "
                     "WHERE seq=?", (*row, seq))
    conn.commit()
    assert not store.verify_audit().ok


def test_prune_keeps_the_rest_verifiable(tmp_path: Path) -> None:
    store, _ = _audit_db(tmp_path)
    last_ts = list(store.audit_records())[-1]["ts"]
    store.audit("later", "tester", 1)
    assert store.prune_audit(last_ts + "Z") > 0
    assert store.verify_audit().ok
    store.audit("after.prune", "tester", 1)
    assert store.verify_audit().ok


def test_keyed_chain_needs_the_key(tmp_path: Path) -> None:
    keyed = Store(tmp_path / "k.db", audit_key="s3cret")
    keyed.audit("x", "y")
    assert keyed.verify_audit().ok
    assert not Store(tmp_path / "k.db", audit_key="wrong").verify_audit().ok

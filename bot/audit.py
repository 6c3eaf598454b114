"""The audit chain: each record's hash covers its content and the previous record's hash.

Any edit, deletion, insertion or reordering breaks the chain. With OPSBOT_AUDIT_KEY set the
hash is an HMAC, so records cannot be recomputed without the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.models import canonical_json

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "actor", "action", "incident_id", "detail", "prev_hash")


def record_hash(record: Mapping[str, Any], key: str | None = None) -> str:
    body = canonical_json([record[f] for f in FIELDS]).encode()
    if key:
        return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    bad_seq: int | None = None
    reason: str = ""

    def line(self) -> str:
        if self.ok:
            return f"audit log OK: {self.checked} records, chain intact"
        return f"audit log ALTERED at record {self.bad_seq}: {self.reason}"


def verify_chain(records: Iterable[Mapping[str, Any]], *, anchor_seq: int, anchor_hash: str,
                 head_seq: int | None, head_hash: str | None, key: str | None) -> VerifyReport:
    """Walk records in seq order from the anchor (the last pruned record, or the genesis)."""
    expected_seq, prev = anchor_seq + 1, anchor_hash
    checked = 0
    for rec in records:
        seq = rec["seq"]
        if seq != expected_seq:
            missing = "missing" if seq > expected_seq else "out of order"
            return VerifyReport(False, checked, expected_seq,
                                f"record {expected_seq} is {missing} (found {seq})")
        if rec["prev_hash"] != prev:
            return VerifyReport(False, checked, seq, "does not link to the record before it")
        if record_hash(rec, key) != rec["hash"]:
            return VerifyReport(False, checked, seq, "content does not match its hash")
        prev, expected_seq, checked = rec["hash"], seq + 1, checked + 1
    if head_seq is not None and (expected_seq - 1 != head_seq or prev != head_hash):
        bad = expected_seq if expected_seq - 1 < head_seq else head_seq
        return VerifyReport(False, checked, bad,
                            f"chain ends at {expected_seq - 1} but the head says {head_seq}")
    return VerifyReport(True, checked)

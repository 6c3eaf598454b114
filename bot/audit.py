"""The audit chain: each record's hash covers its content and the previous record's hash.

Any edit, deletion, insertion or reordering inside the chain breaks it. With OPSBOT_AUDIT_KEY
set, every hash is an HMAC, and so are the two marks that bound the chain: the head (the newest
record) and the anchor (the last record pruned away). Nobody without the key can then recompute
records, move the head back after deleting the newest records, or move the anchor forward after
deleting the oldest. Without a key the chain only proves that nobody edited it without also
rewriting everything after the edit: see docs/audit.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.models import canonical_json

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "actor", "action", "incident_id", "detail", "prev_hash")
PRUNED = "audit.pruned"


def record_hash(record: Mapping[str, Any], key: str | None = None) -> str:
    body = canonical_json([record[f] for f in FIELDS]).encode()
    if key:
        return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Mark:
    """The head or the anchor of the chain: a record's seq and hash, sealed with the key."""

    seq: int
    hash: str
    seal: str | None = None  # HMAC of (which mark, seq, hash); None without a key

    @staticmethod
    def sealed(which: str, seq: int, hash_: str, key: str | None) -> Mark:
        return Mark(seq, hash_, _seal(which, seq, hash_, key) if key else None)

    def to_meta(self) -> str:
        return json.dumps([self.seq, self.hash, *([self.seal] if self.seal else [])])

    @staticmethod
    def from_meta(text: str | None) -> Mark | None:
        if text is None:
            return None
        value = json.loads(text)
        return Mark(int(value[0]), str(value[1]), str(value[2]) if len(value) > 2 else None)

    def authentic(self, which: str, key: str) -> bool:
        return self.seal is not None and hmac.compare_digest(
            self.seal, _seal(which, self.seq, self.hash, key))


def _seal(which: str, seq: int, hash_: str, key: str) -> str:
    body = canonical_json([f"audit_{which}", seq, hash_]).encode()
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    bad_seq: int | None = None
    reason: str = ""
    keyed: bool = False
    head: Mark | None = None

    def line(self) -> str:
        if not self.ok:
            return f"audit log ALTERED at record {self.bad_seq}: {self.reason}"
        head = f"; head {self.head.seq} {self.head.hash[:16]}" if self.head else ""
        if self.keyed:
            return (f"audit log OK: {self.checked} records, chain, head and anchor authenticated "
                    f"with OPSBOT_AUDIT_KEY{head}")
        return (f"audit log OK: {self.checked} records, chain intact{head} (no OPSBOT_AUDIT_KEY:"
                " this cannot prove that nobody rewrote the log, or cut records off its end, "
                "and recomputed the hashes)")


def verify_chain(records: Iterable[Mapping[str, Any]], *, anchor: Mark | None,
                 head: Mark | None, key: str | None) -> VerifyReport:
    """Walk records in seq order from the anchor (the last pruned record, or the genesis)."""

    def bad(seq: int | None, reason: str, checked: int) -> VerifyReport:
        return VerifyReport(False, checked, seq, reason, keyed=bool(key), head=head)

    if key and anchor is not None and not anchor.authentic("anchor", key):
        return bad(anchor.seq, "the anchor (where pruning stopped) is not authenticated by "
                               "OPSBOT_AUDIT_KEY: the oldest records may have been cut off", 0)
    if key and head is not None and not head.authentic("head", key):
        return bad(head.seq, "the head (the newest record) is not authenticated by "
                             "OPSBOT_AUDIT_KEY: the newest records may have been cut off", 0)
    anchor_seq, prev = (anchor.seq, anchor.hash) if anchor else (0, GENESIS)
    expected_seq, checked, prune_seen = anchor_seq + 1, 0, anchor is None
    at_head = prev if head is not None and head.seq == anchor_seq else None
    for rec in records:
        seq = rec["seq"]
        if seq != expected_seq:
            missing = "missing" if seq > expected_seq else "out of order"
            return bad(expected_seq, f"record {expected_seq} is {missing} (found {seq})", checked)
        if rec["prev_hash"] != prev:
            return bad(seq, "does not link to the record before it", checked)
        if record_hash(rec, key) != rec["hash"]:
            return bad(seq, "content does not match its hash", checked)
        if not prune_seen and rec["action"] == PRUNED and anchor is not None:
            detail = json.loads(rec["detail"]) if isinstance(rec["detail"], str) else rec["detail"]
            prune_seen = (detail.get("through_seq") == anchor.seq
                          and detail.get("anchor_hash") == anchor.hash)
        prev, expected_seq, checked = rec["hash"], seq + 1, checked + 1
        if head is not None and seq == head.seq:
            at_head = prev
    last = expected_seq - 1
    if head is None:
        if checked and key:
            return bad(last, "the head (the newest record) is missing", checked)
    elif last < head.seq or at_head != head.hash:
        # records after the head (appended by a serving bot once the head was read, each
        # linked and hashed like the others) are fine; a chain that ends before the head, or
        # passes its seq with another hash, is not
        at = expected_seq if last < head.seq else head.seq
        return bad(at, f"chain ends at {last} but the head says {head.seq}", checked)
    if not prune_seen:
        return bad(anchor_seq + 1, f"no {PRUNED} record vouches for the anchor at "
                                   f"{anchor_seq}: the oldest records may have been cut off",
                   checked)
    return VerifyReport(True, checked, keyed=bool(key), head=head)

"""Past incidents that look like this one: the fallback when no rule names a cause.

A library is the training part of the evidence corpus (real incidents from public threads and the
lab captures), each case reduced to the words of its output lines and the cause its source
established. When the rules name nothing, the incidents whose words are closest to this
evidence's (TF-IDF cosine) vote for their causes, weighted by closeness; when the closest is close
enough, the cause with the most votes becomes a candidate (its share of the votes sets how sure),
with the lines that carry the likeness quoted verbatim and the past incidents named, so the reader
can compare before acting. Chosen by leave-one-collector-out on the training part (see
docs/diagnosis.md): abstaining whenever no cause held half of the votes was almost always wrong,
since the cause of an incident the rules are silent on is rarely `unknown`.

The library file is written by `bench/diagnosis_report.py` from the training part only (the
held-out third never enters it), and read once per version of the file.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bot.errors import RunbookInvalid
from bot.filecache import PerVersion
from bot.logline import plain

NEIGHBOURS = 21  # incidents that vote (about the square root of the library's size)
MIN_SIMILARITY = 0.1  # the closest incident must be at least this close (cosine), else nothing
MIN_COMMON = 2  # terms a neighbour must share with the evidence: one common word is no likeness
MAX_QUOTES = 5
WORD = re.compile(r"[a-z][a-z0-9_]{2,}")
ERRNO = re.compile(r"\((\d{1,3}): ")  # nginx's "(111: Connection refused)": the number, any libc
HEXISH = re.compile(r"[a-f0-9_]{6,}")  # ids, hashes: they name one incident, not a kind
STOPWORDS = frozenset("the and for with from that this not are was has have http https www com "
                      "org net while".split())


def words(line: str) -> set[str]:
    """The terms of one log line: its words (lower case, 3+ characters, no ids or hashes) and
    the errno numbers it prints."""
    line = plain(line)
    terms = {w for w in WORD.findall(line.lower())
             if w not in STOPWORDS and not HEXISH.fullmatch(w)}
    terms.update("errno" + n for n in ERRNO.findall(line))
    return terms


def term_counts(lines: Mapping[str, list[str]]) -> dict[str, int]:
    """How many lines of the evidence hold each term."""
    counts: Counter[str] = Counter()
    for step_lines in lines.values():
        for line in step_lines:
            counts.update(words(line))
    return dict(counts)


@dataclass(frozen=True)
class Incident:
    id: str  # the corpus case's file stem
    cause: str
    source: str  # its public thread's URL, or where the lab capture came from
    terms: Mapping[str, int]  # term -> lines holding it


@dataclass(frozen=True)
class Likeness:
    """The cause the closest past incidents share, and what this evidence has in common."""

    cause: str
    share: float  # of the neighbours' votes (similarity-weighted)
    similarity: float  # of the closest incident with that cause
    incidents: tuple[Incident, ...]  # the neighbours with that cause, closest first
    quotes: tuple[str, ...]  # this evidence's lines that carry the likeness, strongest first


@dataclass(frozen=True)
class Library:
    incidents: tuple[Incident, ...]
    # the index (IDF and each incident's vector) is built when first compared with, not when
    # the rules are loaded: most diagnoses never need it

    @cached_property
    def _idf(self) -> dict[str, float]:
        df: Counter[str] = Counter()
        for incident in self.incidents:
            df.update(incident.terms.keys())
        n = len(self.incidents)
        return {term: math.log((n + 1) / (count + 1)) for term, count in df.items()}

    @cached_property
    def _vectors(self) -> tuple[dict[str, float], ...]:
        return tuple(self._vector(i.terms) for i in self.incidents)

    def without(self, *incident_ids: str) -> Library:
        """The library less these incidents (to measure a case against the others only)."""
        out = set(incident_ids)
        return Library(tuple(i for i in self.incidents if i.id not in out))

    def _vector(self, terms: Mapping[str, int]) -> dict[str, float]:
        vector = {t: (1 + math.log(c)) * self._idf[t] for t, c in terms.items()
                  if c > 0 and self._idf.get(t, 0.0) > 0}
        norm = math.sqrt(sum(x * x for x in vector.values())) or 1.0
        return {t: x / norm for t, x in vector.items()}

    def nearest(self, lines: Mapping[str, list[str]]) -> Likeness | None:
        """The cause with the most (closeness-weighted) votes of the closest incidents, or None
        when none is close enough."""
        query = self._vector(term_counts(lines))
        if not query:
            return None
        ranked = sorted(((_dot(query, v), i) for i, v in enumerate(self._vectors)),
                        key=lambda pair: -pair[0])[:NEIGHBOURS]
        ranked = [(s, i) for s, i in ranked
                  if s > 0 and len(query.keys() & self._vectors[i].keys()) >= MIN_COMMON]
        votes: dict[str, float] = {}
        for score, i in ranked:
            cause = self.incidents[i].cause
            votes[cause] = votes.get(cause, 0.0) + score
        if not votes or ranked[0][0] < MIN_SIMILARITY:
            return None
        cause, weight = max(votes.items(), key=lambda pair: pair[1])
        share = weight / sum(votes.values())
        mine = [(s, i) for s, i in ranked if self.incidents[i].cause == cause]
        centroid: dict[str, float] = {}
        for score, i in mine:
            for term, x in self._vectors[i].items():
                centroid[term] = centroid.get(term, 0.0) + score * x
        return Likeness(cause=cause, share=round(share, 3), similarity=round(mine[0][0], 3),
                        incidents=tuple(self.incidents[i] for _, i in mine),
                        quotes=_quotes(lines, query, centroid))


def _dot(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(x * b.get(t, 0.0) for t, x in a.items())


def _quotes(lines: Mapping[str, list[str]], query: Mapping[str, float],
            centroid: Mapping[str, float]) -> tuple[str, ...]:
    """The lines whose terms weigh most in the likeness, verbatim, strongest first."""
    scored: dict[str, float] = {}
    for step_lines in lines.values():
        for line in step_lines:
            score = sum(query.get(t, 0.0) * centroid.get(t, 0.0) for t in words(line))
            if score > 0 and score > scored.get(line, 0.0):
                scored[line] = score
    return tuple(sorted(scored, key=lambda line: -scored[line])[:MAX_QUOTES])


# ---------------------------------------------------------------- the file



def dump(incidents: Iterable[Incident]) -> str:
    """The library file's text: stable (sorted), one incident per line."""
    rows = [json.dumps({"id": i.id, "cause": i.cause, "source": i.source,
                        "terms": dict(sorted(i.terms.items()))}, ensure_ascii=False)
            for i in sorted(incidents, key=lambda i: i.id)]
    return "{\"version\": 1, \"incidents\": [\n" + ",\n".join(rows) + "\n]}\n"


def load_library(path: Path) -> Library:
    """Read a library file (once per version of it); errors name the file."""
    try:
        return _loaded.get(path)
    except OSError as exc:
        raise RunbookInvalid(f"{path}:1: cannot read past incidents: "
                             f"{exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunbookInvalid(f"{path}:1: not a past-incidents file "
                             f"(write it with bench/diagnosis_report.py): {exc}") from None


def _read_library(path: str) -> Library:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return Library(tuple(
        Incident(id=str(row["id"]), cause=str(row["cause"]), source=str(row["source"]),
                 terms={str(t): int(c) for t, c in row["terms"].items()})
        for row in data["incidents"]))


_loaded = PerVersion(_read_library)

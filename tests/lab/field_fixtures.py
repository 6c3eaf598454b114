"""pytest fixtures of the field lab (tests/lab/field.py): `field_lab` (session) and `field`
(healed before and after each test)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .field import FieldLab, start_field
from .fixtures import _timings
from .process import LabError


@pytest.fixture(scope="session")
def field_lab(lab_dir: Path) -> Iterator[FieldLab]:
    began = time.monotonic()
    try:
        lab = start_field(lab_dir / "field")
    except LabError as exc:
        pytest.fail(f"field lab could not start: {exc}", pytrace=False)
    _timings["field lab (nginx + supervisord myapp/sockapp)"] = time.monotonic() - began
    yield lab
    lab.stop()


@pytest.fixture
def field(field_lab: FieldLab) -> Iterator[FieldLab]:
    field_lab.heal()
    yield field_lab
    field_lab.heal()

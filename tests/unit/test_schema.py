import json
from pathlib import Path

import jsonschema
import yaml

from bot.schema import runbook_schema

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "docs/runbook.schema.json").read_text())
    assert committed == json.loads(json.dumps(runbook_schema())), \
        "regenerate: python -m bot.schema > docs/runbook.schema.json"


def test_shipped_runbooks_pass_the_schema() -> None:
    schema = runbook_schema()
    for path in sorted((ROOT / "runbooks").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_rejects_a_typo() -> None:
    doc = {"name": "x", "steps": [{"id": "a", "kind": "ssh", "comand": "true"}]}
    try:
        jsonschema.validate(doc, runbook_schema())
    except jsonschema.ValidationError:
        return
    raise AssertionError("a misspelt field passed the schema")

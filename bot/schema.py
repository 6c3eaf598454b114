"""JSON Schema of a runbook file, generated from the models that validate it (for editors).

`python -m bot.schema > docs/runbook.schema.json`; a test keeps the committed file current.
"""

from __future__ import annotations

import json
from typing import Any

from bot.executors import KINDS
from bot.params import ParamSpec
from bot.runbooks import CAUSES, Expect, OpenTo, RemediationSpec, StepSpec, VerifySpec


def _common(spec: type[StepSpec]) -> dict[str, Any]:
    schema = spec.model_json_schema()
    props = dict(schema.get("properties", {}))
    props.pop("kind", None)
    props.pop("verify", None)
    return props


def _step_variants(spec: type[StepSpec], extra: dict[str, Any]) -> list[dict[str, Any]]:
    variants = []
    for name, kind in sorted(KINDS.items()):
        params = kind.Params.model_json_schema()
        props = {**_common(spec), **params.get("properties", {}), **extra,
                 "kind": {"const": name}}
        required = sorted({"kind", *params.get("required", []),
                           *(["id"] if spec is not VerifySpec else []),
                           *(["verify"] if spec is RemediationSpec else [])})
        variants.append({"type": "object", "title": f"{name} step", "properties": props,
                         "required": required, "additionalProperties": False,
                         **({"$defs": params["$defs"]} if "$defs" in params else {})})
    return variants


def runbook_schema() -> dict[str, Any]:
    expect = Expect.model_json_schema()
    verify = {"oneOf": _step_variants(VerifySpec, {"expect": expect})}
    remediation_extra = {"expect": expect, "verify": {"$ref": "#/$defs/verify"},
                         "fixes": {"type": "array", "items": {"enum": list(CAUSES)}}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/opsbot/opsbot/docs/runbook.schema.json",
        "title": "opsbot runbook",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "steps"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_.-]{0,62}$"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "match": {"type": "array", "items": {"type": "string",
                                                 "description": 'label="v", !=, =~ or !~'}},
            "diagnosis": {"type": "string", "description": "rules file, relative to the runbook"},
            "params": {"type": "object", "additionalProperties": ParamSpec.model_json_schema()},
            "open_to": {**OpenTo.model_json_schema(),
                        "description": "parameters alert labels and chat arguments may set "
                                       "(default: none)"},
            "steps": {"type": "array", "minItems": 1,
                      "items": {"oneOf": _step_variants(StepSpec, {"expect": expect})}},
            "remediation": {"type": "array",
                            "items": {"oneOf": _step_variants(RemediationSpec,
                                                              remediation_extra)}},
        },
        "$defs": {"verify": verify},
    }


if __name__ == "__main__":
    print(json.dumps(runbook_schema(), indent=2, sort_keys=True))

"""The JSON Schema the README links is the one pydantic derives from the template model."""

import json
from pathlib import Path

from broker.domain.templates import template_json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "scopes" / "template.schema.json"


def test_committed_schema_matches_the_model():
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == template_json_schema(), (
        "scopes/template.schema.json is stale: regenerate it with "
        "python -c 'import json; from broker.domain.templates import template_json_schema; "
        "print(json.dumps(template_json_schema(), indent=2))' > scopes/template.schema.json")


def test_schema_forbids_unknown_keys_such_as_notaction():
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed["$defs"]["Statement"]["additionalProperties"] is False
    assert committed["additionalProperties"] is False

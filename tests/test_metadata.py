"""``__metadata__/``: in step with the settings models, and valid by JSON schema (jsonschema).

Regenerate with ``make manifest``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from shared.config import env_names, load_settings
from tools import metadata

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "compose" / "config.yml.sample"

# The keys, types and values of a connector's ``connector_manifest.json`` as OpenCTI-Platform/
# connectors writes and reads them (``shared/tools/composer/generate_connectors_manifests/
# connector_manifest.json.sample``; the types and limits that ``generate_manifest_fragment/
# connector_manifest_schema.json`` checks after mapping, e.g. container_type → image_type).
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "title",
        "slug",
        "description",
        "short_description",
        "logo",
        "use_cases",
        "solution_categories",
        "license_type",
        "contact",
        "verified",
        "last_verified_date",
        "playbook_supported",
        "max_confidence_level",
        "support_version",
        "subscription_link",
        "source_code",
        "manager_supported",
        "container_version",
        "container_image",
        "container_type",
    ],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "slug": {"type": "string", "pattern": "^[a-z0-9]+(?:-[a-z0-9]+)*$"},
        "description": {"type": "string", "minLength": 1},
        "short_description": {"type": "string", "minLength": 1, "maxLength": 200},
        "logo": {"type": "string"},
        "use_cases": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 3,
            "uniqueItems": True,
        },
        "solution_categories": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 3,
            "uniqueItems": True,
        },
        "license_type": {"enum": ["Free", "Commercial", ""]},
        "contact": {"type": ["string", "null"]},
        "verified": {"type": ["boolean", "null"]},
        "last_verified_date": {"type": ["string", "null"], "format": "date"},
        "playbook_supported": {"type": "boolean"},
        "max_confidence_level": {"type": "integer", "minimum": 0, "maximum": 100},
        "support_version": {"type": "string", "pattern": r"^>=\s*[0-9]+\.[0-9]+(\.[0-9]+)?$"},
        "subscription_link": {"type": ["string", "null"]},
        "source_code": {"type": "string"},
        "manager_supported": {"type": "boolean"},
        "container_version": {"type": "string", "minLength": 1},
        "container_image": {"type": "string", "pattern": "^[a-z0-9]+(?:[._/-][a-z0-9]+)*$"},
        "container_type": {
            "enum": [
                "EXTERNAL_IMPORT",
                "INTERNAL_ENRICHMENT",
                "INTERNAL_EXPORT_FILE",
                "INTERNAL_IMPORT_FILE",
                "STREAM",
            ]
        },
    },
}


def _committed(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _sample_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """compose/config.yml.sample as typed values per variable, through both settings models."""
    monkeypatch.chdir(tmp_path)
    # The sample's CONNECTOR_ID is a "ChangeMe" placeholder; a user puts a UUIDv4 there.
    environ = {"CONNECTOR_ID": "6a9d4e39-3b8b-4a57-9f2d-0f1a2b3c4d5e"}
    config: dict[str, Any] = {}
    for model in metadata.MODELS:
        settings = load_settings(model, SAMPLE, environ)
        for env_name, field in env_names(model).items():
            value = getattr(settings, field)
            if value is None:
                continue  # unset
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            config[env_name] = json.loads(json.dumps(value, default=str))
    return config


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name) for p in (metadata.MANIFEST_FILE, metadata.SCHEMA_FILE)]
)
def test_committed_files_match_the_settings_models(path: Path) -> None:
    assert path.is_file(), f"{path.name} missing: run make manifest"
    assert path.read_text(encoding="utf-8") == metadata.expected()[path], (
        f"{path.name} is stale: run make manifest"
    )


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "connector_config_schema.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(metadata, "SCHEMA_FILE", stale)
    monkeypatch.setattr(metadata, "MANIFEST_FILE", tmp_path / "connector_manifest.json")
    assert metadata.main(["--check"]) == 1
    assert metadata.main([]) == 0
    assert metadata.main(["--check"]) == 0


def test_config_schema_is_a_valid_schema_of_every_setting() -> None:
    schema = _committed(metadata.SCHEMA_FILE)
    Draft202012Validator.check_schema(schema)
    names = set().union(*(env_names(m) for m in metadata.MODELS)) - set(metadata.INJECTED)
    assert set(schema["properties"]) == names
    assert not set(schema["properties"]) & set(metadata.INJECTED)
    for model in metadata.MODELS:
        for env_name, field in env_names(model).items():
            info = model.model_fields[field]
            if env_name in metadata.INJECTED:
                continue
            prop = schema["properties"][env_name]
            assert prop["description"] == info.description
            if info.annotation in (SecretStr, SecretStr | None):
                assert prop["format"] == "password" and prop["writeOnly"] is True
            if info.is_required():
                assert env_name in schema["required"]


def test_sample_config_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = _committed(metadata.SCHEMA_FILE)
    config = _sample_config(tmp_path, monkeypatch)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert [e.message for e in validator.iter_errors(config)] == []
    assert isinstance(config["CYBERTHREATEXCHANGE_FEED_IDS"], list)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        pytest.param({"CONNECTOR_QUEUE_PROTOCOL": "kafka"}, "is not one of", id="enum"),
        pytest.param({"CYBERTHREATEXCHANGE_CONCURRENCY": 0}, "less than the minimum", id="minimum"),
        pytest.param({"CONNECTOR_EXPOSE_METRICS": "yes"}, "is not of type", id="type"),
        pytest.param({"OPENCTI_TOKEN": None}, "is a required property", id="required"),
    ],
)
def test_a_bad_config_does_not_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], pattern: str
) -> None:
    config = _sample_config(tmp_path, monkeypatch)
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(jsonschema.ValidationError, match=pattern):
        jsonschema.validate(config, _committed(metadata.SCHEMA_FILE), cls=Draft202012Validator)


def test_manifest_validates_and_matches_the_code() -> None:
    manifest = _committed(metadata.MANIFEST_FILE)
    jsonschema.validate(
        manifest,
        MANIFEST_SCHEMA,
        cls=Draft202012Validator,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    # The oldest platform the uploader supports (any pycti from it on works; the default install
    # takes the newest).
    oldest = re.search(
        r'^OLDEST_PYCTI = "([0-9.]+)"$',
        (ROOT / "uploader" / "importing" / "opencti.py").read_text(),
        re.M,
    )
    assert oldest is not None
    assert manifest["support_version"] == f">={oldest.group(1)}"
    # The type the uploader registers with is the type the catalog shows.
    registration = (ROOT / "uploader" / "importing" / "registration.py").read_text()
    assert f'"type": "{manifest["container_type"]}"' in registration
    assert (
        manifest["container_image"]
        in (ROOT / "compose" / "docker-compose.uploader.yml").read_text()
    )

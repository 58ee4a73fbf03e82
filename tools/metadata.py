"""Writes ``__metadata__/connector_manifest.json`` and ``connector_config_schema.json``.

Run ``make manifest`` (``python -m tools.metadata``) after changing a settings model;
``tests/test_metadata.py`` fails while the committed files are out of step.

What today's OpenCTI connectors carry, in OpenCTI-Platform/connectors:

* ``<type>/<name>/__metadata__/connector_manifest.json``: catalog metadata, with the keys of
  ``shared/tools/composer/generate_connectors_manifests/connector_manifest.json.sample``
  (e.g. ``external-import/dogesec-cyberthreatexchange/__metadata__/connector_manifest.json``).
* ``<type>/<name>/__metadata__/connector_config_schema.json``: a JSON schema (draft 2020-12) of the
  connector's environment variables, generated from its pydantic settings by
  ``connectors-sdk/connectors_sdk/settings/json_schema_generator.py``
  (``ConnectorConfigJsonSchemaGenerator``): flat ``NAMESPACE_VARIABLE`` properties without titles,
  nullable types without ``anyOf``, ``additionalProperties: true``, ``CONNECTOR_ID`` left out
  (managed deployment injects it), ``$id`` ``https://www.filigran.io/connectors/<name>_config.schema.json``
  (e.g. ``external-import/alienvault/__metadata__/connector_config_schema.json``).

Both halves are described by **one** ``__metadata__/`` at the repository root. The catalog
tooling turns each ``__metadata__`` directory into one contract for one container image
(``shared/tools/composer/generate_global_manifest/generate_global_manifest.py``,
``generate_manifest_fragment/generate_manifest_fragment.py``), and OpenCTI sees one connector:
the uploader registers it, the fetcher never talks to the platform. A second manifest would list
a "connector" OpenCTI can neither deploy nor see. So the manifest names the uploader's image and
type, and the config schema lists every variable of both halves, as the one-host deployment sets
them all; its ``required`` is what that deployment needs (a fetcher-only host needs only the CTX
variables, an uploader-only host only the OpenCTI ones: README, "Configuration"). Managed
deployment (``manager_supported``) is off: the connector is two processes sharing a spool.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from copy import deepcopy
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from fetcher.settings import FetcherSettings
from shared.config import SettingsBase
from uploader.settings import UploaderSettings

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
METADATA = ROOT / "__metadata__"
MANIFEST_FILE = METADATA / "connector_manifest.json"
SCHEMA_FILE = METADATA / "connector_config_schema.json"

MODELS: tuple[type[SettingsBase], ...] = (FetcherSettings, UploaderSettings)
#: The connector type the uploader registers with (``uploader/importing/registration.py``, pycti config).
CONNECTOR_TYPE = "EXTERNAL_IMPORT"
#: Left out as connectors-sdk's ``filter_schema`` does: managed deployment generates it.
INJECTED = ("CONNECTOR_ID",)


class _FlatSchema(GenerateJsonSchema):
    """Optional settings as their plain type, as connectors-sdk's generator writes them."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def _project() -> dict[str, Any]:
    with PYPROJECT.open("rb") as fh:
        data: dict[str, Any] = tomllib.load(fh)["project"]
    return data


def _oldest_pycti() -> str:
    """The oldest pycti, and so platform, the uploader supports (``OLDEST_PYCTI`` in
    uploader/importing/opencti.py, read as text: this tool does not import pycti)."""
    text = (ROOT / "uploader" / "importing" / "opencti.py").read_text(encoding="utf-8")
    match = re.search(r'^OLDEST_PYCTI = "(\S+)"$', text, re.M)
    if match is None:
        raise ValueError("uploader/importing/opencti.py sets no OLDEST_PYCTI")
    return match.group(1)


#: The limits a property of JSON type ``number`` carries.
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _floats_for_numbers(prop: dict[str, Any]) -> None:
    """Write the limits of a ``number`` property as floats: pydantic before 2.11 writes ``gt=0`` on a
    float field as ``0``, later versions as ``0.0``, and the committed files must not depend on which
    pydantic the installed pycti pulled in."""
    if prop.get("type") != "number":
        return
    for key in _BOUNDS:
        if isinstance(prop.get(key), int) and not isinstance(prop[key], bool):
            prop[key] = float(prop[key])


def config_schema(slug: str) -> dict[str, Any]:
    """The environment-variable JSON schema of both halves (see the module docstring)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for model in MODELS:
        schema = model.model_json_schema(by_alias=True, schema_generator=_FlatSchema)
        for name, prop in schema["properties"].items():
            prop = deepcopy(prop)
            prop.pop("title", None)
            if prop.get("default", 0) is None:
                del prop["default"]  # unset means unset, not a null value
            _floats_for_numbers(prop)
            if name in properties and properties[name] != prop:
                raise ValueError(f"{name} is described differently by {model.__name__}")
            properties.setdefault(name, prop)
        required += [name for name in schema.get("required", []) if name not in required]
    for name in INJECTED:
        properties.pop(name, None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://www.filigran.io/connectors/{slug}_config.schema.json",
        "type": "object",
        "properties": properties,
        "required": [name for name in required if name not in INJECTED],
        "additionalProperties": True,
    }


def manifest() -> dict[str, Any]:
    """The catalog manifest (keys of connectors' ``connector_manifest.json.sample``)."""
    project = _project()
    name = UploaderSettings.model_fields["connector_name"].default
    return {
        "title": name,
        "slug": project["name"],
        "description": (
            f"{project['description']} The fetcher writes one STIX bundle file per report of the "
            "subscribed Cyber Threat Exchange feeds into a spool directory; the uploader imports "
            "each file into OpenCTI as one work. The spool can be copied across an air gap or a "
            "data diode between them."
        ),
        "short_description": project["description"],
        "logo": "",
        "use_cases": ["Adversary & Campaign Insights"],
        "solution_categories": ["Threat Intelligence Feed"],
        "license_type": "Free",
        "contact": None,
        "verified": False,
        "last_verified_date": None,
        "playbook_supported": False,
        "max_confidence_level": 50,
        "support_version": f">={_oldest_pycti()}",
        "subscription_link": "https://www.cyberthreatexchange.com/",
        "source_code": project.get("urls", {}).get("Source", ""),
        "manager_supported": False,
        "container_version": project["version"],
        "container_image": f"{project['name']}-uploader",
        "container_type": CONNECTOR_TYPE,
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def expected() -> dict[Path, str]:
    """Each metadata file and the text it must have."""
    return {
        MANIFEST_FILE: render(manifest()),
        SCHEMA_FILE: render(config_schema(str(_project()["name"]))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.metadata", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = [path for path, text in expected().items() if not _same(path, text)]
    if args.check:
        for path in stale:
            print(f"stale: {path} (run make manifest)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected().items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _same(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text(encoding="utf-8") == text


if __name__ == "__main__":
    sys.exit(main())

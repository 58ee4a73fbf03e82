"""The README's configuration tables stay in step with the settings models.

Regenerate the tables in place with ``.venv/bin/python -m tests.test_readme``.
"""

from __future__ import annotations

import re
from pathlib import Path

from fetcher.settings import FetcherSettings
from shared.config import SettingsBase, describe
from uploader.settings import UploaderSettings

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES = {"fetcher": FetcherSettings, "uploader": UploaderSettings}


def render(model: type[SettingsBase]) -> str:
    lines = [
        "| Variable | config.yml key | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for env, key, default, description in describe(model):
        shown = default if default == "required" else f"`{default}`" if default else "(unset)"
        meaning = description.replace("|", "\\|")
        lines.append(f"| `{env}` | `{key}` | {shown} | {meaning} |")
    return "\n".join(lines)


def _readme_table(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- config-table:{name} -->\n(.*?)\n<!-- /config-table:{name} -->", text, re.S
    )
    assert match, f"README.md has no config-table:{name} markers"
    return match.group(1).strip()


def test_fetcher_table_matches_settings() -> None:
    assert _readme_table("fetcher") == render(FetcherSettings), (
        "README fetcher table is stale: run python -m tests.test_readme"
    )


def test_uploader_table_matches_settings() -> None:
    assert _readme_table("uploader") == render(UploaderSettings), (
        "README uploader table is stale: run python -m tests.test_readme"
    )


def test_readme_quick_start_commands_exist() -> None:
    text = README.read_text(encoding="utf-8")
    makefile = (README.parent / "Makefile").read_text(encoding="utf-8")
    for target in re.findall(r"^make (\w+)", text, re.M):
        assert re.search(rf"^{target}:", makefile, re.M), (
            f"README runs make {target}: no such target"
        )


def write_tables() -> None:
    """Rewrite the README's configuration tables from the settings models."""
    text = README.read_text(encoding="utf-8")
    for name, model in TABLES.items():
        block = f"<!-- config-table:{name} -->\n{render(model)}\n<!-- /config-table:{name} -->"
        text = re.sub(
            rf"<!-- config-table:{name} -->\n.*?<!-- /config-table:{name} -->",
            lambda _m, block=block: block,
            text,
            flags=re.S,
        )
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_tables()

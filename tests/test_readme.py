"""The README and docs/ stay true: settings tables in step with the models, links that resolve.

The settings tables live in docs/configuration.md; regenerate them in place with
``.venv/bin/python -m tests.test_readme``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fetcher.settings import FetcherSettings
from shared.config import SettingsBase, describe
from uploader.settings import UploaderSettings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
TABLES: dict[str, type[SettingsBase]] = {"fetcher": FetcherSettings, "uploader": UploaderSettings}
#: The README is the five-minute read; detail belongs in docs/.
README_MAX_BYTES = 15 * 1024

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")


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


def _settings_table(name: str) -> str:
    text = CONFIGURATION.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- config-table:{name} -->\n(.*?)\n<!-- /config-table:{name} -->", text, re.S
    )
    assert match, f"docs/configuration.md has no config-table:{name} markers"
    return match.group(1).strip()


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in TABLES])
def test_settings_table_matches_model(name: str) -> None:
    assert _settings_table(name) == render(TABLES[name]), (
        f"docs/configuration.md {name} table is stale: run python -m tests.test_readme"
    )


def test_readme_quick_start_commands_exist() -> None:
    text = README.read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = re.findall(r"^make (\w+)", text, re.M)
    assert {"demo", "test", "standins"} <= set(targets), "the quick start lost a command"
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.M), (
            f"README runs make {target}: no such target"
        )


def test_readme_is_a_short_read() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes (at most {README_MAX_BYTES}): move detail to docs/"
    )


def _prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks, inline code removed."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def anchors(path: Path) -> set[str]:
    """The ``#fragment``s GitHub gives the headings of a Markdown file (its slug rules)."""
    seen: dict[str, int] = {}
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            seen["\0fenced"] = 1 - seen.get("\0fenced", 0)
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if seen.get("\0fenced") or not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Relative link targets (``file``, ``file#anchor``, ``#anchor``) of a Markdown file."""
    targets = [target for line in _prose(path) for target in LINK.findall(line)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize(
    "document", [pytest.param(path, id=str(path.relative_to(ROOT))) for path in DOCUMENTS]
)
def test_links_resolve(document: Path) -> None:
    broken = []
    for target in links(document):
        file_part, _, fragment = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and (resolved.suffix != ".md" or fragment not in anchors(resolved)):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)


def test_link_checker_sees_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Signing: proof (`x`)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[a](other.md#signing-proof-x) [b](#page) [c](https://example.com/x)\n"
        "```\n[not a link](missing.md)\n# not a heading\n```\n"
        "[d](missing.md) [e](other.md#nowhere) [f](#not-a-heading)\n"
    )
    assert links(page) == [
        "other.md#signing-proof-x",
        "#page",
        "missing.md",
        "other.md#nowhere",
        "#not-a-heading",
    ]
    assert anchors(page) == {"page"}
    assert anchors(tmp_path / "other.md") == {"other-page", "signing-proof-x"}


def write_tables() -> None:
    """Rewrite the settings tables of docs/configuration.md from the settings models."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    for name, model in TABLES.items():
        block = f"<!-- config-table:{name} -->\n{render(model)}\n<!-- /config-table:{name} -->"
        match = re.search(
            rf"<!-- config-table:{name} -->\n.*?<!-- /config-table:{name} -->", text, re.S
        )
        assert match, f"docs/configuration.md has no config-table:{name} markers"
        text = text[: match.start()] + block + text[match.end() :]
    CONFIGURATION.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_tables()

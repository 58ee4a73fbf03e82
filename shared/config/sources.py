"""Where the values of the settings come from: the environment over config.yml, by pydantic-settings.

As the OpenCTI connectors SDK loads ``BaseConnectorSettings`` (``_SettingsLoader`` in
``connectors_sdk/settings/_settings_loader.py``), a pydantic-settings model whose fields are the
variable names, typed ``Any``, gathers each variable's raw value (a string from the environment,
YAML's own type from the file) and the frozen settings model validates them all at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import create_model
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from shared.errors import ConfigError, ConfigProblem


class _Environment(EnvSettingsSource):
    """The environment (``os.environ`` or the mapping given to :func:`read_values`), values
    stripped; a blank one counts as unset (compose files often set ``FOO=``)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value.strip() for name, value in self.environ.items() if value.strip()}


class _ConfigFile(YamlConfigSettingsSource):
    """config.yml, each ``section: {key: value}`` read as the variable ``SECTION_KEY``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.file = path
        # The YAML source skips a file that does not exist; one named by --config must.
        if not path.is_file():
            raise self._problem("cannot read: no such file")
        super().__init__(settings_cls, yaml_file=path, yaml_file_encoding="utf-8")

    def _problem(self, message: str, where: str | None = None) -> ConfigError:
        where = str(self.file) if where is None else where
        return ConfigError([ConfigProblem("--config", where, message)], str(self.file))

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        import yaml  # as the YAML source does: only when there is a file to read

        try:
            data = super()._read_file(file_path)
        except OSError as exc:
            raise self._problem(f"cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise self._problem(f"not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise self._problem("must be a mapping of sections")
        flat: dict[str, Any] = {}
        for section, values in data.items():
            if not isinstance(values, dict):
                raise self._problem("section must be a mapping", str(section))
            flat.update({f"{section}_{key}".upper(): value for key, value in values.items()})
        return flat


class _Sources(BaseSettings):
    """The raw values of some variables; the file's other names are kept as extras."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="allow")

    config_file: ClassVar[Path | None] = None
    environ: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The first source wins (pydantic-settings docs, "Changing Priority"): the environment.
        environment = _Environment(settings_cls, cls.environ)
        if cls.config_file is None:
            return (environment,)
        return (environment, _ConfigFile(settings_cls, cls.config_file))


def read_values(
    names: Iterable[str], config_file: Path | None, environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The raw value of each variable in ``names`` that is set, the environment over
    ``config_file``, and the other names of ``config_file`` (flattened ``SECTION_KEY``).

    Raises :class:`ConfigError` if ``config_file`` cannot be read or is not a mapping of sections.
    """
    fields: dict[str, Any] = {name: (Any, None) for name in names}
    sources = create_model("Sources", __base__=_Sources, **fields)
    sources.config_file = config_file
    sources.environ = environ
    raw = sources()
    values = {name: getattr(raw, name) for name in fields if name in raw.model_fields_set}
    return values, list(raw.model_extra or ())

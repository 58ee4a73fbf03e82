"""The names of the settings: environment variables, their config.yml keys, and unknown names.

A name under one of our prefixes that no setting knows does nothing, silently: a typo
(``CYBERTHREATEXCHANGE_FEEDS_IDS``) or another program's switch (``CONNECTOR_LOG_FORMAT``). So
loading also collects the names under ``CYBERTHREATEXCHANGE_``, ``UPLOADER_`` and ``SPOOL_`` that no
settings model of this process defines, and the ``CONNECTOR_`` and ``OPENCTI_`` names that neither
we nor pycti read; the CLI logs one warning per name (:func:`warn_unknown_settings`) once logging is
configured. A prefix is judged only by a process whose models use it: the fetcher never defines
``UPLOADER_`` settings, so it leaves them to the uploader (one ``config.yml`` serves both).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

logger = logging.getLogger(__name__)

#: Every settings model defined in this process (:class:`~shared.config.SettingsBase` adds each):
#: the names it may judge (:func:`known_names`).
MODELS: list[type[BaseModel]] = []

#: The prefixes of our own settings; any other name under them is a typo.
OUR_PREFIXES = ("CYBERTHREATEXCHANGE_", "UPLOADER_", "SPOOL_")
#: Prefixes we share with pycti: a name is known if we or pycti read it.
PYCTI_PREFIXES = ("CONNECTOR_", "OPENCTI_")

_PYCTI_NAMES = """
    CONNECTOR_AUTO CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT
    CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT_CONFIDENCE_LEVEL CONNECTOR_AUTO_UPDATE
    CONNECTOR_DURATION_PERIOD CONNECTOR_ENRICHMENT_RESOLUTION CONNECTOR_EXPOSE_METRICS
    CONNECTOR_ID CONNECTOR_LISTEN_PROTOCOL CONNECTOR_LISTEN_PROTOCOL_API_PATH
    CONNECTOR_LISTEN_PROTOCOL_API_PORT CONNECTOR_LISTEN_PROTOCOL_API_SSL
    CONNECTOR_LISTEN_PROTOCOL_API_URI CONNECTOR_LIVE_STREAM_ID
    CONNECTOR_LIVE_STREAM_LISTEN_DELETE CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES
    CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE CONNECTOR_LIVE_STREAM_START_TIMESTAMP
    CONNECTOR_LIVE_STREAM_WITH_INFERENCES CONNECTOR_LOG_LEVEL CONNECTOR_METRICS_NAMESPACE
    CONNECTOR_METRICS_PORT CONNECTOR_METRICS_SUBSYSTEM CONNECTOR_NAME
    CONNECTOR_ONLY_CONTEXTUAL CONNECTOR_QUEUE_PROTOCOL CONNECTOR_QUEUE_THRESHOLD
    CONNECTOR_RUN_AND_TERMINATE CONNECTOR_SCOPE CONNECTOR_SEND_TO_DIRECTORY
    CONNECTOR_SEND_TO_DIRECTORY_PATH CONNECTOR_SEND_TO_DIRECTORY_RETENTION
    CONNECTOR_SEND_TO_QUEUE CONNECTOR_SEND_TO_S3 CONNECTOR_SEND_TO_S3_BUCKET
    CONNECTOR_SEND_TO_S3_FOLDER CONNECTOR_SEND_TO_S3_RETENTION CONNECTOR_TYPE
    CONNECTOR_VALIDATE_BEFORE_IMPORT CONNECTOR_XTM_ONE_INTENT OPENCTI_CUSTOM_HEADERS
    OPENCTI_JSON_LOGGING OPENCTI_MISSING_REF_RETRY_EXPONENTIAL
    OPENCTI_MISSING_REF_RETRY_FACTOR OPENCTI_MISSING_REF_RETRY_INITIAL_DELAY
    OPENCTI_SSL_VERIFY OPENCTI_TOKEN OPENCTI_URL
"""
#: The ``CONNECTOR_*`` and ``OPENCTI_*`` names pycti reads, from pycti 7.261026.0: the first
#: argument of every ``get_config_variable`` call in ``pycti/connector/opencti_connector_helper.py``
#: (its YAML path is ``[section, key]`` of the same name) and the ``_env_bool``/``_env_float``
#: names of ``pycti/utils/opencti_stix2.py``. tests/shared/test_unknown_settings.py checks the
#: installed pycti reads no other.
PYCTI_NAMES = frozenset(_PYCTI_NAMES.split())

#: Switches of other programs that people set expecting them to work here. CONNECTOR_LOG_FORMAT is
#: no OpenCTI convention (neither pycti nor OpenCTI-Platform/connectors, connectors-sdk included,
#: reads it); pycti's JSON switch is OPENCTI_JSON_LOGGING.
_HINTS = {"CONNECTOR_LOG_FORMAT": "OPENCTI_JSON_LOGGING=true"}


def config_key(env_name: str) -> str:
    """The config.yml key (``section.key``) of an environment variable name."""
    section, _, rest = env_name.partition("_")
    return f"{section.lower()}.{rest.lower()}"


def env_names(model: type[BaseModel]) -> dict[str, str]:
    """Map each environment variable name of ``model`` to its field name."""
    names: dict[str, str] = {}
    for field_name, info in model.model_fields.items():
        if not isinstance(info.validation_alias, str):
            raise TypeError(f"{model.__name__}.{field_name} has no env name; use setting()")
        names[info.validation_alias] = field_name
    return names


@dataclass(frozen=True)
class UnknownSetting:
    """A name no setting knows: ``name`` as written (``FOO_BAR`` or ``foo.bar``), where it was
    found (``environment`` or the config file) and the closest known name, if any."""

    name: str
    source: str
    closest: str | None

    def __str__(self) -> str:
        env = self.source == "environment"
        where = f"environment variable {self.name}" if env else f"{self.name} in {self.source}"
        hint = f"; did you mean {self.closest}?" if self.closest else ""
        return f"ignoring {where}: no such setting{hint}"


def known_names() -> tuple[frozenset[str], tuple[str, ...]]:
    """The names the models of this process define, and the prefixes this process judges."""
    ours = frozenset(name for model in MODELS for name in env_names(model))
    judged = tuple(p for p in OUR_PREFIXES if any(n.startswith(p) for n in ours))
    return ours, judged + PYCTI_PREFIXES


def find_unknown(
    names: Iterable[str], source: str, *, yaml_keys: bool = False
) -> list[UnknownSetting]:
    """The ``names`` (variable names, flattened ``SECTION_KEY``) no setting of ours or pycti's knows,
    written as config.yml keys if ``yaml_keys``.

    Names outside our prefixes (PATH, HTTPS_PROXY, MQ_HOST) are not ours to judge.
    """
    ours, judged = known_names()
    found = []
    for name in sorted(set(names)):
        if not name.startswith(judged) or name in ours or name in PYCTI_NAMES:
            continue
        closest = _HINTS.get(name) or next(iter(difflib.get_close_matches(name, ours, n=1)), None)
        if yaml_keys:
            name, closest = config_key(name), None if closest is None else config_key(closest)
        found.append(UnknownSetting(name, source, closest))
    return found


class _Loaded(Protocol):
    """Loaded settings (:class:`shared.config.SettingsBase`) as far as this module needs them."""

    @property
    def unknown_settings(self) -> tuple[UnknownSetting, ...]: ...


_warned: set[tuple[str, str]] = set()


def warn_unknown_settings(settings: _Loaded) -> None:
    """Log one warning per unknown name found when ``settings`` were loaded, once per process.

    Call it after logging is configured, so the warning has the format and level of every line.
    """
    for item in settings.unknown_settings:
        if (item.name, item.source) in _warned:
            continue
        _warned.add((item.name, item.source))
        extra = {"setting": item.name, "source": item.source, "closest": item.closest}
        logger.warning("%s", item, extra=extra)

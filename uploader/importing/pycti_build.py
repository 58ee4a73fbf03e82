"""Building pycti objects without losing what the CLI set up: logging, the excepthook, settings.

Where pycti is adapted, and why:

* ``OpenCTIConnectorHelper.__init__`` replaces ``sys.excepthook`` with a hook that SIGTERMs the
  process; the previous hook is put back right after construction, so an uncaught error in our
  threads is reported, not turned into a silent kill of the uploader.
* ``OpenCTIApiClient`` calls ``logging.basicConfig(force=True)`` from its constructor: the CLI's
  redacting handler and the root logger's level are restored after it.
* pycti reads its environment variables before its config dict: ours are hidden meanwhile.
* pycti's own records are quieter (:class:`PyctiRecords`, a filter on its loggers): its INFO
  lines (three per imported file: ``initiate_work``, the push, ``to_processed``) show only at
  DEBUG, and an error it logs with a traceback for a failure :mod:`uploader.importing.classify` reads is
  shown at DEBUG without the traceback, since our own line says what it means.

Nothing here imports pycti: :mod:`uploader.importing.registration` stays the only module that does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from uploader.importing.classify import describe, recognised

# pycti reads these environment variables *before* its config dict, and treats an empty one
# (``CONNECTOR_QUEUE_PROTOCOL=`` in a compose file) as unset, falling back to its own default
# (amqp!). Our settings already resolved env-over-config.yml with the same names, so while the
# helper is built they are hidden and the config dict is authoritative. ``MQ_*`` stay visible:
# they are pycti's documented RabbitMQ overrides and have no setting of ours.
PYCTI_ENV_SHADOWED = (
    "OPENCTI_URL",
    "OPENCTI_TOKEN",
    "OPENCTI_SSL_VERIFY",
    "OPENCTI_JSON_LOGGING",
    "CONNECTOR_ID",
    "CONNECTOR_TYPE",
    "CONNECTOR_NAME",
    "CONNECTOR_SCOPE",
    "CONNECTOR_LOG_LEVEL",
    "CONNECTOR_QUEUE_PROTOCOL",
    "CONNECTOR_QUEUE_THRESHOLD",
    "QUEUE_PROTOCOL",
    "CONNECTOR_RUN_AND_TERMINATE",
    "CONNECTOR_VALIDATE_BEFORE_IMPORT",
    "CONNECTOR_SEND_TO_DIRECTORY",
    "CONNECTOR_SEND_TO_QUEUE",
    # Our own endpoint (shared.metrics) serves these: pycti's would bind the same port.
    "CONNECTOR_EXPOSE_METRICS",
    "CONNECTOR_METRICS_PORT",
)


#: The loggers pycti writes to besides the connector's, whose name is the connector's name
#: (``logger(...)`` in pycti/utils/opencti_logger.py returns ``AppLogger``, a wrapper of
#: ``logging.getLogger(name)``; ``OpenCTIApiClient.__init__`` makes "api" and, from 6.8, "admin";
#: ``OpenCTIConnectorHelper.__init__`` makes ``connector_logger`` named ``connect_name``).
PYCTI_LOGGERS = ("api", "admin")


class PyctiRecords(logging.Filter):
    """Makes pycti's records fit the uploader's log (module docstring).

    pycti's ``AppLogger.info`` logs what the uploader does per file; ``AppLogger.error`` always
    passes ``exc_info=1`` (a traceback), e.g. ``OpenCTIApiClient.health_check`` for every failed
    attempt, and the ping thread (``PingAlive.ping``) for every failed ping. A record lowered to
    DEBUG is dropped unless the logger is enabled for DEBUG (our ``CONNECTOR_LOG_LEVEL=debug``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            _lower(record)
        elif record.levelno >= logging.ERROR and record.exc_info:
            exc = record.exc_info[1]
            if exc is not None and recognised(exc):
                record.msg = f"{record.getMessage()} ({describe(exc)[:500]})"
                record.args = ()
                record.exc_info = None
                record.exc_text = None
                _lower(record)
        if record.levelno == logging.DEBUG:
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _lower(record: logging.LogRecord) -> None:
    record.levelno = logging.DEBUG
    record.levelname = logging.getLevelName(logging.DEBUG)


def quiet_pycti(*names: str) -> None:
    """Put :class:`PyctiRecords` on pycti's loggers and on ``names`` (the connector's), once."""
    for name in (*PYCTI_LOGGERS, *names):
        target = logging.getLogger(name)
        if not any(isinstance(f, PyctiRecords) for f in target.filters):
            target.addFilter(PyctiRecords())


@contextlib.contextmanager
def pycti_construction(connector_name: str | None = None) -> Iterator[None]:
    """Build a pycti object without losing the CLI's logging, excepthook and settings.

    ``connector_name`` is the name of the logger a connector helper built inside logs to.
    """
    quiet_pycti(*([connector_name] if connector_name else []))
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("urllib3", "pika")}
    saved_hook = sys.excepthook
    try:
        with _shadowed_env(PYCTI_ENV_SHADOWED):
            yield
    finally:
        # pycti's hook SIGTERMs the whole process on any uncaught exception (``killProgramHook``,
        # set by ``OpenCTIConnectorHelper.__init__`` in pycti/connector/opencti_connector_helper.py):
        # the uploader must survive a bad file or a dead thread, so the previous hook returns.
        sys.excepthook = saved_hook
        # pycti's logger() calls basicConfig(force=True) and would drop our redacting handler.
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _shadowed_env(names: tuple[str, ...]) -> Iterator[None]:
    # os.environ is process-wide: this runs under the importer's lock and only for pycti's
    # constructors; nothing else in the uploader reads these variables after start-up.
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)

"""Building pycti objects without losing what the CLI set up: logging, the excepthook, settings.

Where pycti is adapted, and why:

* ``OpenCTIConnectorHelper.__init__`` replaces ``sys.excepthook`` with a hook that SIGTERMs the
  process; the previous hook is put back right after construction, so an uncaught error in our
  threads is reported, not turned into a silent kill of the uploader.
* ``OpenCTIApiClient`` calls ``logging.basicConfig(force=True)`` from its constructor: the CLI's
  redacting handler and the root logger's level are restored after it.
* pycti reads its environment variables before its config dict: ours are hidden meanwhile.

Nothing here imports pycti: :mod:`uploader.opencti` stays the only module that does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

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


@contextlib.contextmanager
def pycti_construction() -> Iterator[None]:
    """Build a pycti object without losing the CLI's logging, excepthook and settings."""
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

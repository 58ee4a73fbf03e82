"""Running the uploader in operation: the health heartbeat and check, Prometheus metrics, the
progress display of ``once``. May import every stage below it (pipeline, importing, intake,
spool_ops); only :mod:`uploader.commands` imports it."""

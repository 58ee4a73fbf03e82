"""A private RabbitMQ node for the ``amqp`` queue-protocol tests.

In that protocol pycti publishes each chunk of a bundle to RabbitMQ itself, on the
``push_exchange``/``push_routing`` that ``registerConnector`` answered (``send_stix2_bundle`` and
``_send_bundle`` in ``pycti/connector/opencti_connector_helper.py``), so only a real broker shows
what reaches the platform's queue; the stand-in's ``RegisterConnector`` answer
(``tests.standins.opencti_state.AmqpConfig``) names this node.

:func:`start_node` runs the Debian ``rabbitmq-server`` as the current user with everything in a
temporary directory: its own node name (``ctxtest-<random>@localhost``), free AMQP, distribution
and epmd ports (``ERL_EPMD_PORT``, so it never meets another node's epmd), its own mnesia, logs,
config, an empty enabled-plugins list (nothing extra starts) and ``HOME`` (the Erlang cookie is
created there, used by both the node and ``rabbitmqctl``). It binds 127.0.0.1 only. The default
``guest``/``guest`` user works because connections come from loopback.

The pytest fixture ``rabbitmq`` (in :mod:`tests.standins.fixtures`) starts one node lazily per
session. Without ``rabbitmq-server`` the tests skip, unless ``CTX_REQUIRE_RABBITMQ=1`` (CI), which
makes them fail loudly.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The Debian wrapper in /usr/sbin insists on ``su rabbitmq`` when run as root and drops our
#: environment; the real script behind it runs as anyone.
_SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
_CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl",)

STARTUP_TIMEOUT = 90.0


class RabbitMQUnavailableError(RuntimeError):
    """``rabbitmq-server`` is not installed, or the node did not start."""


@dataclass
class RabbitMQNode:
    """A running private node; ``host``/``port``/``user``/``password`` are for AMQP clients."""

    nodename: str
    port: int
    base: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    ctl: str
    host: str = "127.0.0.1"
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    epmd_port: int = 0
    _stopped: bool = field(default=False, repr=False)

    def ctl_run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ctl, "-n", self.nodename, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = []
        for path in sorted((self.base / "log").glob("*.log")):
            text.append(f"== {path.name}")
            text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.ctl_run("stop", timeout=60)
            self.process.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # The node started its own epmd on a private port; it would outlive the node.
        epmd = shutil.which("epmd") or _find_erts_binary("epmd")
        if epmd:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                capture_output=True,
                timeout=10,
                check=False,
            )


def _find_erts_binary(name: str) -> str | None:
    for candidate in sorted(Path("/usr/lib/erlang").glob(f"erts-*/bin/{name}")):
        return str(candidate)
    return None


def _executable(candidates: tuple[str, ...], name: str) -> str | None:
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available() -> bool:
    return _executable(_SERVER_CANDIDATES, "rabbitmq-server") is not None


def start_node(base: Path, timeout: float = STARTUP_TIMEOUT) -> RabbitMQNode:
    """Start a private node with all its state under ``base`` and wait until it serves AMQP."""
    server = _executable(_SERVER_CANDIDATES, "rabbitmq-server")
    ctl = _executable(_CTL_CANDIDATES, "rabbitmqctl")
    if server is None or ctl is None:
        raise RabbitMQUnavailableError(
            "rabbitmq-server is not installed (Debian package rabbitmq-server)"
        )
    base.mkdir(parents=True, exist_ok=True)
    home = base / "home"
    home.mkdir(exist_ok=True)
    (base / "log").mkdir(exist_ok=True)
    (base / "mnesia").mkdir(exist_ok=True)
    conf = base / "rabbitmq.conf"
    port = free_port()
    dist_port = free_port()
    epmd_port = free_port()
    conf.write_text(
        "\n".join(
            [
                f"listeners.tcp.default = 127.0.0.1:{port}",
                "loopback_users.guest = true",
                "log.console = false",
                "log.file.level = warning",
                # The test machines' disks may be nearly full; a RabbitMQ alarm would block pushes.
                "disk_free_limit.absolute = 1MB",
                "",
            ]
        )
    )
    plugins = base / "enabled_plugins"
    plugins.write_text("[].\n")
    env_conf = base / "rabbitmq-env.conf"
    env_conf.write_text("")
    # An existing cookie under HOME would be shared; ours is fresh and private to this node.
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(16))
    cookie.chmod(0o400)
    nodename = f"ctxtest-{secrets.token_hex(4)}@localhost"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(home),
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
        "RABBITMQ_CONF_ENV_FILE": str(env_conf),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
        "RABBITMQ_QUORUM_DIR": str(base / "quorum"),
        "RABBITMQ_STREAM_DIR": str(base / "stream"),
    }
    with (base / "log" / "stdout.log").open("wb") as stdout:
        process = subprocess.Popen(
            [server],
            env=env,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = RabbitMQNode(nodename, port, base, env, process, ctl, epmd_port=epmd_port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RabbitMQUnavailableError(
                    f"rabbitmq-server exited with {process.returncode}:\n{node.log_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise RabbitMQUnavailableError(
                    f"rabbitmq node {nodename} not up after {timeout:g} s:\n{node.log_tail()}"
                )
            # await_startup fails at once while the node's distribution is not up yet: retry.
            result = node.ctl_run(
                "await_startup", "--timeout", str(max(1, int(left))), timeout=left + 5
            )
            if result.returncode == 0:
                return node
            time.sleep(0.5)
    except BaseException:
        node.stop()
        raise

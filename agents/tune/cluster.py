"""Starting Ray on this machine, or joining a cluster, for distributed runs, sweeps and seeds.

    start_ray(None)                  an embedded one-machine Ray: bound to 127.0.0.1, no dashboard unless asked,
                                     its logs under `log_dir` (a link to Ray's session logs), not on the terminal
    start_ray("auto")                the cluster this machine belongs to (`ray start --head` / `--address`)
    start_ray("10.0.0.5:6379")       a cluster's head by address

An address that does not answer is a ConfigError (one line, exit 2 from the CLI) within CONNECT_TIMEOUT_S:
Ray's own client would retry for minutes and then abort the process. Ray is imported only here and on the
paths that use it.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from agents.core.config import ConfigError

CONNECT_TIMEOUT_S = 10.0
CURRENT_CLUSTER_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # written by `ray start`


def loopback_only() -> None:
    """Make every Ray node this process starts bind to 127.0.0.1 (a one-machine Ray has no reason to listen on
    the network). Ray reads the variable when it is first imported: call this before (tests and benches that
    start ray.cluster_utils.Cluster do); the embedded Ray of start_ray names 127.0.0.1 itself as well."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def resolve_address(address: str) -> str:
    """"auto" -> the address of the cluster this machine belongs to (RAY_ADDRESS, or the file `ray start`
    writes); host:port and ray://host:port are returned as given."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if CURRENT_CLUSTER_FILE.is_file() and CURRENT_CLUSTER_FILE.read_text().strip():
        return CURRENT_CLUSTER_FILE.read_text().strip()
    raise ConfigError("--address auto: no Ray cluster runs on this machine (start one with `ray start --head`, "
                      "or give its head's HOST:PORT)")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ConfigError unless something accepts connections at the address's host and port."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
                          "check the head's address and that `ray start --head` runs on it") from None


def check_address(address: str) -> str:
    """The cluster's address ("auto" resolved), or a ConfigError if none answers there: what a command that
    writes a folder for its work calls before it makes the folder."""
    resolved = resolve_address(address)
    check_reachable(resolved)
    return resolved


def start_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
              dashboard: bool = False, log_dir: str | Path | None = None) -> dict:
    """Join the cluster at `address`, or start an embedded Ray on this machine (`address` None); returns the
    cluster's resources. Does nothing but return them when Ray is already initialised in this process.

    `num_cpus`/`num_gpus` size the embedded Ray (default: the machine's). `log_dir`: the embedded Ray's logs are
    linked there (as `log_dir/ray`)."""
    if address is None:
        loopback_only()  # before the first import of ray in this process, and for the processes Ray starts
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    options = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if address is None:
        from ray._private import ray_constants

        # Ray read the variable when it was first imported; if that was before loopback_only(), say it again.
        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false")
        temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 108 bytes
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", _temp_dir=temp_dir, **options)
        if log_dir is not None:
            link = Path(log_dir) / "ray"
            if not link.exists():
                link.symlink_to(Path(temp_dir) / "session_latest" / "logs")
    else:
        ray.init(address=check_address(address), **options)
    return ray.cluster_resources()


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()

"""``--engine ray``'s cluster side: find and connect to the cluster (``--ray-address``) and turn ``--devices`` into
actors and what each reserves (``plan_actors``)."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tokembed.engine.device import check_form, cpu_workers, cuda_devices
from tokembed.errors import DeviceError, UsageError

CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, and what each one reserves on the cluster."""

    count: int
    num_cpus: float
    num_gpus: int
    threads: int  # torch threads per actor
    spread: bool  # one per node (SPREAD scheduling)

    @property
    def device(self) -> str:
        return "cuda:0" if self.num_gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU


def cluster_address(address: str | None) -> str:
    """``--ray-address``: ``auto`` (RAY_ADDRESS, else the cluster ``ray start`` started on this machine) or HOST:PORT."""
    return _find_address(address)[0]


def _find_address(address: str | None) -> tuple[str, str]:
    """(the address, where it came from: ``--ray-address``, ``RAY_ADDRESS`` or the file ``ray start`` wrote), the
    source named in every message about it. ``RAY_ADDRESS=auto`` means what it means to Ray: the cluster
    ``ray start`` started on this machine."""
    address = (address or "auto").strip()
    if address != "auto":
        return address, "--ray-address"
    from_env = os.environ.get("RAY_ADDRESS", "").strip()
    if from_env and from_env != "auto":
        return from_env, "RAY_ADDRESS"
    recorded = current_cluster_file()
    if recorded.is_file() and (found := recorded.read_text().strip()):
        return found, f"--ray-address auto ({recorded})"
    unset = "RAY_ADDRESS is auto" if from_env else "RAY_ADDRESS is unset"
    raise DeviceError(
        f"--ray-address auto: no running Ray cluster found ({unset} and no `ray start` on this machine)",
        hint="start one with `ray start --head`, or pass --ray-address HOST:PORT",
    )


def current_cluster_file() -> Path:
    """Where `ray start` on this machine records its address: Ray's own rule (``RAY_TMPDIR``, else ``TMPDIR`` on
    Linux, else /tmp), so a cluster started with either set is found, and a stale /tmp one is not taken for it."""
    folder = os.environ.get("RAY_TMPDIR")
    if folder is None and sys.platform.startswith("linux"):
        folder = os.environ.get("TMPDIR")
    return Path(folder or "/tmp") / "ray" / "ray_current_cluster"


def connect(address: str | None) -> tuple[str, bool]:
    """Connect this process to the cluster; returns (address, whether this call connected it)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # a library caller connected already
        return "(connected)", False
    target, source = _find_address(address)
    host, port = _host_port(target, source)
    if host in ("127.0.0.1", "localhost", "::1"):
        # Ray rewrites a loopback address to the machine's public IP unless told, before it is imported,
        # that the cluster is local-only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    _use_auth_token_like_ray_start()
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray: pip install 'tokembed[ray]'") from exc
    where = f"{source} {target}"
    _check_speaks_grpc(where, host, port)
    handlers = _signal_handlers()
    try:
        ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DeviceError(f"{where}: cannot connect to the Ray cluster: {exc}") from exc
    finally:
        _restore(handlers)
    _cluster_errors_to_stderr(ray)
    return target, True


def _check_speaks_grpc(where: str, host: str, port: int) -> None:
    """The cluster's GCS answers gRPC: an HTTP/2 server sends its SETTINGS frame after the client's preface. Any
    other listener (a web server, a Ray dashboard port) would keep ``ray.init`` retrying for minutes, holding the
    index's lock. (Not checked with TLS on, where the preface would go unanswered.)"""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            header = connection.recv(9)
    except OSError as exc:
        raise DeviceError(
            f"{where}: cannot reach the Ray cluster ({exc.strerror or exc})",
            hint="check the address `ray start --head` printed, and that this machine can reach it",
        ) from exc
    if len(header) < 4 or header[3] != 0x04:  # an HTTP/2 frame header of type SETTINGS
        raise DeviceError(f"{where}: something listens there, but not a Ray cluster's GCS (no gRPC answer)",
                          hint="give the address `ray start --head` printed (HOST:6379 by default), not the dashboard's")


def _signal_handlers() -> dict:
    """The SIGTERM / SIGINT handlers now: ``ray.init`` installs its own, which exit at once (SIGTERM: exit 15,
    and an interrupted run's journal would be removed as for a failure), and tokembed's stop the run as Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict) -> None:
    import signal

    for number, handler in handlers.items():
        signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _cluster_errors_to_stderr(ray) -> None:
    """The driver's error listener prints the cluster's messages (an actor that died, a task retried) to stdout,
    where ``--log-format json`` writes the summary a cron job parses: send them to stderr."""
    worker = ray._private.worker
    printing = worker.print_to_stdstream
    if getattr(printing, "tokembed_stderr", False):
        return

    def to_stderr(data, ignore_prefix):
        printing({**data, "is_err": True}, ignore_prefix)

    to_stderr.tokembed_stderr = True
    worker.print_to_stdstream = to_stderr


def _use_auth_token_like_ray_start() -> None:
    """`ray start` turns token auth on when a token exists (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN[_PATH]``) and
    ``RAY_AUTH_MODE`` is unset, but a driver's ``ray.init(address=...)`` does not: do as `ray start` does. A
    cluster without auth accepts a driver that sends a token."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path or Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _host_port(address: str, source: str = "--ray-address") -> tuple[str, int]:
    if "://" in address:
        raise UsageError(f"{source} {address!r}: give the cluster's HOST:PORT (what `ray start --head` printed), "
                         "not a URL (Ray Client's ray:// and the dashboard's http:// are not what a driver connects to)")
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        accepted = "HOST:PORT" if source.startswith("--ray-address auto") else "auto or HOST:PORT"
        raise UsageError(f"{source} {address!r}: expected {accepted}")
    return host.strip("[]"), int(port)


def plan_actors(devices: str | None) -> ActorPlan:
    """``--devices`` on the cluster: ``auto`` = one actor per GPU, else one per node (its cores);
    ``cpu`` = one actor; ``cpu:N`` = N actors sharing the cores; ``cuda[:i,...]`` = one actor per device listed."""
    import ray

    spec = check_form(devices)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    gpus = int(sum(node["Resources"].get("GPU", 0) for node in nodes))
    if spec.startswith("cuda"):
        return _gpu_actors(spec, gpus)
    if spec == "auto" and gpus:
        return ActorPlan(gpus, 1, 1, 1, spread=False)
    # nodes with cores only: a head started with --num-cpus=0 runs no work (and min() over it reserved 0 CPUs)
    node_cpus = [cpus for cpus in (int(node["Resources"].get("CPU", 0)) for node in nodes) if cpus > 0]
    if not node_cpus:
        raise DeviceError(f"--devices {spec}: the Ray cluster has no node with a CPU to run actors on")
    if spec == "auto":
        return ActorPlan(len(node_cpus), min(node_cpus), 0, min(node_cpus), spread=True)
    if spec == "cpu":
        return ActorPlan(1, max(node_cpus), 0, max(node_cpus), spread=False)
    count, most = cpu_workers(spec), 4 * sum(node_cpus)  # cpu:N, the one form left
    if count > most:  # as the local engine: each actor loads the model, and a share of 0 CPUs is unbounded
        raise DeviceError(f"--devices {spec}: at most {most} CPU actors on this Ray cluster (4 per core; each loads "
                          "the model)")
    share = min(max(node_cpus), sum(node_cpus) / count)  # fewer cores than actors: each reserves a fraction
    share = float(int(share)) if share >= 1 else math.floor(share * 10_000) / 10_000
    return ActorPlan(count, share, 0, max(1, int(share)), spread=False)


def _gpu_actors(spec: str, gpus: int) -> ActorPlan:
    """One actor per CUDA device listed, each on whichever GPU Ray gives it: ``cuda:i`` counts the cluster's GPUs
    (on any node), so one past them names none, as locally."""
    return ActorPlan(len(cuda_devices(spec, gpus, on_cluster=True)), 1, 1, 1, spread=False)

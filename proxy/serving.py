"""hypercorn wiring: one worker in this process, or N worker processes sharing the listening socket.

HTTP/1.1 and HTTP/2 cleartext (prior knowledge) are both served from the same port; hypercorn tells them
apart by the h2 connection preface. HTTP/1.1 trailers, which hypercorn 0.18 only has on h2/h3, come from
`proxy.http11_trailers`, installed here once per process (it checks the hypercorn version it patches).

N workers share one directory per server run, made here before they are spawned and removed when they have
stopped: `metrics/` for prometheus_client's multiprocess mode (`$PROMETHEUS_MULTIPROC_DIR`, which must be set
before a worker imports prometheus_client) and `live/` for the live view's events (`$TEEPROXY_LIVE_DIR`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from typing import Protocol

from hypercorn.config import Config as _HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import LifespanFailureError

from proxy.app import TeeProxy
from proxy.config import CONFIG_ENV, Config, load_config
from proxy.errors import StartupError
from proxy.live import LIVE_DIR_ENV

log = logging.getLogger("teeproxy")


class EventLike(Protocol):
    def is_set(self) -> bool: ...


# Long generations are idle on the client side between tokens; hypercorn's keep-alive timeout only applies
# between requests, so the default is fine. Graceful shutdown gives in-flight streams this long to finish.
GRACEFUL_TIMEOUT_S = 30.0
# hypercorn's default listen backlog is 100; a burst of new streams (a batch job starting, a load test) should
# queue in the kernel rather than be refused.
BACKLOG = 4096


class HypercornConfig(_HypercornConfig):
    """hypercorn's config, whose per-response headers (Date, Server) are built once a second, not once a response.

    hypercorn formats the Date header anew for every response (~2 µs); it has one-second resolution, so the list
    `response_headers` returns is the same for a whole second and is kept per protocol, under the second it was
    asked for in. A list built just as that second turned over carries the new second's date and is never used
    again (the next call is in a later second), so every response's Date is hypercorn's for its own second."""

    def __init__(self) -> None:
        super().__init__()
        self._response_headers: dict[str, tuple[int, list[tuple[bytes, bytes]]]] = {}

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        entry = self._response_headers.get(protocol)
        if entry is None or entry[0] != now:
            entry = self._response_headers[protocol] = (now, super().response_headers(protocol))
        return list(entry[1])


def install_http11_trailers() -> bool:
    """The contained extensions of hypercorn, once per process: HTTP/1.1 trailers, HTTP/2 flow control that makes
    the relay wait for a slow client (`proxy.h2_backpressure`), request heads refused for a bare LF
    (`proxy.h11_strict`) and read in two regex passes (`proxy.h11_request_head`), no writes to a lost
    connection (`proxy.lost_connection`), h11 response heads validated once, in one pass (`proxy.h11_headers`),
    a streamed HTTP/1.1 chunk written in one step (`proxy.h11_body_send`, after the trailers patch it goes
    around), the keep-alive timeout as a timer (`proxy.idle_timer`), and the client's departure as a callback
    (`proxy.disconnect_signal`). True: trailers work on HTTP/1.1."""
    from proxy import (
        disconnect_signal,
        h2_backpressure,
        h11_body_send,
        h11_headers,
        h11_request_head,
        h11_strict,
        http11_trailers,
        idle_timer,
        lost_connection,
    )

    http11_trailers.install()
    h2_backpressure.install()
    h11_strict.install()
    h11_request_head.install()
    lost_connection.install()
    h11_headers.install()
    h11_body_send.install()
    idle_timer.install()
    disconnect_signal.install()
    return True


def hypercorn_config(
    bind: str, workers: int, certfile: str | None = None, keyfile: str | None = None
) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [bind]
    if certfile is not None and keyfile is not None:
        # hypercorn's own TLS; ALPN offers h2 and http/1.1.
        config.certfile = certfile
        config.keyfile = keyfile
    config.workers = workers
    config.accesslog = None
    config.errorlog = "-"
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.backlog = BACKLOG
    config.application_path = "proxy.serving:create_app()"
    return config


class BindError(Exception):
    """The listening address cannot be had (taken, not ours, not here): one line for the person at the prompt."""


def check_bindable(hc: HypercornConfig) -> None:
    """Bind the listening sockets as hypercorn will (its own create_sockets), then let them go, before anything
    starts: hypercorn binds only after the app's start-up (the demo upstream, the ledger), and a taken port
    then ends in a traceback. `fd://` binds are inherited sockets, not ours to close, and are left alone."""
    if any(bind.startswith("fd://") for bind in hc.bind):
        return
    try:
        sockets = hc.create_sockets()
    except OSError as exc:
        binds = ", ".join(hc.bind)
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (another teeproxy, or another server, is listening there: stop it or pick another --bind)"
        raise BindError(f"cannot listen on {binds}: {reason}") from None
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


def create_app(config: Config | None = None) -> TeeProxy:
    """The app for one worker process; with no config given, the one named by $TEEPROXY_CONFIG."""
    return TeeProxy(config or load_config(), http11_trailers=install_http11_trailers(), tune_gc=True)


def serve(config: Config, config_path: str, bind: str | None = None, workers: int | None = None) -> int:
    bind = bind or config.server.bind
    workers = workers or config.server.workers
    hc = hypercorn_config(bind, workers, config.server.certfile, config.server.keyfile)
    # Our drain ends every request by the end of graceful_timeout_s; hypercorn's own deadline comes after it,
    # for the connections to close and the ledger to flush.
    hc.graceful_timeout = config.server.graceful_timeout_s + SHUTDOWN_MARGIN_S
    check_bindable(hc)
    if workers == 1:
        app = create_app(config)
        try:
            asyncio.run(_serve(app, hc, None, _signals()))
        except LifespanFailureError as exc:
            raise app.startup_error or StartupError(str(exc)) from None
        return 0
    # Worker processes are spawned fresh and load the app by name; they find the config through the env.
    os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    run_dir = tempfile.mkdtemp(prefix="teeproxy-run-")
    try:
        for env, name in (("PROMETHEUS_MULTIPROC_DIR", "metrics"), (LIVE_DIR_ENV, "live")):
            os.environ[env] = os.path.join(run_dir, name)
            os.mkdir(os.environ[env])
        return _supervise(hc, workers)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- shutdown: the first SIGTERM/SIGINT drains (proxy.drain), a second one ends what is left at once ----------

SHUTDOWN_MARGIN_S = 5.0
# A worker that exits this soon after it was started failed at start-up: not restarted, the server stops.
STARTUP_GRACE_S = 10.0
_POLL_S = 0.1
_background: set[asyncio.Task[None]] = set()


async def _serve(app: TeeProxy, hc: HypercornConfig, sockets: Sockets | None, stops: AsyncIterator[None]) -> None:
    """One worker: hypercorn serving `app` until the first stop; each stop (first and later) is told to the app,
    which starts the drain and then hurries it."""
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    async def first_stop() -> None:
        await anext(stops)
        app.begin_shutdown()
        task = asyncio.get_running_loop().create_task(_later_stops(app, stops))
        _background.add(task)
        task.add_done_callback(_background.discard)

    wrapped = wrap_app(app, hc.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    await worker_serve(wrapped, hc, sockets=sockets, shutdown_trigger=first_stop)


async def _later_stops(app: TeeProxy, stops: AsyncIterator[None]) -> None:
    async for _ in stops:
        app.begin_shutdown()


async def _signals() -> AsyncIterator[None]:
    """SIGINT and SIGTERM, as they come (the single-process server)."""
    queue: asyncio.Queue[None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, queue.put_nowait, None)
    while True:
        await queue.get()
        yield


async def _events(drain: EventLike, hurry: EventLike) -> AsyncIterator[None]:
    """The supervisor's two events, polled (they are multiprocessing Events, not awaitable)."""
    for event in (drain, hurry):
        while not event.is_set():  # noqa: ASYNC110 - a multiprocessing Event cannot be awaited
            await asyncio.sleep(_POLL_S)
        yield


def _worker(hc: HypercornConfig, sockets: Sockets, drain: EventLike, hurry: EventLike) -> None:
    # The supervisor decides when to stop: a terminal's Ctrl-C reaches the whole process group, and a worker
    # acting on it too would count it twice (the second signal means "end everything now").
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    app = create_app()
    try:
        asyncio.run(_serve(app, hc, sockets, _events(drain, hurry)))
    except LifespanFailureError:
        sys.exit(1)  # the app logged why; the supervisor stops the server


def _supervise(hc: HypercornConfig, workers: int) -> int:
    """N workers sharing the listening sockets. In place of hypercorn's own `run`, which on shutdown sends
    SIGTERM to the workers that are still draining (killing them before their ledger flush) and keeps the
    listening sockets open meanwhile (new connections hang instead of being refused). Here the first signal
    closes this process's copy of the sockets and tells the workers to drain; a second tells them to hurry; a
    worker that dies while serving is replaced. Exit 0 when every worker stopped cleanly."""
    context = multiprocessing.get_context("spawn")
    sockets = hc.create_sockets()
    drain, hurry = context.Event(), context.Event()

    def spawn() -> BaseProcess:
        process = context.Process(target=_worker, args=(hc, sockets, drain, hurry))
        process.start()
        return process

    signals = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
                sock.close()
            drain.set()
        else:
            hurry.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    processes = [spawn() for _ in range(workers)]
    started = {p.pid: time.monotonic() for p in processes}
    failed = False
    while any(p.is_alive() for p in processes):
        time.sleep(_POLL_S)
        for i, process in enumerate(processes):
            if process.is_alive() or drain.is_set():
                continue
            if time.monotonic() - started.get(process.pid, 0.0) < STARTUP_GRACE_S:
                # It never got going (the ledger, the config): starting it again would fail the same way.
                log.error("worker %s failed at start-up; stopping", process.pid)
                drain.set()
                hurry.set()
                failed = True
                continue
            log.error("worker %s exited with %s while serving; starting another", process.pid, process.exitcode)
            processes[i] = spawn()
            started[processes[i].pid] = time.monotonic()
    failed = failed or any(p.exitcode != 0 for p in processes)
    return 1 if failed else 0

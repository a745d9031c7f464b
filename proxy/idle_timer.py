"""hypercorn 0.18's keep-alive timeout as one timer per connection, not two tasks per request.

Why: between two requests on a connection, hypercorn's asyncio `TCPServer` runs its idle timeout in a task
(`AsyncioSingleTask`): when a response ends it starts one, which awaits `asyncio.wait_for` on the server's
`terminated` event (on Python 3.11, a second task) with `keep_alive_timeout` as the deadline; when the next
request arrives it cancels both and waits for them to unwind. Counted on the event loop (c1, `bench`), that was 6
of the 18 callbacks each request costs, with two task creations and a CancelledError raised through three
frames: about a tenth of the proxy's CPU per request.

Theory of operation: the `AsyncioSingleTask` that `TCPServer.__init__` creates is replaced, in hypercorn's
tcp_server module only, by `IdleTimer`, which keeps its interface (`restart(task_group, action)`, `stop()`).
Given the action hypercorn gives it, the server's own `_idle_timeout`, it does what that action does, without a
task: a `call_later` handle for `keep_alive_timeout`, and, for the worker's `terminated` event, one watcher task
per worker (not per connection) that fires every armed timer when the worker shuts down. Firing starts hypercorn's
own `_initiate_server_close` in the connection's task group, as the action would. Any other action is handed to a
real `AsyncioSingleTask`: nothing else changes.

`install()` checks the hypercorn version and the seam before patching, and refuses clearly otherwise.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.18."
_MARK = "__teeproxy_idle_timer__"
_ARMED = "_teeproxy_idle_timers"  # on a worker context: its armed timers
_WATCH = "_teeproxy_idle_watch"  # on a worker context: the task that fires them at shutdown (held: asyncio won't)


def install() -> None:
    version = require("idle_timer", {"hypercorn": SUPPORTED_PREFIX}, "check how TCPServer times idle connections")[
        "hypercorn"
    ]
    from hypercorn.asyncio import tcp_server
    from hypercorn.asyncio.worker_context import AsyncioSingleTask

    module: Any = tcp_server  # its AsyncioSingleTask is an import, not an export
    if getattr(module.AsyncioSingleTask, _MARK, False):
        return
    server_cls: Any = tcp_server.TCPServer
    idle_timeout = server_cls.__dict__.get("_idle_timeout")
    if (
        module.AsyncioSingleTask is not AsyncioSingleTask
        or idle_timeout is None
        or not {"terminated", "keep_alive_timeout", "_initiate_server_close"} <= set(idle_timeout.__code__.co_names)
        or "_initiate_server_close" not in server_cls.__dict__
    ):
        raise RuntimeError(f"hypercorn {version}'s TCPServer is not what proxy.idle_timer expects")

    class IdleTimer:
        def __init__(self) -> None:
            self._timer: asyncio.TimerHandle | None = None
            self._server: Any = None
            self._task_group: Any = None
            self._other = AsyncioSingleTask()  # for any action but the idle timeout

        async def restart(self, task_group: Any, action: Callable[[], Any]) -> None:
            self._disarm()
            server: Any = getattr(action, "__self__", None)
            if getattr(action, "__func__", None) is not idle_timeout or type(server) is not server_cls:
                await self._other.restart(task_group, action)
                return
            self._server, self._task_group = server, task_group
            if server.context.terminated.is_set():
                self._fire()
                return
            self._timer = server.loop.call_later(server.config.keep_alive_timeout, self._fire)
            _armed(server.context).add(self)

        async def stop(self) -> None:
            self._disarm()
            self._server = self._task_group = None  # the server holds this timer: no reference cycle left
            await self._other.stop()

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                _armed(self._server.context).discard(self)

        def _fire(self) -> None:
            """What `_idle_timeout` does once its wait is over: close the connection from the server's side."""
            self._disarm()
            server, task_group, self._server, self._task_group = self._server, self._task_group, None, None
            close = server._initiate_server_close()
            try:
                task_group._task_group.create_task(close)
            except RuntimeError:  # the connection's task group has ended: it is closing already
                close.close()

    setattr(IdleTimer, _MARK, True)
    module.AsyncioSingleTask = IdleTimer


def _armed(context: Any) -> set[Any]:
    """The armed timers of a worker; the first use starts the one task that fires them all at shutdown."""
    armed: set[Any] | None = context.__dict__.get(_ARMED)
    if armed is None:
        armed = context.__dict__[_ARMED] = set()
        # In a context of its own: the connection's that arms the first timer holds its transport (and more).
        context.__dict__[_WATCH] = asyncio.get_running_loop().create_task(
            _fire_at_shutdown(context, armed), name="teeproxy-idle-timers", context=contextvars.Context()
        )
    return armed


async def _fire_at_shutdown(context: Any, armed: set[Any]) -> None:
    await context.terminated.wait()
    for timer in list(armed):
        timer._fire()

"""hypercorn wiring: one worker in this process, or N worker processes sharing the listening socket.

HTTP/1.1 and HTTP/2 cleartext (prior knowledge) are both served from the same port; hypercorn tells them
apart by the h2 connection preface. HTTP/1.1 trailers, which hypercorn 0.18 only has on h2/h3, come from
`proxy.http11_trailers`, installed here once per process (it checks the hypercorn version it patches).
"""

from __future__ import annotations

import asyncio
import logging
import os

from hypercorn.config import Config as HypercornConfig

from proxy.app import TeeProxy
from proxy.config import CONFIG_ENV, Config, load_config

log = logging.getLogger("teeproxy")

# Long generations are idle on the client side between tokens; hypercorn's keep-alive timeout only applies
# between requests, so the default is fine. Graceful shutdown gives in-flight streams this long to finish.
GRACEFUL_TIMEOUT_S = 30.0
# hypercorn's default listen backlog is 100; a burst of new streams (a batch job starting, a load test) should
# queue in the kernel rather than be refused.
BACKLOG = 4096


def install_http11_trailers() -> bool:
    from proxy import http11_trailers

    http11_trailers.install()
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


def create_app(config: Config | None = None) -> TeeProxy:
    """The app for one worker process; with no config given, the one named by $TEEPROXY_CONFIG."""
    return TeeProxy(config or load_config(), http11_trailers=install_http11_trailers())


def serve(config: Config, config_path: str, bind: str | None = None, workers: int | None = None) -> int:
    bind = bind or config.server.bind
    workers = workers or config.server.workers
    hc = hypercorn_config(bind, workers, config.server.certfile, config.server.keyfile)
    if workers == 1:
        from hypercorn.asyncio import serve as hypercorn_serve

        app = create_app(config)
        asyncio.run(hypercorn_serve(app, hc))  # type: ignore[arg-type]
        return 0
    # Worker processes are spawned fresh and load the app by name; they find the config through the env.
    os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    from hypercorn.run import run

    return run(hc)

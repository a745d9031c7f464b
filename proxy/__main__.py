"""`teeproxy` / `python -m proxy`: serve, make client keys, read the ledger.

Exit status: 0, or 2 for a bad config or argument (with one line saying what), 1 when the proxy cannot serve
(its port is taken), 141 when the reader of our output went away (`teeproxy usage | head`), quietly, as a Unix
tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import logging
import os
import secrets
import sys

from proxy.config import CONFIG_ENV, load_config
from proxy.errors import ConfigError, StartupError

KEY_PREFIX = "tp-"


def _config_path(args: argparse.Namespace) -> str:
    path: str = args.config or os.environ.get(CONFIG_ENV) or "config/teeproxy.toml"
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.serving import BindError, serve
    from proxy.usage_cli import moved_ledger_hint

    path = _config_path(args)
    config = load_config(path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (args.certfile is None) != (args.keyfile is None):
        raise ConfigError("--certfile and --keyfile go together: give both or neither")
    if args.certfile is not None:
        config.server.certfile, config.server.keyfile = os.path.abspath(args.certfile), os.path.abspath(args.keyfile)
    if config.ledger.url is None and (hint := moved_ledger_hint(config.ledger.path)):
        logging.getLogger("teeproxy").warning("starting a new ledger at %s (%s)", config.ledger.path, hint)
    try:
        return serve(config, path, bind=args.bind, workers=args.workers)
    except (BindError, StartupError) as exc:
        print(f"teeproxy: {exc}", file=sys.stderr)
        return 1


def cmd_keys_new(args: argparse.Namespace) -> int:
    if (args.name is None) == (not args.admin):
        print("teeproxy keys new: give a NAME for a client key, or --admin for the admin key", file=sys.stderr)
        return 2
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    if args.admin:
        print(f"# The admin key, for /admin/ (shown once; it is not stored anywhere):\n{key}\n")
        print(f'# Paste into your config:\n[admin]\nkey_sha256 = "{digest}"')
        return 0
    print(f"# The client key (shown once; give it to the client, it is not stored anywhere):\n{key}\n")
    print("# Paste into your config:")
    print(f'[[keys]]\nname = "{args.name}"\nsha256 = "{digest}"')
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from proxy import usage_cli

    config = load_config(_config_path(args))
    return usage_cli.run(args, config.ledger.path, config.ledger.url)


def version() -> str:
    try:
        return importlib.metadata.version("teeproxy")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teeproxy", description="A streaming reverse proxy for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"teeproxy {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy under hypercorn")
    serve.add_argument("--config", help=f"config file (default: ${CONFIG_ENV}, else config/teeproxy.toml)")
    serve.add_argument("--bind", help="HOST:PORT to listen on (overrides [server] bind)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides [server] workers)")
    serve.add_argument("--certfile", help="serve TLS with this PEM certificate (overrides [server] certfile)")
    serve.add_argument("--keyfile", help="the certificate's PEM private key (overrides [server] keyfile)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="client keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a fresh client key and the [[keys]] block to paste")
    new.add_argument("name", nargs="?", help="the client's name, as the ledger will record it")
    new.add_argument("--admin", action="store_true", help="the admin key instead, and its [admin] block")
    new.set_defaults(func=cmd_keys_new)

    usage = sub.add_parser("usage", help="read usage records from the ledger")
    usage.add_argument("--config", help=f"config file (default: ${CONFIG_ENV}, else config/teeproxy.toml)")
    from proxy import usage_cli

    usage_cli.add_arguments(usage)
    usage.set_defaults(func=cmd_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is seen here, not at exit as "Exception ignored"
    except ConfigError as exc:
        print(f"teeproxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `teeproxy usage | head`: the reader has what it wanted. Point stdout at /dev/null so that the
        # interpreter's own flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())

"""`teeproxy` / `python -m proxy`: serve, make client keys, read the ledger."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
import sys

from proxy.config import CONFIG_ENV, load_config
from proxy.errors import ConfigError

KEY_PREFIX = "tp-"


def _config_path(args: argparse.Namespace) -> str:
    path: str = args.config or os.environ.get(CONFIG_ENV) or "config/teeproxy.toml"
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.serving import serve

    path = _config_path(args)
    config = load_config(path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: per-request logging stays off the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if (args.certfile is None) != (args.keyfile is None):
        raise ConfigError("--certfile and --keyfile go together: give both or neither")
    if args.certfile is not None:
        config.server.certfile, config.server.keyfile = os.path.abspath(args.certfile), os.path.abspath(args.keyfile)
    return serve(config, path, bind=args.bind, workers=args.workers)


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(f"# The client key (shown once; give it to the client, it is not stored anywhere):\n{key}\n")
    print("# Paste into your config:")
    print(f'[[keys]]\nname = "{args.name}"\nsha256 = "{digest}"')
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from proxy import usage_cli

    config = load_config(_config_path(args))
    return usage_cli.run(args, config.ledger.path, config.ledger.url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teeproxy", description="A streaming reverse proxy for LLM APIs.")
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
    new.add_argument("name")
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
    except ConfigError as exc:
        print(f"teeproxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

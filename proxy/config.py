"""Configuration: TOML loaded into msgspec Structs.

An unknown key or a bad value stops start-up with a message that names it (msgspec reports the path,
e.g. `Object contains unknown field `bnid` - at `$.server``). Units live in names (`read_timeout_s`).
Upstream secrets never live here: a provider names the environment variable that holds its key.
"""

from __future__ import annotations

import os
import pathlib
from typing import Literal

import msgspec

from proxy.errors import ConfigError
from proxy.pricing import PriceOverride

Dialect = Literal["openai", "anthropic", "gemini", "bedrock"]

CONFIG_ENV = "TEEPROXY_CONFIG"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Strict):
    bind: str = "127.0.0.1:8080"
    workers: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # TLS by hypercorn itself (HTTP/2 and HTTP/1.1 by ALPN): PEM files, relative to the config file. boto3 sends
    # a Bedrock bearer token only to an https endpoint. Both set, or neither.
    certfile: str | None = None
    keyfile: str | None = None
    # While an SSE upstream is silent, a keep-alive the client's SDK ignores every this many seconds; 0 is off.
    keepalive_ping_s: float = 15.0
    # On SIGTERM, in-flight streams get this long to finish before they are ended with an in-stream error.
    graceful_timeout_s: float = 30.0
    # A client with a valid key gets this long to send its whole request body (408 after).
    body_timeout_s: float = 60.0
    # Browser origins allowed to call the proxy directly (CORS), e.g. ["http://localhost:3000"]; "*" for any.
    cors_origins: list[str] = msgspec.field(default_factory=list)


class MeteringConfig(_Strict):
    enabled: bool = True


class LedgerConfig(_Strict):
    # SQLite file, relative to the config file; `url` (PostgreSQL) takes precedence when set.
    path: str | None = "teeproxy-ledger.db"
    url: str | None = None


class AdminConfig(_Strict):
    # SHA-256 hex digest of the key for the /admin/ endpoints (`teeproxy keys new --admin` prints one), sent as
    # `Authorization: Bearer`. Client keys never open /admin/. Unset: /admin/ endpoints refuse every request.
    key_sha256: str | None = None
    # Whether GET /metrics needs the admin key too (false: open, for a scraper on a private network).
    metrics_need_key: bool = False


class LogConfig(_Strict):
    # One JSON line per request that went upstream (proxy.access_log): to standard error, or appended to
    # access_path (relative to the config file, like the ledger's path).
    access: bool = False
    access_path: str | None = None


class DemoConfig(_Strict):
    # When none of the providers' api_key_env variables is set, serve every route from the built-in
    # demo upstream instead (a newcomer's `make run` works with no keys at all).
    when_no_keys: bool = False
    tokens_per_s: float = 40.0


class ProviderConfig(_Strict, kw_only=True):
    name: str
    base_url: str
    dialect: Dialect = "openai"
    api_key_env: str | None = None
    # Some OpenAI-compatible upstreams reject `stream_options`: set false to never inject include_usage.
    stream_options: bool = True
    # Bedrock: the AWS region for SigV4 signing (default: read from a bedrock-runtime.<region>.amazonaws.com URL).
    region: str | None = None
    # The genai-prices provider id to price this provider's models with (default: matched from base_url, then
    # the dialect's own provider).
    pricing_provider: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    # No response head within this long counts as a failed attempt (None: only connect/read timeouts apply).
    first_byte_timeout_s: float | None = None


class RouteConfig(_Strict):
    models: list[str]
    providers: list[str]
    # Attempts before the first byte (failover, then repeats): default one per provider.
    max_attempts: int | None = None
    # Spread first attempts over `providers` by these weights; failover then follows the list.
    weights: list[int] | None = None
    # Hold the response head until the first body bytes arrive, so a stream whose first event is an error can
    # still fail over (adds the time to first token to the time to the head).
    gate_first_chunk: bool = False


class RetryConfig(_Strict):
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    # A Retry-After up to this is waited for; a longer one moves to the next provider at once.
    retry_after_cap_s: float = 10.0


class KeyConfig(_Strict):
    name: str
    sha256: str


class Config(_Strict):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    metering: MeteringConfig = msgspec.field(default_factory=MeteringConfig)
    ledger: LedgerConfig = msgspec.field(default_factory=LedgerConfig)
    demo: DemoConfig = msgspec.field(default_factory=DemoConfig)
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    keys: list[KeyConfig] = msgspec.field(default_factory=list)
    prices: dict[str, PriceOverride] = msgspec.field(default_factory=dict)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)


def _check(config: Config, source: str) -> None:
    names = [p.name for p in config.providers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: duplicate provider name in [[providers]]: {names}")
    for p in config.providers:
        if not p.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: providers.{p.name}.base_url must start with http:// or https://")
    for i, route in enumerate(config.routes):
        for name in route.providers:
            if name not in names:
                raise ConfigError(f"{source}: routes[{i}].providers names unknown provider {name!r}")
        if not route.providers:
            raise ConfigError(f"{source}: routes[{i}].providers is empty")
        if route.max_attempts is not None and route.max_attempts < 1:
            raise ConfigError(f"{source}: routes[{i}].max_attempts must be >= 1")
        if route.weights is not None and (
            len(route.weights) != len(route.providers) or any(w < 0 for w in route.weights) or not any(route.weights)
        ):
            raise ConfigError(f"{source}: routes[{i}].weights needs one non-negative weight per provider, not all 0")
    for key in config.keys:
        if not _is_sha256_hex(key.sha256):
            raise ConfigError(f"{source}: keys.{key.name}.sha256 is not a SHA-256 hex digest")
    admin_digest = config.admin.key_sha256
    if admin_digest is not None:
        if not _is_sha256_hex(admin_digest):
            raise ConfigError(f"{source}: admin.key_sha256 is not a SHA-256 hex digest")
        if admin_digest.lower() in {key.sha256.lower() for key in config.keys}:
            raise ConfigError(f"{source}: admin.key_sha256 is also a client key in [[keys]]: give admin its own key")
    if config.server.workers < 1:
        raise ConfigError(f"{source}: server.workers must be >= 1")
    if (config.server.certfile is None) != (config.server.keyfile is None):
        raise ConfigError(f"{source}: server.certfile and server.keyfile go together: set both or neither")
    if config.server.max_body_bytes < 1:
        raise ConfigError(f"{source}: server.max_body_bytes must be >= 1")


def _is_sha256_hex(digest: str) -> bool:
    return len(digest) == 64 and all(c in "0123456789abcdef" for c in digest.lower())


def parse_config(text: str | bytes, source: str = "<config>") -> Config:
    try:
        config = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _check(config, source)
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config named by `path`, else by $TEEPROXY_CONFIG, else `config/teeproxy.toml`."""
    chosen = path or os.environ.get(CONFIG_ENV) or "config/teeproxy.toml"
    file = pathlib.Path(chosen)
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror}") from None
    config = parse_config(text, str(file))
    return _relative_to(config, file.resolve().parent)


def _relative_to(config: Config, directory: pathlib.Path) -> Config:
    """File paths in a config are relative to the config file, wherever the command runs from."""
    server = config.server
    if server.certfile is not None and server.keyfile is not None:
        server.certfile = str(directory / server.certfile)
        server.keyfile = str(directory / server.keyfile)
    if config.ledger.path is not None:
        config.ledger.path = str(directory / config.ledger.path)
    if config.log.access_path is not None:
        config.log.access_path = str(directory / config.log.access_path)
    return config

"""The config in force, as the request paths read it: a :class:`Snapshot` per loaded config, swapped whole on
reload (:class:`Live`), and the upstream TLS settings made from it."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

from yarl import URL

from .config import Config, IPNetwork
from .policy import Policy


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded config with everything the handler derives from it; swapped whole on reload."""

    config: Config
    policy: Policy
    upstream: URL
    upstream_base: str  # "http://host:port/base" without a trailing slash
    upstream_path: str  # "/base" (raw, without a trailing slash), prefixed to every request target
    upstream_host: str  # Host header value for host_header: upstream
    # Everything an upstream pool (and the WebSocket session) is made from: a reload that changes any of it gets
    # a new one, and requests already running finish on theirs.
    pool_key: tuple[object, ...] = ()

    @classmethod
    def build(cls, config: Config) -> Snapshot:
        up = URL(config.upstream.url)
        host = up.raw_host or ""
        if up.explicit_port:
            host = f"{host}:{up.port}"
        return cls(
            config=config,
            policy=Policy.from_config(config),
            upstream=up,
            upstream_base=config.upstream.url.rstrip("/"),
            upstream_path=up.raw_path.rstrip("/"),
            upstream_host=host,
            pool_key=(up.scheme, up.raw_host, up.port, config.upstream.tls_verify, config.upstream.ca_file,
                      config.upstream.connect_timeout, config.upstream.read_timeout,
                      config.upstream.max_connections),
        )

    def trusts(self, remote: str | None) -> bool:
        nets: tuple[IPNetwork, ...] = self.config.listen.trusted_proxies
        if not nets or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in net for net in nets)


class Live:
    """The config in force. Handlers read ``current`` once, so in-flight requests finish on theirs."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot


def pool_ssl(config: Config) -> ssl.SSLContext:
    """The TLS context for an https upstream: verified (system CAs or ca_file), or not at all."""
    setting = client_ssl(config)
    if isinstance(setting, ssl.SSLContext):
        return setting
    ctx = ssl.create_default_context()
    if setting is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_ssl(config: Config) -> ssl.SSLContext | bool:
    """The upstream TLS setting for the connector: verified (default CA or ca_file) or off."""
    up = config.upstream
    if not up.tls_verify:
        return False
    if up.ca_file:
        return ssl.create_default_context(cafile=up.ca_file)
    return True

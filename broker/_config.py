"""Broker configuration: one TOML file parsed once into frozen dataclasses.

Relative paths are resolved against the config file's folder. Every option has a safe
default except the TLS files, which a broker cannot run without. An unknown key is an error
naming the closest known one. Every key, its default and meaning: docs/configuration.md.

```toml
[broker]
id = "broker"
listen = "127.0.0.1:7443"
state_dir = "state"            # SQLite database and log live here (and the log key)
ticket_ttl_s = 600
store = "sqlite"               # or "postgres": several broker replicas behind one address
postgres_dsn_env = "YUMEN_BROKER_DSN"   # the environment variable holding the DSN (never the file)
postgres_schema = "public"
postgres_max_connections = 16
sweep_interval_s = 30          # how often queued jobs are re-checked (lapsed licenses, replicas)
health = ""                    # plaintext HTTP /healthz and /readyz for kubelet probes (empty: off)

[tls]
ca = "pki/ca.crt"
cert = "pki/broker.crt"
key = "pki/broker.key"

[policy]                       # seeds the first policy version; later versions are set
model = ""                     # with `yumen admin policy set` and kept in the state
rules = "policy.csv"           # Casbin p and g lines (empty: the packaged default)
settings = "policy.toml"       # level defaults, rule obligations (empty: default)
prices = ""                    # the price catalogue a first start logs (empty: default_prices.toml)

[log]
origin = "yumen.local/log"     # checkpoint origin line
key = "state/log.key"          # Ed25519 log key; created on first start

[limits]                       # what callers may hold; defaults in yumen.broker._guard.Limits
request_bytes = 65536          # see docs/broker-state.md, "Limits", for every key
```
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from yumen.config import Table, read_toml, unknown_key_error
from yumen.errors import Code, YumenError
from yumen.policy import default_policy_paths
from yumen.rpc import TlsFiles

from yumen.broker._guard import Limits

__all__ = ["BrokerConfig", "load_broker_config"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """The broker's settings. The defaults here are the only ones (docs/configuration.md)."""

    tls: TlsFiles
    state_dir: Path  # default: "state" next to the config file
    policy_model: Path  # defaults: the packaged policy (yumen.policy.default_policy_paths)
    policy_rules: Path
    policy_settings: Path
    policy_prices: Path  # default: the packaged default_prices.toml
    log_key: Path  # default: state_dir/log.key
    id: str = "broker"
    listen: str = "127.0.0.1:7443"
    log_origin: str = "yumen.local/log"
    ticket_ttl_s: int = 600
    store: str = "sqlite"
    postgres_dsn_env: str = "YUMEN_BROKER_DSN"
    postgres_schema: str = "public"
    postgres_max_connections: int = 16
    sweep_interval_s: float = 30.0
    health_listen: str = ""  # plaintext /healthz and /readyz (yumen.health), e.g. "0.0.0.0:8080"
    limits: Limits = dataclasses.field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.store not in ("sqlite", "postgres"):
            raise YumenError(Code.CONFIG, f"[broker] store {self.store!r} is unknown", hint='use "sqlite" or "postgres"')
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.postgres_schema):
            raise YumenError(Code.CONFIG, f"[broker] postgres_schema {self.postgres_schema!r} is not a plain lowercase name")
        if self.postgres_max_connections < 1:
            raise YumenError(Code.CONFIG, "[broker] postgres_max_connections must be at least 1")
        if self.ticket_ttl_s < 1:
            raise YumenError(Code.CONFIG, "[broker] ticket_ttl_s must be at least 1 second")
        if not 0 < self.sweep_interval_s <= 3600:
            raise YumenError(Code.CONFIG, "[broker] sweep_interval_s must be more than 0 and at most 3600 seconds")
        if not self.listen.rpartition(":")[2].isdigit():
            raise YumenError(Code.CONFIG, f"[broker] listen {self.listen!r} is not host:port",
                             hint='e.g. listen = "0.0.0.0:7443"')

    @property
    def db_path(self) -> Path:
        return self.state_dir / "broker.db"


# The keys each table takes, with their kind, and the BrokerConfig field each one sets.
_BROKER_KEYS = {"id": ("str", "id"), "listen": ("str", "listen"), "state_dir": ("str", None),
                "ticket_ttl_s": ("int", "ticket_ttl_s"), "store": ("str", "store"),
                "postgres_dsn_env": ("str", "postgres_dsn_env"), "postgres_schema": ("str", "postgres_schema"),
                "postgres_max_connections": ("int", "postgres_max_connections"),
                "sweep_interval_s": ("number", "sweep_interval_s"), "health": ("str", "health_listen")}
_TABLES = ("broker", "tls", "policy", "log", "limits")


def load_broker_config(path: Path) -> BrokerConfig:
    """Parse the broker's TOML file; every unknown key and wrong type is an error naming the file."""
    path = Path(path)
    doc, p = read_toml(path, "broker config")
    source = f"broker config {path}"
    for name in doc:
        if name not in _TABLES:
            raise unknown_key_error(name, _TABLES, where="", source=source)
    b = Table(doc.get("broker"), _BROKER_KEYS, where="[broker]", source=source)
    tls = Table(doc.get("tls"), ("ca", "cert", "key"), where="[tls]", source=source)
    pol = Table(doc.get("policy"), ("model", "rules", "settings", "prices"), where="[policy]", source=source)
    lg = Table(doc.get("log"), ("origin", "key"), where="[log]", source=source)
    lim = Table(doc.get("limits"), [f.name for f in dataclasses.fields(Limits)], where="[limits]", source=source)

    kwargs: dict[str, Any] = {}
    for key, (kind, field) in _BROKER_KEYS.items():
        if field is not None and key in b:
            kwargs[field] = b.get(key, kind)
    if "sweep_interval_s" in kwargs:
        kwargs["sweep_interval_s"] = float(kwargs["sweep_interval_s"])
    for key in ("ca", "cert", "key"):
        if not tls.get(key, "str", ""):
            raise tls.error(f"{key} is required", "point it at the files `yumen pki issue` wrote")
    model_default, rules_default, settings_default = default_policy_paths()
    state_dir = p(b.get("state_dir", "str", "state"))
    if "origin" in lg:
        kwargs["log_origin"] = lg.get("origin", "str")
    limits = {key: lim.get(key, "int") for key in lim.raw}
    model, rules, settings, prices = (pol.get(k, "str", "") for k in ("model", "rules", "settings", "prices"))
    try:
        return BrokerConfig(
            state_dir=state_dir,
            tls=TlsFiles(ca=p(tls.get("ca", "str")), cert=p(tls.get("cert", "str")), key=p(tls.get("key", "str"))),
            policy_model=p(model) if model else model_default,
            policy_rules=p(rules) if rules else rules_default,
            policy_settings=p(settings) if settings else settings_default,
            policy_prices=p(prices) if prices else settings_default.with_name("default_prices.toml"),
            log_key=p(lg.get("key", "str")) if lg.get("key", "str", "") else state_dir / "log.key",
            limits=Limits(**limits),
            **kwargs,
        )
    except YumenError as e:
        raise YumenError(Code.CONFIG, f"{source}: {e.message}", hint=e.hint) from None

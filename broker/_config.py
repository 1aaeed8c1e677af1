"""Broker configuration: one TOML file parsed once into frozen dataclasses.

Relative paths are resolved against the config file's folder. Every option has a safe
default except the TLS files, which a broker cannot run without.

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
settings = "policy.toml"       # level defaults, rule obligations, pricing (empty: default)

[log]
origin = "yumen.example/log"   # checkpoint origin line
key = "state/log.key"          # Ed25519 log key; created on first start

[limits]                       # what callers may hold; defaults in yumen.broker._guard.Limits
request_bytes = 65536          # see docs/broker-state.md, "Limits", for every key
```
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

from yumen.config import read_toml
from yumen.errors import Code, YumenError
from yumen.policy import default_policy_paths
from yumen.rpc import TlsFiles

from yumen.broker._guard import Limits

__all__ = ["BrokerConfig", "load_broker_config"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    id: str
    listen: str
    state_dir: Path
    tls: TlsFiles
    policy_model: Path
    policy_rules: Path
    policy_settings: Path
    log_origin: str
    log_key: Path
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

    @property
    def db_path(self) -> Path:
        return self.state_dir / "broker.db"


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    sec = doc.get(name, {})
    if not isinstance(sec, dict):
        raise YumenError(Code.CONFIG, f"[{name}] must be a table")
    return sec


def load_broker_config(path: Path) -> BrokerConfig:
    path = Path(path)
    doc, p = read_toml(path, "broker config")

    b, tls, pol, lg, lim = (_section(doc, n) for n in ("broker", "tls", "policy", "log", "limits"))
    known = {f.name for f in dataclasses.fields(Limits)}
    for key in lim:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise YumenError(Code.CONFIG, f"broker config {path}: [limits] has no key {key!r}",
                             hint=f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}")
    for key in ("ca", "cert", "key"):
        if key not in tls:
            raise YumenError(Code.CONFIG, f"broker config {path}: [tls] {key} is required")
    model_default, rules_default, settings_default = default_policy_paths()
    state_dir = p(b.get("state_dir", "state"))
    return BrokerConfig(
        id=str(b.get("id", "broker")),
        listen=str(b.get("listen", "127.0.0.1:7443")),
        state_dir=state_dir,
        tls=TlsFiles(ca=p(tls["ca"]), cert=p(tls["cert"]), key=p(tls["key"])),
        policy_model=p(pol["model"]) if pol.get("model") else model_default,
        policy_rules=p(pol["rules"]) if pol.get("rules") else rules_default,
        policy_settings=p(pol["settings"]) if pol.get("settings") else settings_default,
        log_origin=str(lg.get("origin", "yumen.local/log")),
        log_key=p(lg["key"]) if lg.get("key") else state_dir / "log.key",
        ticket_ttl_s=int(b.get("ticket_ttl_s", 600)),
        store=str(b.get("store", "sqlite")),
        postgres_dsn_env=str(b.get("postgres_dsn_env", "YUMEN_BROKER_DSN")),
        postgres_schema=str(b.get("postgres_schema", "public")),
        postgres_max_connections=int(b.get("postgres_max_connections", 16)),
        sweep_interval_s=float(b.get("sweep_interval_s", 30)),
        health_listen=str(b.get("health", "")),
        limits=Limits(**lim),
    )

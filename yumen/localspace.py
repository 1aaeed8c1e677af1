"""A whole data space on one machine: CA, broker, connectors, operators, as real processes.

Used by ``yumen demo``, by the end-to-end tests and by the benchmarks, so all three
exercise exactly what a department and an operator would run: ``yumen broker serve`` and
``yumen connector serve`` as separate processes talking mutual-TLS gRPC.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from yumen.errors import Code, YumenError
from yumen.identity import Role, init_ca, issue
from yumen.policy import default_policy_paths
from yumen.rpc import TlsFiles

__all__ = ["LocalSpace", "Department", "OPERATOR_LICENSE"]

OPERATOR_LICENSE = "LIC-2026-0001"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Department:
    """A department and the demo datasets it serves.

    Each dataset is ``(demo dataset id, rows)`` or ``(demo dataset id, rows, registered id)``:
    the third form registers a demo dataset under another id, so several departments can
    hold datasets of the same schema (e.g. the outpatient visits of several cities).
    """

    id: str
    datasets: tuple[tuple[Any, ...], ...]
    local_policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    # registration fields to change, by registered dataset id (privacy_unit is merged key by key;
    # a ``verification`` table opens the dataset to verification queries, docs/verification.md)
    registration: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # the connector's [quality] table (docs/quality.md)
    quality: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the department's consent to auditors re-running logged jobs (off unless a department says so)
    allow_reexecution: bool = True

    def dataset_ids(self) -> list[str]:
        return [d[2] if len(d) > 2 else d[0] for d in self.datasets]


DEFAULT_DEPARTMENTS = (
    Department(id="weather-bureau", datasets=(("weather-daily", 365_000),)),
    Department(id="health-commission", datasets=(("outpatient-visits", 1_000_000),)),
    Department(id="transport-dept", datasets=(("bus-trips", 500_000),)),
    Department(id="culture-tourism", datasets=(("scenic-visits", 200_000),)),
    Department(id="agriculture-dept", datasets=(("farm-yields", 100_000),)),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


class LocalSpace:
    def __init__(
        self,
        root: Path,
        *,
        departments: tuple[Department, ...] = DEFAULT_DEPARTMENTS,
        port: int | None = None,
        sandbox: str = "bwrap",
        extra_policy: str = "",
        seed: int = 2026,
        broker_settings: str = "",
        timing: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.departments = departments
        self.port = port or free_port()
        self.sandbox = sandbox
        self.extra_policy = extra_policy
        self.seed = seed
        self.broker_settings = broker_settings  # extra [broker] lines, e.g. store = "postgres"
        # every connector's [timing]: on one local machine a short allowance keeps algorithm
        # jobs (held to their deadline) quick
        self.timing = dict(timing) if timing is not None else {"allowance_s": 3.0, "wave_slack_s": 0.5}
        self.pki = self.root / "pki"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- setup ----------------------------------------------------------------------
    def setup(self) -> None:
        from yumen.connectors import demo_registration, generate_demo as generate

        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "logs").mkdir(parents=True)
        init_ca(self.pki, name="Yumen Local Data Space CA")
        issue(self.pki, role=Role.BROKER, name="broker")
        issue(self.pki, role=Role.OPERATOR, name="operator-1", license=OPERATOR_LICENSE)
        issue(self.pki, role=Role.AUDITOR, name="auditor-1")
        issue(self.pki, role=Role.ADMIN, name="admin-1")
        issue(self.pki, role=Role.OPERATING_BODY, name="operating-body-1")
        _, rules_default, settings_default = default_policy_paths()
        (self.root / "policy.csv").write_text(rules_default.read_text() + self.extra_policy)
        (self.root / "policy.toml").write_text(settings_default.read_text())
        (self.root / "broker.toml").write_text(
            "[broker]\n"
            f'id = "broker"\nlisten = "{self.address}"\nstate_dir = "broker-state"\n{self.broker_settings}\n'
            '[tls]\nca = "pki/ca.crt"\ncert = "pki/broker.crt"\nkey = "pki/broker.key"\n\n'
            '[policy]\nrules = "policy.csv"\nsettings = "policy.toml"\n\n'
            '[log]\norigin = "yumen.local/log"\nkey = "broker-state/log.key"\n'
        )
        for dep in self.departments:
            issue(self.pki, role=Role.CONNECTOR, name=dep.id, department=dep.id)
            lines = [
                "[connector]", f'id = "{dep.id}"', f'department = "{dep.id}"', f'broker = "{self.address}"',
                f'state_dir = "{dep.id}-state"', f'sandbox = "{self.sandbox}"',
                f'metrics = "127.0.0.1:{free_port()}"', f"allow_reexecution = {_toml_value(dep.allow_reexecution)}", "",
                "[tls]", 'ca = "pki/ca.crt"', f'cert = "pki/{dep.id}.crt"', f'key = "pki/{dep.id}.key"',
                'broker_certificate = "pki/broker.crt"', "",
                "[timing]", *(f"{k} = {_toml_value(v)}" for k, v in self.timing.items()), "",
            ]
            if dep.local_policy:
                lines.append("[local_policy]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in dep.local_policy.items()]
                lines.append("")
            if dep.quality:
                lines.append("[quality]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in dep.quality.items()]
                lines.append("")
            for n, (ds, rows, *alias) in enumerate(dep.datasets):
                dataset_id = alias[0] if alias else ds
                path = self.root / "data" / dep.id / f"{dataset_id}.parquet"
                generate(ds, rows, self.seed + 7919 * (n + 1) * len(dep.id), path)
                reg = demo_registration(ds)
                if alias:
                    reg.update(id=dataset_id, department=dep.id)
                change = dict(dep.registration.get(dataset_id, {}))
                if "privacy_unit" in change:
                    change["privacy_unit"] = {**reg["privacy_unit"], **change["privacy_unit"]}
                reg.update(change)
                reg["source"] = {"kind": "parquet", "path": str(path.relative_to(self.root))}
                lines.append("[[datasets]]")
                for k, v in reg.items():
                    lines.append(f"{k} = {_toml_value(v)}")
                lines.append("")
            (self.root / f"{dep.id}.toml").write_text("\n".join(lines))

    # -- processes ------------------------------------------------------------------
    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab")
        env = dict(os.environ, YUMEN_LOG_LEVEL=os.environ.get("YUMEN_LOG_LEVEL", "INFO"), PYTHONUNBUFFERED="1")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "yumen", *args], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )

    def start_broker(self) -> None:
        self._spawn("broker", "broker", "serve", "--config", "broker.toml")
        self._wait_health()

    def start_replica(self, name: str, port: int) -> str:
        """A second broker process on ``port`` sharing this one's configuration and state
        (meaningful with ``store = "postgres"``); returns its address."""
        text = (self.root / "broker.toml").read_text().replace(f'listen = "{self.address}"', f'listen = "127.0.0.1:{port}"')
        (self.root / f"{name}.toml").write_text(text)
        self._spawn(name, "broker", "serve", "--config", f"{name}.toml")
        self._wait_health(address=f"127.0.0.1:{port}", name=name)
        return f"127.0.0.1:{port}"

    def start_connector(self, department: str) -> None:
        self._spawn(department, "connector", "serve", "--config", f"{department}.toml")

    def issue_license(self) -> None:
        """As the data authority, license the local operator for L1–L3 data for a year."""
        import datetime as dt

        from yumen.catalog import Level
        from yumen.client import AdminClient
        from yumen.jobs import Purpose
        from yumen.policy import License

        now = dt.datetime.now(dt.timezone.utc)
        with AdminClient(self.address, self.tls("admin-1")) as admin:
            if OPERATOR_LICENSE not in {x.id for x in admin.licenses()}:
                admin.issue_license(License(
                    id=OPERATOR_LICENSE, organization="Hexi Corridor Analytics Co.",
                    purposes=frozenset(Purpose), levels=frozenset({Level.L1, Level.L2, Level.L3}),
                    valid_from=now - dt.timedelta(minutes=5), valid_until=now + dt.timedelta(days=365),
                ))

    def start(self, *, timeout: float = 60) -> None:
        self.start_broker()
        self.issue_license()
        for dep in self.departments:
            self.start_connector(dep.id)
        self.wait_online([ds for dep in self.departments for ds in dep.dataset_ids()], timeout=timeout)

    def _wait_health(self, timeout: float = 30, *, address: str = "", name: str = "broker") -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from yumen.rpc import secure_channel

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(name)
            ch = secure_channel(address or self.address, self.tls("operator-1"))
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            finally:
                ch.close()
            time.sleep(0.2)
        raise YumenError(Code.UNAVAILABLE, f"{name} did not become healthy in {timeout:.0f} s", hint=f"see {self.root}/logs/{name}.log")

    def wait_online(self, datasets: list[str], *, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                for name in self.procs:
                    self._check_alive(name)
                online = {reg.id for reg, on in c.catalog() if on}
                if set(datasets) <= online:
                    return
                time.sleep(0.2)
        raise YumenError(Code.UNAVAILABLE, f"datasets {datasets} did not come online in {timeout:.0f} s", hint=f"see {self.root}/logs/")

    def _check_alive(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            tail = (self.root / "logs" / f"{name}.log").read_text(errors="replace")[-2000:]
            raise YumenError(Code.INTERNAL, f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop_process(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "broker"] + ["broker"]:
            self.stop_process(name)

    def __enter__(self) -> "LocalSpace":
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # -- clients ----------------------------------------------------------------------
    def tls(self, name: str) -> TlsFiles:
        return TlsFiles(ca=self.pki / "ca.crt", cert=self.pki / f"{name}.crt", key=self.pki / f"{name}.key")

    def client(self, name: str = "operator-1") -> Any:
        from yumen.client import YumenClient

        return YumenClient(self.address, self.tls(name))

    def cli_env(self, name: str = "operator-1") -> dict[str, str]:
        t = self.tls(name)
        return dict(os.environ, YUMEN_BROKER=self.address, YUMEN_CA=str(t.ca), YUMEN_CERT=str(t.cert), YUMEN_KEY=str(t.key))

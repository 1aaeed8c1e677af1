"""Every overlay of k8s/ renders, validates against the Kubernetes schema offline (strict),
passes checkov with no failed check, and holds the deployment's security invariants."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import OVERLAYS, ROOT

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "PodTemplate", "Pod"}


def _pod_spec(obj: dict) -> dict:
    if obj["kind"] == "PodTemplate":
        return obj["template"]["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _pods(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in POD_KINDS]


def _ns(obj: dict) -> str:
    return obj["metadata"].get("namespace", "")


def test_there_is_a_trial_and_a_province_overlay():
    assert {"trial", "province"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema_strictly(rendered, overlay, tmp_path):
    import kubernetes_validate

    text, objs = rendered[overlay]
    assert len(objs) > 10
    for obj in objs:
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    # and through the command-line program, as a province's CI would run it
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(text)
    exe = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run([str(exe), "--strict", "--quiet", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_misspelt_field_fails_strict_validation():
    import kubernetes_validate

    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 1}], "selectr": {"a": "b"}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)


@pytest.mark.slow
def test_checkov_finds_no_failed_check_and_every_skip_says_why(rendered, checkov, tmp_path):
    for overlay, (text, _) in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(text)
    out = subprocess.run([str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download",
                          "--output", "json"], capture_output=True, text=True, timeout=900)
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, failed
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100
    for r in reports:
        assert r["summary"]["skipped"] == len(r["results"]["skipped_checks"])
        for c in r["results"]["skipped_checks"]:
            reason = (c.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason) > 20, (c["check_id"], c["resource"], reason)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_unprivileged_bounded_and_carries_no_token(rendered, overlay):
    _, objs = rendered[overlay]
    assert _pods(objs)
    for obj in _pods(objs):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = _pod_spec(obj)
        assert spec.get("automountServiceAccountToken") is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000 or obj["kind"] == "PodTemplate", where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, kind)
            for env in c.get("env", []):
                # secrets never sit in a manifest as literal values
                assert "value" not in env or env["name"].endswith("_FILE") or not any(
                    w in env["name"].upper() for w in ("DSN", "PASSWORD", "KEY")), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespace_enforces_restricted_and_denies_all_traffic_by_default(rendered, overlay):
    _, objs = rendered[overlay]
    namespaces = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Namespace"}
    assert {"yumen", "yumen-jobs"} <= set(namespaces)
    for name, ns in namespaces.items():
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted", name
    for obj in objs:
        if obj["kind"] not in ("Namespace", "RuntimeClass"):
            assert _ns(obj) in namespaces, (obj["kind"], obj["metadata"]["name"], _ns(obj))
    deny = {_ns(o) for o in objs if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"] == {}
            and set(o["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not o["spec"].get("ingress")
            and not o["spec"].get("egress")}
    assert deny == set(namespaces)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_broker_runs_replicas_on_postgres_with_the_dsn_from_a_secret_and_probes(rendered, overlay):
    from yumen.broker._config import load_broker_config

    _, objs = rendered[overlay]
    broker = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "yumen-broker")
    assert broker["spec"]["replicas"] >= 2
    c = _pod_spec(broker)["containers"][0]
    dsn = next(e for e in c["env"] if e["name"] == "YUMEN_BROKER_DSN")
    assert dsn["valueFrom"]["secretKeyRef"]["name"] == "yumen-broker-postgres"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "probes", probe
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("yumen-broker-config"))
    doc = tomllib.loads(config["data"]["broker.toml"])
    assert doc["broker"]["store"] == "postgres"
    assert doc["broker"]["health"].endswith(f":{ports['probes']}")
    assert doc["broker"]["listen"].endswith(f":{ports['grpc']}")
    service = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "yumen-broker")
    assert [p["port"] for p in service["spec"]["ports"]] == [ports["grpc"]]  # the probe port is not a service
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "yumen-broker")
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == [ports["grpc"]]


def _config_file(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configs_in_the_manifests_load_with_the_real_loaders(rendered, overlay, tmp_path):
    from yumen.broker._config import load_broker_config
    from yumen.connectors._config import load_connector_config

    _, objs = rendered[overlay]
    maps = [o for o in objs if o["kind"] == "ConfigMap"]
    broker = next(m for m in maps if "broker.toml" in m.get("data", {}))
    cfg = load_broker_config(_config_file(tmp_path, broker["data"]["broker.toml"], "broker.toml"))
    assert cfg.store == "postgres" and cfg.health_listen
    connectors = [m for m in maps if "connector.toml" in m.get("data", {})]
    assert connectors
    for m in connectors:
        cc = load_connector_config(_config_file(tmp_path, m["data"]["connector.toml"], f"{_ns(m)}.toml"))
        assert _ns(m) == f"yumen-dept-{cc.department}"
        assert cc.health_listen and cc.broker.startswith("yumen-broker.yumen.svc:")
        assert set(cc.local_policy.tiers) == {"query"}  # no algorithm tier in the cluster yet


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connectors_are_outbound_only_and_reach_just_the_broker_dns_and_their_source(rendered, overlay):
    _, objs = rendered[overlay]
    connectors = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "yumen-connector"]
    assert connectors
    services = [o for o in objs if o["kind"] == "Service"]
    for dep in connectors:
        ns = _ns(dep)
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
        assert not [s for s in services if _ns(s) == ns], "a connector needs no Service"
        policy = next(o for o in objs if o["kind"] == "NetworkPolicy" and _ns(o) == ns
                      and o["metadata"]["name"] == "yumen-connector")
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["ingress"] == []
        egress = policy["spec"]["egress"]
        to_broker, dns, *sources = egress
        assert to_broker["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "yumen-broker"}
        assert [p["port"] for p in to_broker["ports"]] == [7443]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert len(sources) <= 1 and all(r.get("to") and r.get("ports") for r in sources)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_pods_run_under_gvisor_with_no_network(rendered, overlay):
    _, objs = rendered[overlay]
    rc = next(o for o in objs if o["kind"] == "RuntimeClass")
    assert rc["metadata"]["name"] == "gvisor" and rc["handler"] == "runsc"
    template = next(o for o in objs if o["kind"] == "PodTemplate")
    assert _ns(template) == "yumen-jobs" and _pod_spec(template)["runtimeClassName"] == "gvisor"
    policies = [o for o in objs if o["kind"] == "NetworkPolicy" and _ns(o) == "yumen-jobs"]
    assert len(policies) == 1 and not policies[0]["spec"].get("egress") and not policies[0]["spec"].get("ingress")
    assert any(o["kind"] == "ResourceQuota" and _ns(o) == "yumen-jobs" for o in objs)


def test_the_image_the_manifests_name_is_built_by_the_dockerfile(rendered):
    dockerfile = (ROOT / "image" / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and 'ENTRYPOINT ["yumen"]' in dockerfile
    for overlay, (_, objs) in rendered.items():
        images = {c["image"] for o in _pods(objs) for c in _pod_spec(o)["containers"]}
        assert any(i.rsplit(":", 1)[0].endswith("/yumen") for i in images), (overlay, images)

"""Configuration files: an unknown or misspelt key anywhere is an error that names the key, the
file and the closest valid key; a value of the wrong type is a clear error (no traceback from
the CLI); defaults live in the dataclasses and nowhere else; docs/configuration.md lists every key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from yumen.broker._config import _BROKER_KEYS, BrokerConfig, load_broker_config
from yumen.broker._guard import Limits
from yumen.connectors._config import (
    _COLUMN, _CONNECTOR, _DATASET, _LOCAL_POLICY, _PRIVACY_UNIT, _TIMING, ConnectorConfig, LocalPolicy,
    load_connector_config,
)
from yumen.errors import Code, YumenError, exit_code
from yumen.policy import PolicyBundle, PolicyEngine, default_policy_paths
from yumen.policy._engine import _LEVEL_KEYS, _RULE_KEYS

ROOT = Path(__file__).resolve().parents[3]

CONNECTOR = """\
[connector]
id = "weather-bureau"
department = "weather-bureau"
broker = "127.0.0.1:7443"

[tls]
ca = "pki/ca.crt"
cert = "pki/weather-bureau.crt"
key = "pki/weather-bureau.key"
broker_certificate = "pki/broker.crt"

[local_policy]
max_epsilon_per_job = "0.5"

[[datasets]]
id = "weather-daily"
title = "Daily readings"
level = "L3"
privacy_unit = { column = "station_id", max_contributions = 366 }
columns = [
  { name = "station_id", type = "string" },
  { name = "temp_mean_c", type = "float", lower = -40, upper = 45 },
]
source = { kind = "parquet", path = "data/weather.parquet" }
"""

BROKER = """\
[broker]
listen = "127.0.0.1:7443"

[tls]
ca = "pki/ca.crt"
cert = "pki/broker.crt"
key = "pki/broker.key"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _config_error(load, path: Path) -> YumenError:
    with pytest.raises(YumenError) as info:
        load(path)
    assert info.value.code is Code.CONFIG
    assert str(path) in info.value.message, info.value.message
    return info.value


def test_a_valid_connector_config_parses_with_the_values_it_states(tmp_path):
    c = load_connector_config(_write(tmp_path, "c.toml", CONNECTOR))
    reg = c.datasets[0].registration
    assert reg.level.value == "L3" and reg.privacy_unit.column == "station_id"
    assert reg.privacy_unit.max_contributions == 366
    assert c.local_policy.max_epsilon_per_job == LocalPolicy(max_epsilon_per_job=1).max_epsilon_per_job / 2


@pytest.mark.parametrize(("before", "after", "key", "closest"), [
    # the three misspellings that silently weakened privacy before
    ("privacy_unit = {", "privacy_unt = {", "privacy_unt", "privacy_unit"),
    ('level = "L3"', 'levl = "L3"', "levl", "level"),
    ("[local_policy]", "[local_polcy]", "local_polcy", "local_policy"),
    # and one in every other table
    ('broker = "127.0.0.1', 'brokr = "127.0.0.1', "brokr", "broker"),
    ("broker_certificate =", "broker_certficate =", "broker_certficate", "broker_certificate"),
    ('max_epsilon_per_job = "0.5"', 'max_epsilon_per_jobs = "0.5"', "max_epsilon_per_jobs", "max_epsilon_per_job"),
    ("max_contributions = 366", "max_contribution = 366", "max_contribution", "max_contributions"),
    ("lower = -40", "lowr = -40", "lowr", "lower"),
    ('title = "Daily', 'titel = "Daily', "titel", "title"),
    ('kind = "parquet"', 'knd = "parquet"', "knd", "kind"),
])
def test_a_misspelt_connector_key_names_the_key_the_file_and_the_closest_valid_key(tmp_path, before, after, key,
                                                                                   closest):
    assert before in CONNECTOR
    path = _write(tmp_path, "connector.toml", CONNECTOR.replace(before, after, 1))
    with pytest.raises(YumenError) as info:
        load_connector_config(path)
    text = info.value.message + " " + info.value.hint
    assert info.value.code is Code.CONFIG
    assert str(path) in text and repr(key) in text and closest in text, text


@pytest.mark.parametrize("table, key", [
    ("[connector]", "timeout"), ("[timing]", "allowance"), ("[quality]", "max_nul_rate"),
])
def test_unknown_keys_in_the_remaining_tables_are_errors(tmp_path, table, key):
    text = CONNECTOR.replace("[local_policy]", f"{table}\n{key} = 1\n\n[local_policy]") if table != "[connector]" \
        else CONNECTOR.replace('broker = "127', f'{key} = 1\nbroker = "127')
    with pytest.raises(YumenError) as info:
        load_connector_config(_write(tmp_path, "c.toml", text))
    assert key in info.value.message


@pytest.mark.parametrize(("before", "after", "says"), [
    ('broker = "127.0.0.1:7443"', 'broker = "127.0.0.1:7443"\nmax_parallel_jobs = "two"', "max_parallel_jobs must be a whole number"),
    ('level = "L3"', "level = 3", "level must be a string"),
    ("max_contributions = 366", 'max_contributions = "366"', "max_contributions must be a whole number"),
    ('max_epsilon_per_job = "0.5"', "max_epsilon_per_job = 0.5", "write it as a decimal string"),
    ('max_epsilon_per_job = "0.5"', 'tiers = ["querry"]', "did you mean 'query'"),
    ("lower = -40", 'lower = "cold"', "lower must be a number"),
    ('broker = "127.0.0.1:7443"', 'broker = "127.0.0.1:7443"\nallow_reexecution = "yes"', "true or false"),
    ('broker = "127.0.0.1:7443"', 'broker = "127.0.0.1:7443"\nsandbox = "chroot"', "sandbox 'chroot' is unknown"),
])
def test_a_connector_value_of_the_wrong_type_is_a_clear_error(tmp_path, before, after, says):
    err = _config_error(load_connector_config, _write(tmp_path, "c.toml", CONNECTOR.replace(before, after, 1)))
    assert says in err.message + err.hint, err.message


def test_reexecution_is_off_unless_the_department_turns_it_on(tmp_path):
    assert load_connector_config(_write(tmp_path, "a.toml", CONNECTOR)).allow_reexecution is False
    on = CONNECTOR.replace('broker = "127.0.0.1:7443"', 'broker = "127.0.0.1:7443"\nallow_reexecution = true')
    assert load_connector_config(_write(tmp_path, "b.toml", on)).allow_reexecution is True


def test_connector_defaults_come_from_the_dataclasses(tmp_path):
    c = load_connector_config(_write(tmp_path, "c.toml", CONNECTOR.replace('max_epsilon_per_job = "0.5"', "")))
    for f in dataclasses.fields(ConnectorConfig):
        if f.default is not dataclasses.MISSING:
            assert getattr(c, f.name) == f.default, f.name
    assert c.local_policy == LocalPolicy()
    assert c.state_dir == tmp_path / "state"


@pytest.mark.parametrize(("before", "after", "key", "closest"), [
    ('listen = "127', 'lisen = "127', "lisen", "listen"),
    ("[tls]", "[tsl]", "tsl", "tls"),
    ('listen = "127.0.0.1:7443"', 'listen = "127.0.0.1:7443"\nticket_ttl = 60', "ticket_ttl", "ticket_ttl_s"),
    ('listen = "127.0.0.1:7443"', 'listen = "127.0.0.1:7443"\n[limits]\nworker_thread = 8', "worker_thread",
     "worker_threads"),
    ('listen = "127.0.0.1:7443"', 'listen = "127.0.0.1:7443"\n[log]\norign = "x"', "orign", "origin"),
])
def test_a_misspelt_broker_key_names_the_key_the_file_and_the_closest_valid_key(tmp_path, before, after, key,
                                                                                closest):
    err = _config_error(load_broker_config, _write(tmp_path, "broker.toml", BROKER.replace(before, after, 1)))
    text = err.message + " " + err.hint
    assert repr(key) in text and closest in text, text


def test_broker_defaults_come_from_the_dataclass(tmp_path):
    b = load_broker_config(_write(tmp_path, "broker.toml", BROKER.replace('listen = "127.0.0.1:7443"', "")))
    for f in dataclasses.fields(BrokerConfig):
        if f.default is not dataclasses.MISSING:
            assert getattr(b, f.name) == f.default, f.name
    assert b.limits == Limits() and b.state_dir == tmp_path / "state" and b.log_key == tmp_path / "state" / "log.key"


@pytest.mark.parametrize(("line", "says"), [
    ('ticket_ttl_s = "ten"', "ticket_ttl_s must be a whole number"),
    ("listen = 7443", "listen must be a string"),
    ('sweep_interval_s = "1"', "sweep_interval_s must be a number"),
])
def test_broker_serve_reports_a_type_error_without_a_traceback(tmp_path, line, says):
    path = _write(tmp_path, "broker.toml", BROKER.replace('listen = "127.0.0.1:7443"', line))
    proc = subprocess.run([sys.executable, "-m", "yumen", "broker", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == exit_code(Code.CONFIG), proc.stderr
    assert "Traceback" not in proc.stderr and says in proc.stderr and str(path) in proc.stderr, proc.stderr


def test_connector_check_reports_a_misspelt_key_without_a_traceback(tmp_path):
    path = _write(tmp_path, "c.toml", CONNECTOR.replace("privacy_unit = {", "privacy_unt = {"))
    proc = subprocess.run([sys.executable, "-m", "yumen", "connector", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == exit_code(Code.CONFIG)
    assert "Traceback" not in proc.stderr and "privacy_unt" in proc.stderr and "privacy_unit" in proc.stderr


@pytest.mark.parametrize(("before", "after", "key", "closest"), [
    ('max_runs = 500', 'max_run = 500', "max_run", "max_runs"),
    ("min_group_size = 5", "min_groupsize = 5", "min_groupsize", "min_group_size"),
    # a pricing table of a policy version logged before the price catalogue existed
    ("[levels.L3]", '[pricing.standard]\nresearch = { base = "0", per_epsilom = "20" }\n\n[levels.L3]', "per_epsilom",
     "per_epsilon"),
    ("[levels.L3]", "[levels.L5]", "L5", "L3"),
    ("[rules.open-data]", "[ruels.open-data]", "ruels", "rules"),
])
def test_a_misspelt_policy_key_names_the_key_the_file_and_the_closest_valid_key(tmp_path, before, after, key,
                                                                                closest):
    model, rules, settings = default_policy_paths()
    text = settings.read_text()
    assert before in text
    path = _write(tmp_path, "policy.toml", text.replace(before, after, 1))
    with pytest.raises(YumenError) as info:
        PolicyBundle.from_files(model, rules, path)
    message = info.value.message + " " + info.value.hint
    assert info.value.code is Code.CONFIG and str(path) in message and repr(key) in message and closest in message
    # a bundle that arrives without a file (SetPolicy) is refused by the engine the same way
    with pytest.raises(YumenError, match=re.escape(repr(key))):
        PolicyEngine(PolicyBundle(model=model.read_text(), rules=rules.read_text(), settings=path.read_text()))


def test_docs_configuration_lists_every_key():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    keys = {*_BROKER_KEYS, *(f.name for f in dataclasses.fields(Limits)), *_CONNECTOR, *_LOCAL_POLICY, *_TIMING,
            *_DATASET, *_COLUMN, *_PRIVACY_UNIT, "broker_certificate", "origin", "rules", "settings", "model",
            *_LEVEL_KEYS, *_RULE_KEYS, "per_epsilon"}
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"docs/configuration.md does not document {missing}"

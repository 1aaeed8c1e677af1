"""One real local data space (broker + four connectors as processes) shared by the e2e tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from yumen.localspace import Department, LocalSpace

ROOT = Path(__file__).resolve().parents[2]
ALGOS = ROOT / "tests" / "e2e" / "algorithms"

# The two cities' patients are one population (a province-wide patient id): their datasets
# share a privacy-unit namespace, so the ledger adds up what jobs spend on either.
PATIENTS = {"privacy_unit": {"namespace": "gansu-patients", "shared": True}}

FARM_VERIFICATION = {"subject": "farm_id", "fields": ["county", "irrigation"],
                     "purposes": ["public-interest", "research"], "per_license_per_day": 50, "per_subject_per_day": 1,
                     "reveal_mismatches": True}

DEPARTMENTS = (
    Department(id="weather-bureau", datasets=(("weather-daily", 7_300),)),
    Department(id="health-commission", datasets=(("outpatient-visits", 20_000),),
               registration={"outpatient-visits": PATIENTS}),
    Department(id="transport-dept", datasets=(("bus-trips", 20_000),)),
    # This department accepts at most ε 0.25 per job, whatever the broker allows.
    Department(id="culture-tourism", datasets=(("scenic-visits", 20_000),), local_policy={"max_epsilon_per_job": "0.25"}),
    # A second city's health commission with outpatient visits of the same schema.
    Department(id="health-tianshui", datasets=(("outpatient-visits", 10_000, "outpatient-visits-tianshui"),),
               registration={"outpatient-visits-tianshui": PATIENTS}),
    # Farms account their budget in zero-concentrated DP: Gaussian noise, ρ in the ledger.
    # Operators may verify a farm's county and water regime (one question a day about a farm).
    Department(id="agriculture-dept", datasets=(("farm-yields", 5_000),),
               registration={"farm-yields": {"privacy_unit": {"accounting": "zcdp", "delta": "0.000000001"},
                                             "verification": FARM_VERIFICATION}}),
    # A statistics bureau that refuses to publish a version whose released null rates pass 30 %.
    # (Its report's noise: sensitivity 6 · (3 + 1 + 2·5) = 84 counts per ε; at ε 4 on 20,000
    # rows a released share is off by about 0.001, far from the threshold either way.)
    Department(id="statistics-bureau", datasets=(("scenic-visits", 20_000, "scenic-visits-audited"),),
               quality={"refuse": True, "max_null_rate": "0.3", "epsilon": "4"}),
)


@pytest.fixture(scope="session")
def space(tmp_path_factory):
    # Algorithm jobs are held to their deadline: a short allowance and four blocks at a time
    # keep the suite quick.
    s = LocalSpace(tmp_path_factory.mktemp("space"), departments=DEPARTMENTS,
                   timing={"allowance_s": 2.0, "wave_slack_s": 0.25, "block_parallelism": 4})
    s.setup()
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()


class Cli:
    def __init__(self, space: LocalSpace, name: str) -> None:
        self.env = space.cli_env(name)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "yumen", *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def json(self, *args: str) -> dict:
        proc = self(*args, "--json")
        assert proc.stdout, f"no JSON output; stderr: {proc.stderr}"
        return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def operator(space):
    return Cli(space, "operator-1")


@pytest.fixture(scope="session")
def auditor(space):
    return Cli(space, "auditor-1")

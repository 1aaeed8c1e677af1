"""Policy decisions per second with 10,000 licenses and 1,000 datasets.

Each decision is what the broker does on SubmitJob before touching budget: read the
operator's license from the store, then decide through Casbin with the level defaults and
obligations. Datasets and licenses are drawn at random from the populations.

``policy_decide_10k.p50_ms`` / ``.p99_ms`` / ``.per_s``  the whole decision, license read included
``policy_decide_10k.store_read_p50_ms``  baseline: the license read from SQLite alone
``policy_decide_10k.casbin_p50_ms``      Casbin's ``enforce_ex`` alone, for the requests that get
                                         past the license and level gates to it
``policy_decide_10k.allowed_share``      share of the requests allowed
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

LICENSES = 10_000
DATASETS = 1_000
DECISIONS = 5_000


def run(results: dict[str, float]) -> None:
    from yumen.broker._store import SqliteStore
    from yumen.catalog import Level
    from yumen.jobs import Purpose
    from yumen.policy import DecisionRequest, License, PolicyEngine

    now = dt.datetime.now(dt.timezone.utc)
    rng = random.Random(7)
    engine = PolicyEngine.default()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "b.db")
        for i in range(LICENSES):
            store.put_license(License(
                id=f"LIC-{i:05d}", organization=f"org-{i}", purposes=frozenset(rng.sample(list(Purpose), rng.randint(2, 3))),
                levels=frozenset(rng.sample([Level.L1, Level.L2, Level.L3], rng.randint(2, 3))),
                valid_from=now - dt.timedelta(days=10),
                valid_until=now + dt.timedelta(days=-1 if rng.random() < 0.05 else 365),
            ).to_dict())
        datasets = [(f"ds-{i:04d}", f"dept-{i % 40}", rng.choice(["L1", "L2", "L3", "L4"])) for i in range(DATASETS)]
        requests = []
        for _ in range(DECISIONS):
            ds, dept, level = rng.choice(datasets)
            requests.append(DecisionRequest(
                license=f"LIC-{rng.randrange(LICENSES):05d}", department=dept, dataset=ds, level=level,
                tier=rng.choice(["query", "approved-algorithm", "custom-algorithm"]),
                purpose=rng.choice(["public-interest", "research", "commercial"]),
                epsilon=Fraction(rng.choice([1, 2, 5]), 10), at=now,
            ))
        samples, reads, casbin = [], [], []
        allowed = 0
        started = time.perf_counter()
        for req in requests:
            t = time.perf_counter()
            record = store.get_license(req.license)
            read = time.perf_counter()
            lic = License.from_dict(record) if record else None
            decision = engine.decide(req, lic)
            samples.append(time.perf_counter() - t)
            reads.append(read - t)
            allowed += decision.allowed
            if lic is not None and decision.gate in ("", "rule", "obligation"):
                # the request reached Casbin: time that call alone, with the same arguments
                values = (lic.group, req.department, req.dataset, req.level, req.tier, req.purpose)
                t = time.perf_counter()
                engine._enforcer.enforce_ex(*values)
                casbin.append(time.perf_counter() - t)
        total = time.perf_counter() - started - sum(casbin)
    results["policy_decide_10k.p50_ms"] = statistics.median(samples) * 1000
    results["policy_decide_10k.p99_ms"] = sorted(samples)[int(len(samples) * 0.99)] * 1000
    results["policy_decide_10k.store_read_p50_ms"] = statistics.median(reads) * 1000
    results["policy_decide_10k.casbin_p50_ms"] = statistics.median(casbin) * 1000
    results["policy_decide_10k.per_s"] = DECISIONS / total
    results["policy_decide_10k.allowed_share"] = allowed / DECISIONS

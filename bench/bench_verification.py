"""Verifications per second on a 10,000,000-row table with an index, beside a plain indexed lookup.

Half the requests are answered one at a time (``verify_10m_sequential.per_s``: every answer
waits for its own durable commit of the caps), half with 16 in flight at once
(``verify_10m.per_s``: their cap counts share group commits), as the connector's worker pool
answers orders taken off its stream.

Both sides use the same index (sorted 64-bit hashes of the identifier, built once per data
version) and look up the same identifiers in the same run. The verification side runs the
department's whole answer path (:meth:`yumen.connectors._verification.Verifier.answer`):
check the broker's order signature, open the sealed request (X25519 + ChaCha20-Poly1305),
keyed hash, count both caps in SQLite, look up, compare, sign the answer. Sealing (the
operator's side) and the broker's order signature are made before the clock starts.

``YUMEN_BENCH_VERIFY_ROWS`` overrides the table size (default 10,000,000).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

ROWS = int(os.environ.get("YUMEN_BENCH_VERIFY_ROWS", "10000000"))
REQUESTS = 4000
CONCURRENCY = 16  # requests in flight at once in the concurrent half


def run(results: dict[str, float]) -> None:
    import polars as pl
    from cryptography import x509

    from yumen.canonical import canonical_json
    from yumen.catalog import DatasetRegistration
    from yumen.connectors import LocalPolicy, SourceSpec
    from yumen.connectors._config import ConnectorConfig, DatasetConfig
    from yumen.connectors._executor import Executor
    from yumen.connectors._quality import QualityConfig
    from yumen.connectors._verification import VerificationPolicy
    from yumen.identity import Role, init_ca, issue, load_private_key, sign_payload
    from yumen.rpc import TlsFiles
    from yumen.verification import ORDER_PURPOSE, normalize, seal_request, sealed_digest

    reg = DatasetRegistration.from_dict({
        "id": "residents", "title": "Residents", "department": "civil-affairs", "level": "L2",
        "columns": [{"name": "resident_id", "type": "string"},
                    {"name": "region", "type": "category", "categories": ["north", "south", "east", "west"]},
                    {"name": "birth_year", "type": "int", "lower": 1900, "upper": 2030}],
        "privacy_unit": {"column": "resident_id", "max_contributions": 1},
    })
    with tempfile.TemporaryDirectory(prefix="yumen-bench-verify-") as tmp:
        t = Path(tmp)
        init_ca(t / "pki")
        bcert, bkey = issue(t / "pki", role=Role.BROKER, name="broker")
        ccert, ckey = issue(t / "pki", role=Role.CONNECTOR, name="ca1", department="civil-affairs")
        data = t / "residents.parquet"
        pl.select(pl.int_range(ROWS, dtype=pl.Int64).alias("i")).select(
            pl.format("id-{}", pl.col("i")).alias("resident_id"),
            pl.col("i").mod(4).replace_strict([0, 1, 2, 3], ["north", "south", "east", "west"]).alias("region"),
            (1930 + pl.col("i").mod(90)).alias("birth_year"),
        ).write_parquet(data)
        policy = VerificationPolicy.from_config({"subject": "resident_id", "fields": ["region", "birth_year"],
                                                 "per_license_per_day": 10_000_000,
                                                 "per_subject_per_day": 10}, reg)
        config = ConnectorConfig(
            id="ca1", department="civil-affairs", broker="127.0.0.1:1", state_dir=t / "state", sandbox="bwrap",
            max_parallel_jobs=1, tls=TlsFiles(ca=t / "pki" / "ca.crt", cert=ccert, key=ckey), broker_certificate=bcert,
            local_policy=LocalPolicy(), path=t / "c.toml", quality=QualityConfig(epsilon=Fraction(1, 10)),
            datasets=(DatasetConfig(registration=reg, source=SourceSpec(kind="parquet", path=str(data)),
                                    verification=policy),), scratch_dir=t / "scratch")
        executor = Executor(config, load_private_key(ckey), x509.load_pem_x509_certificate(bcert.read_bytes()))
        started = time.perf_counter()
        executor.datasets["residents"].refresh()  # published at once: no [quality] thresholds
        results["verify_10m_pin.s"] = time.perf_counter() - started
        executor.steward.wait_idle()  # its quality report, made off the job path
        results["verify_10m_pin_and_quality.s"] = time.perf_counter() - started
        verifier = executor.steward.verifier(executor.datasets)
        started = time.perf_counter()
        _, index = verifier.index("residents")
        results["verify_10m_index_build.s"] = time.perf_counter() - started
        (offer_payload, _), = verifier.offers()
        offer = json.loads(offer_payload)
        broker_key = load_private_key(bkey)
        step = max(1, ROWS // REQUESTS)
        ids = [i * step for i in range(REQUESTS)]
        orders = []
        now = int(time.time() * 1000)
        for n, i in enumerate(ids):
            claims = {"region": ["north", "south", "east", "west"][i % 4], "birth_year": 1930 + i % 90}
            sealed = seal_request(offer, request_id=f"r{n}", license="LIC-1", purpose="public-interest",
                                  subject=f"id-{i}", claims=claims)
            order = canonical_json({"request_id": f"r{n}", "dataset": "residents", "operator": "op", "license": "LIC-1",
                                    "purpose": "public-interest", "fields": sorted(claims), "want_mismatches": False,
                                    "sealed_digest": sealed_digest(sealed), "issued_at_ms": now,
                                    "expires_at_ms": now + 3_600_000})
            orders.append((order, sign_payload(broker_key, ORDER_PURPOSE, order), sealed))
        # one request at a time: each answer's latency, one group commit (fsync) per answer
        half = len(orders) // 2
        started = time.perf_counter()
        answers = [verifier.answer(order, sig, sealed, executor._broker_cert)[0] for order, sig, sealed in orders[:half]]
        sequential_s = time.perf_counter() - started
        # requests in flight at once, as the connector's worker pool takes them off the stream:
        # their cap counts share group commits
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            answers += list(pool.map(lambda o: verifier.answer(o[0], o[1], o[2], executor._broker_cert)[0], orders[half:]))
        concurrent_s = time.perf_counter() - started
        yes = sum(json.loads(payload)["answer"] == "yes" for payload in answers)
        if yes != len(orders):
            raise RuntimeError(f"only {yes} of {len(orders)} verifications matched")
        started = time.perf_counter()
        found = 0
        for i in ids:
            found += bool(index.rows_of(normalize(f"id-{i}")))
        lookup_s = time.perf_counter() - started
        results["verify_10m.per_s"] = (len(orders) - half) / concurrent_s
        results["verify_10m_sequential.per_s"] = half / sequential_s
        results["verify_10m_plain_indexed_lookup.per_s"] = len(ids) / lookup_s
        results["verify_10m.ratio_to_plain_lookup"] = (concurrent_s / (len(orders) - half)) / (lookup_s / len(ids))

"""The edge between generated protobuf types and Yumen's domain records.

Only this module (and the servicers and clients that call it) touches ``yumen.v1``
generated classes; everything else works with the frozen records of ``yumen.catalog``,
``yumen.jobs`` and ``yumen.tickets``.
"""

from __future__ import annotations

import enum

import json
from typing import Any

from yumen.catalog import Column, ColumnType, DatasetRegistration, Level, PrivacyUnit
from yumen.canonical import parse_json
from yumen.errors import Code, YumenError, echo
from yumen.jobs import Aggregate, Algorithm, JobRequest, OutputRange, Purpose, Query, QueryFilter, Tier, parse_epsilon, parse_quantile
from yumen.v1 import admin_pb2, catalog_pb2, jobs_pb2
from yumen.licenses import License

__all__ = [
    "dataset_to_proto",
    "dataset_from_proto",
    "job_to_proto",
    "job_from_proto",
    "license_from_proto",
    "license_to_proto",
]


def _privacy_unit_to_proto(unit: PrivacyUnit) -> catalog_pb2.PrivacyUnit:
    d = unit.to_dict()
    return catalog_pb2.PrivacyUnit(
        column=unit.column, max_contributions=unit.max_contributions, namespace=unit.namespace, shared=unit.shared,
        accounting=d.get("accounting", ""), delta=d.get("delta", ""), lifetime_epsilon=d.get("lifetime_epsilon", ""),
    )


def _privacy_unit_from_proto(msg: catalog_pb2.PrivacyUnit) -> PrivacyUnit:
    d: dict[str, object] = {"column": msg.column, "max_contributions": msg.max_contributions or 1,
                            "namespace": msg.namespace, "shared": msg.shared, "accounting": msg.accounting or "pure"}
    if msg.delta:
        d["delta"] = msg.delta
    if msg.lifetime_epsilon:
        d["lifetime_epsilon"] = msg.lifetime_epsilon
    return PrivacyUnit.from_dict(d)


def dataset_to_proto(reg: DatasetRegistration, *, online: bool = False) -> catalog_pb2.Dataset:
    return catalog_pb2.Dataset(
        id=reg.id, title=reg.title, description=reg.description, department=reg.department,
        level=reg.level.value,
        columns=[
            catalog_pb2.Column(
                name=c.name, type=c.type.value, unit=c.unit, description=c.description,
                lower=c.lower, upper=c.upper, categories=list(c.categories), public=c.public,
            )
            for c in reg.columns
        ],
        privacy_unit=_privacy_unit_to_proto(reg.privacy_unit),
        update_frequency=reg.update_frequency, source_system=reg.source_system,
        price_class=reg.price_class, version=reg.version, online=online,
    )


def dataset_from_proto(msg: catalog_pb2.Dataset) -> DatasetRegistration:
    cols = []
    for c in msg.columns:
        try:
            ctype = ColumnType(c.type)
        except ValueError:
            raise YumenError(Code.INVALID_ARGUMENT, f"column {echo(c.name)} has unknown type {echo(c.type)}") from None
        cols.append(Column(
            name=c.name, type=ctype, unit=c.unit, description=c.description,
            lower=c.lower if c.HasField("lower") else None,
            upper=c.upper if c.HasField("upper") else None,
            categories=tuple(c.categories), public=c.public,
        ))
    try:
        level = Level(msg.level)
    except ValueError:
        raise YumenError(Code.INVALID_ARGUMENT, f"dataset {echo(msg.id)} has unknown level {echo(msg.level)}") from None
    return DatasetRegistration(
        id=msg.id, title=msg.title, description=msg.description, department=msg.department,
        level=level, columns=tuple(cols),
        privacy_unit=_privacy_unit_from_proto(msg.privacy_unit),
        update_frequency=msg.update_frequency, source_system=msg.source_system,
        price_class=msg.price_class or "standard", version=msg.version,
    )


def job_to_proto(req: JobRequest) -> jobs_pb2.Job:
    msg = jobs_pb2.Job(
        job_id=req.job_id, datasets=list(req.datasets), tier=req.tier.value,
        purpose=req.purpose.value, epsilon=req.to_dict()["epsilon"], he_context=req.he_context,
    )
    if req.query is not None:
        q = req.query
        msg.query.CopyFrom(jobs_pb2.Query(
            aggregate=q.aggregate.value, column=q.column, group_by=q.group_by,
            filters=[jobs_pb2.QueryFilter(column=f.column, op=f.op, value_json=json.dumps(f.to_dict()["value"]))
                     for f in q.filters],
            bins=q.bins, quantile=q.to_dict().get("quantile", ""),
        ))
    if req.algorithm is not None:
        a = req.algorithm
        msg.algorithm.CopyFrom(jobs_pb2.Algorithm(
            source=a.source,
            outputs=[jobs_pb2.OutputRange(name=o.name, lower=o.lower, upper=o.upper) for o in a.outputs],
            params_json=json.dumps(a.params, sort_keys=True), timeout_s=a.timeout_s, memory_mb=a.memory_mb,
            blocks=a.blocks,
        ))
    return msg


def _enum(kind: type[enum.Enum], value: str, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise YumenError(
            Code.INVALID_ARGUMENT, f"unknown {what} {echo(value)}", hint=f"use one of: {', '.join(k.value for k in kind)}"
        ) from None


def job_from_proto(msg: jobs_pb2.Job) -> JobRequest:
    tier = _enum(Tier, msg.tier, "tier")
    purpose = _enum(Purpose, msg.purpose, "purpose")
    query = algorithm = None
    kind = msg.WhichOneof("work")
    if kind == "query":
        q = msg.query
        filters = []
        for f in q.filters:
            value = parse_json(f.value_json, what=f"the value of the filter on {echo(f.column)}")
            if not (isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))
                    or (isinstance(value, list) and all(isinstance(x, str) for x in value))):
                raise YumenError(Code.INVALID_ARGUMENT,
                                 f"the value of the filter on {echo(f.column)} must be a number, a string or a list of strings")
            filters.append(QueryFilter.from_dict({"column": f.column, "op": f.op, "value": value}))
        query = Query(aggregate=_enum(Aggregate, q.aggregate, "aggregate"), column=q.column, group_by=q.group_by,
                      filters=tuple(filters), bins=q.bins,
                      quantile=parse_quantile(q.quantile) if q.quantile else None)
    elif kind == "algorithm":
        a = msg.algorithm
        params = parse_json(a.params_json, what="the algorithm parameters") if a.params_json else {}
        if not isinstance(params, dict):
            raise YumenError(Code.INVALID_ARGUMENT, "algorithm parameters must be a JSON object")
        algorithm = Algorithm(
            source=a.source,
            outputs=tuple(OutputRange(name=o.name, lower=o.lower, upper=o.upper) for o in a.outputs),
            params=params, timeout_s=a.timeout_s or 60.0, memory_mb=a.memory_mb or 512, blocks=a.blocks or 10,
        )
    else:
        raise YumenError(Code.INVALID_ARGUMENT, "the job carries neither a query nor an algorithm")
    return JobRequest(
        job_id=msg.job_id, datasets=tuple(msg.datasets), tier=tier, purpose=purpose,
        epsilon=parse_epsilon(msg.epsilon), query=query, algorithm=algorithm, he_context=msg.he_context,
    )


def license_to_proto(lic: License) -> admin_pb2.License:
    d = lic.to_dict()
    return admin_pb2.License(
        id=d["id"], organization=d["organization"], group=d["group"], purposes=d["purposes"],
        levels=d["levels"], valid_from=d["valid_from"], valid_until=d["valid_until"], status=d["status"],
    )


def license_from_proto(msg: admin_pb2.License) -> License:
    if not msg.valid_from or not msg.valid_until:
        raise YumenError(Code.INVALID_ARGUMENT, "a license needs valid_from and valid_until", hint="pass --from and --until")
    return License.from_dict({
        "id": msg.id, "organization": msg.organization, "group": msg.group or "licensed",
        "purposes": list(msg.purposes) or ["public-interest", "research", "commercial"],
        "levels": list(msg.levels) or ["L1", "L2"],
        "valid_from": msg.valid_from, "valid_until": msg.valid_until, "status": msg.status or "active",
    })

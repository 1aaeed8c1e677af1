"""gRPC servicer of ``BillingService``: the price catalogue (thin, like the others)."""

from __future__ import annotations

import datetime as dt

import grpc

from yumen.rpc import rpc_method
from yumen.v1 import billing_pb2, billing_pb2_grpc

from yumen.broker._core import Broker

__all__ = ["BillingServicer"]


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @rpc_method
    def ChangeCatalogue(self, request: billing_pb2.CatalogueChange, context: grpc.ServicerContext) -> billing_pb2.CatalogueChangeResult:
        who = self.broker.identify(context)
        out = self.broker.billing.change(who, request.kind, dict(request.fields))
        return billing_pb2.CatalogueChangeResult(log_index=out["log_index"])

    @rpc_method
    def GetCatalogue(self, request: billing_pb2.GetCatalogueRequest, context: grpc.ServicerContext) -> billing_pb2.Catalogue:
        from yumen.policy import FREE_PURPOSES, plain

        self.broker.identify(context)
        cat = self.broker.billing.catalogue()
        items = [billing_pb2.CatalogueItem(
            kind=r["kind"], product=r["product"], purpose=r["purpose"], unit=r["unit"], amount=r["amount"],
            start=r["from"], end=r["until"], set_by=r["by"], log_index=int(r["log_index"]), in_force=r["in_force"] == "yes")
            for r in cat.listing(dt.datetime.now(dt.timezone.utc))]
        return billing_pb2.Catalogue(items=items, revenue_rule=cat.revenue_rule,
                                     allowed_revenue={y: plain(a) for y, a in cat.allowed_revenue.items()},
                                     free_purposes=list(FREE_PURPOSES))

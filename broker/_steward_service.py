"""gRPC servicer of ``StewardshipService``: quality reports, feedback, verification (thin, like the others)."""

from __future__ import annotations

import base64

import grpc

from yumen.rpc import rpc_method
from yumen.v1 import stewardship_pb2, stewardship_pb2_grpc

from yumen.broker._core import Broker

__all__ = ["StewardshipServicer"]


class StewardshipServicer(stewardship_pb2_grpc.StewardshipServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @rpc_method
    def GetStewardship(self, request: stewardship_pb2.GetStewardshipRequest, context: grpc.ServicerContext) -> stewardship_pb2.Stewardship:
        who = self.broker.identify(context)
        s = self.broker.steward.stewardship(who, request.dataset)
        return stewardship_pb2.Stewardship(
            dataset=s["dataset"], quality=s["quality"].encode(), quality_signature=base64.b64decode(s["quality_signature"]),
            feedback_count=s["feedback_count"], verification_offer=s["offer"].encode(),
            verification_signature=base64.b64decode(s["offer_signature"]), connector_certificate=s["certificate"].encode(),
            quality_certificate=s["quality_certificate"].encode(), quality_digest=s["quality_digest"],
            quality_version_count=s["quality_versions"],
        )

    @rpc_method
    def SubmitFeedback(self, request: stewardship_pb2.Feedback, context: grpc.ServicerContext) -> stewardship_pb2.FeedbackAck:
        who = self.broker.identify(context)
        out = self.broker.steward.feedback(who, dataset=request.dataset, version=request.version,
                                           category=request.category, message=request.message)
        return stewardship_pb2.FeedbackAck(id=out["id"], count=out["count"], delivered=out["delivered"])

    @rpc_method
    def Verify(self, request: stewardship_pb2.VerificationRequest, context: grpc.ServicerContext) -> stewardship_pb2.VerificationAnswer:
        who = self.broker.identify(context)
        out = self.broker.steward.verify(who, request_id=request.request_id, dataset=request.dataset,
                                         purpose=request.purpose, fields=list(request.fields), sealed=request.sealed,
                                         want_mismatches=request.want_mismatches)
        return stewardship_pb2.VerificationAnswer(
            request_id=out["request_id"], answer=out["answer"], mismatched=out["mismatched"], message=out["message"],
            log_index=out["log_index"], statement=out["statement"].encode(), signature=base64.b64decode(out["signature"]))

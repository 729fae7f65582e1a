from __future__ import annotations

from clients import pb, pb_grpc
from tests.helpers import record


def test_record_then_list_returns_the_event(stub: pb_grpc.AuditServiceStub) -> None:
    response = record(stub, identifier="checkout", context={"cluster": "prod"})
    listed = stub.List(pb.ListRequest())
    assert [e.id for e in listed.events] == [response.id]
    assert listed.events[0].identifier == "checkout"
    assert listed.events[0].context["cluster"] == "prod"
    assert listed.events[0].recorded_by == "dev"

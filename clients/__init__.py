"""auditlog clients: the generated protobuf/gRPC stubs and the Python client library.

``clients.pb`` holds the messages and enums of ``auditlog.v1``; ``clients.pb_grpc`` the stub
and servicer base for ``auditlog.v1.AuditService``.
"""

from clients._generated.auditlog.v1 import audit_pb2 as pb
from clients._generated.auditlog.v1 import audit_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]

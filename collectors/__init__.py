"""auditlog collectors: sidecar processes that stream source changes into audit-service."""

"""auditlog collectors: sidecar processes that stream source changes into audit-service.

``collectors.runtime`` is what they share (spool, delivery, HTTP endpoint, options);
each source is a module beside it (``collectors.kubernetes``), registered in
``collectors.cli.KINDS`` and run as ``audit-collector KIND``.
"""

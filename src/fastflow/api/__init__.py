"""The JSON HTTP API (FastAPI): ``app`` builds it, ``deps`` holds the dependency
aliases (context, principal, admin), ``errors`` maps domain errors to status codes, one
router per resource in ``routers/``, and ``prometheus`` serves ``/metrics``.

May import ``lifecycle``, ``notify`` and everything below; never ``web`` or ``cli``.
"""

"""Orchestration: schedules, the run queue, retries and downstream triggers.

``schedules`` and ``retries`` are PURE: no I/O, no clock — time is always a parameter,
so every decision can be replayed and tested. May import ``runs``, ``archive``, ``db``
and below; never ``lifecycle``, ``api``, ``web`` or ``cli``.
"""

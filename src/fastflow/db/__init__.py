"""The database: engine and sessions (``engine``), the tables (``models``), Alembic
``migrations`` applied at start-up, the stored setting overrides (``settings_store``)
and the one-second read cache of polled lists (``cache``).

Owns no business rule. May import only ``config``, ``errors`` and ``security``.
"""

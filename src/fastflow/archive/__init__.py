"""The verified archive in S3-compatible storage: the ``ArchiveStore`` protocol and its S3
implementation (``s3``), ``compression``, the ledger of archived runs (``ledger``, the one
owner of ``ArchivedRun``), audits of the bucket against the ledger (``audit``) and the
write/read/delete ``probe`` of a configuration.

May import ``db``, ``runs.files``/``runs.refs`` and the bottom layer; never ``lifecycle``.
"""

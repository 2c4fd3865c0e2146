"""The run-log lifecycle: one cleanup pass (``cleanup``) = lock (``lock``) -> resume
unfinished work (``resume``) -> plan in SQL (``selection``) with the PURE ``policy`` ->
execute (``executor``: archive -> verify -> ledger -> identity-checked ``deletion``, or
archive -> ``truncate``) -> record (``records``: ``BackupFailure``, ``CleanupPass``) ->
``summary``. ``scheduler`` runs passes on ``CLEANUP_SCHEDULE``; ``child`` runs one in a
child process for the server. May import ``runs``, ``archive``, ``db`` and below.
"""

"""Where a run's process executes. ``base`` holds the narrow interface every executor
implements (start a run's process, stream its output with timestamps, supervise it to
the end under a deadline and a cancel event, sample its resources, clean up, find it
again by a persisted handle after a restart); ``docker`` implements it with the Docker
SDK (``images``: derived images, ``logs``: Docker's log stream, ``stats``: metrics,
``resume``: the re-attach boundary), ``container`` runs one pipeline run through it.
The local executor is the subprocess path of ``runs.runner``. May import ``config``,
``errors``, ``security``, ``db``, ``runs`` and ``environments`` (never ``lifecycle``,
``orchestration``, ``api`` or ``cli``); the Docker SDK is imported only when used.
"""

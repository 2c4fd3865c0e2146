"""The web UI: server-rendered pages (``pages``; ``render`` for Jinja2 ``templates/``;
``orchestrated`` for schedules, attempts and linked runs) and their ``static/`` scripts and
styles, on the same app and sessions as the API.

May import ``lifecycle``, ``notify``, ``orchestration`` and everything below; never ``api``
or ``cli`` (``fastflow.server`` joins the two).
"""

"""Pipeline runs: discovering pipelines (``pipelines``), executing one (``runner`` with
``capture`` of the output and the CPU/RAM ``sampler``), running them in the server
(``launcher``), the ``pipeline_runs`` rows (``store``), where their files live
(``files``), reading a log back, local or archived (``readback``), and the run objects the
API and UI show (``views``). Owns the ``PipelineRun`` record.

May import ``db``, ``archive`` (to read archived logs), ``context`` and the bottom layer.
"""

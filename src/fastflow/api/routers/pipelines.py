"""Pipelines and starting runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fastflow.api.deps import AdminDep, CtxDep, LauncherDep, PrincipalDep
from fastflow.api.schemas import PipelineListOut, RunStartedOut
from fastflow.db.models import Trigger, utcnow
from fastflow.orchestration.ticker import describe, next_runs
from fastflow.runs import params as run_params
from fastflow.runs import pipelines
from fastflow.runs import store as runs

router = APIRouter(prefix="/api/pipelines", tags=["pipelines"])


@router.get("", response_model=PipelineListOut)
def list_pipelines(ctx: CtxDep, _: PrincipalDep) -> list[dict[str, Any]]:
    """Discovered pipelines with their last run, schedules (next run, UTC), limits,
    retries and triggers."""
    found = pipelines.discover(ctx.settings.pipelines_dir)
    nexts = {
        (n.pipeline_name, n.schedule_key): n.next_run_at for n in next_runs(ctx, found, utcnow())
    }
    out = []
    for p in found:
        data = p.to_dict()
        last = runs.list_runs(ctx.db, pipeline=p.name, limit=1)
        data["last_run"] = last[0].to_dict() if last else None
        data["schedules"] = [
            {
                "schedule_key": spec.key,
                "schedule": describe(spec),
                "enabled": spec.enabled and p.config.enabled,
                "next_run_at": at.isoformat() if (at := nexts.get((p.name, spec.key))) else None,
            }
            for spec in p.config.schedules
        ]
        data["max_instances"] = p.config.max_instances
        data["retries"] = p.config.retries.max
        data["triggers"] = {
            "on_success": list(p.config.triggers.on_success),
            "on_failure": list(p.config.triggers.on_failure),
        }
        out.append(data)
    return out


class RunParams(BaseModel):
    """Optional run parameters: environment variables for this run only. Any other key
    is refused (422): a misspelt ``"enc"`` must not start a run without its parameters."""

    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] = Field(default_factory=dict, max_length=200)


@router.post("/{name}/run", status_code=202, response_model=RunStartedOut)
def start_run(
    name: str, launcher: LauncherDep, _: AdminDep, params: RunParams | None = None
) -> JSONResponse:
    """Queue a run (it starts when a slot is free); 202 with its id."""
    env = run_params.check(params.env) if params is not None else None
    name = pipelines.canonical_name(name)  # (as the run records it)
    run_id = launcher.start(name, Trigger.API.value, env=env)
    return JSONResponse(
        {"run_id": str(run_id), "pipeline_name": name, "status": "QUEUED"}, status_code=202
    )

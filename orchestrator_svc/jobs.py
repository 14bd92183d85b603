"""A checked plan, as a Dagster job and its run config.

Each block is one invocation of its kind's op (aliased by the block's id), wired
by the spec's edges; the blocks' settings are the ops' typed config in the
run config, so the Dagster UI shows them. A block after a dataset of many STAC
items is invoked once per item (`<block>__<n>`), and a summary block takes every
copy of its input (fan-in). The job runs inside the run's worker process, the
steps of independent branches at once in its threads (orchestrator_svc.executor,
`max_parallel_branches`), or, over many items, on Dagster's multiprocess executor
(`max_parallel_items` steps at once, each in a process of its own); the model
step carries the RetryPolicy (exponential backoff) for transient endpoint
failures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from dagster import (
    Backoff,
    DependencyDefinition,
    ExecutorDefinition,
    GraphDefinition,
    Jitter,
    JobDefinition,
    MultiDependencyDefinition,
    NodeInvocation,
    RetryPolicy,
    multiprocess_executor,
)

from clients.roots import StorageRoots
from orchestrator_svc import specs
from orchestrator_svc.executor import threaded_executor
from orchestrator_svc.ops import OP_DEFS, ConstellationResource
from orchestrator_svc.settings import OrchestratorSettings
from orchestrator_svc.specs import Plan

JOB_NAME = "constellation_pipeline"


@dataclass(frozen=True)
class JobSettings:
    """The settings a run's job is built with, stored on the run so its worker builds the same job."""

    work_dir: str
    s3_endpoint_url: str
    default_batch_size: int
    default_max_concurrency: int
    infer_timeout_s: float
    model_retries: int
    model_retry_delay_s: float
    # The allowed roots (clients.roots) the ops check again right before they read a scene or write an export;
    # None on runs launched before they were stored.
    roots: dict[str, list[str]] | None = field(default=None)
    infer_wait_s: float = 30.0  # runs launched before it was stored waited this long
    max_parallel_items: int = 1  # steps at once in a run over many STAC items (runs from before ran one at a time)
    max_parallel_branches: int = 1  # steps of independent branches at once in a run over one scene (likewise)

    @classmethod
    def of(cls, settings: OrchestratorSettings, roots: StorageRoots) -> JobSettings:
        return cls(
            str(settings.work_dir),
            settings.s3_endpoint_url,
            settings.default_batch_size,
            settings.default_max_concurrency,
            settings.infer_timeout_s,
            settings.model_retries,
            settings.model_retry_delay_s,
            {
                "data_roots": [str(p) for p in roots.data_roots],
                "export_roots": [str(p) for p in roots.export_roots],
                "s3_buckets": sorted(roots.s3_buckets),
            },
            settings.infer_wait_s,
            settings.max_parallel_items,
            settings.max_parallel_branches,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSettings:
        return cls(**json.loads(text))


def model_retry_policy(settings: JobSettings) -> RetryPolicy:
    return RetryPolicy(
        max_retries=settings.model_retries,
        delay=settings.model_retry_delay_s,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def runs_in_parallel(plan: Plan, settings: JobSettings) -> bool:
    """A run over many STAC items runs its steps in processes of their own, `max_parallel_items` at once."""
    return plan.items > 1 and settings.max_parallel_items > 1


def executor_for(plan: Plan, settings: JobSettings) -> ExecutorDefinition:
    """Over many items: a process per step, `max_parallel_items` at once. Otherwise the steps run in the worker
    process: over one scene those of independent branches at once, `max_parallel_branches` threads; over many
    items one after another (max_parallel_items 1), as do all steps with max_parallel_branches 1."""
    if runs_in_parallel(plan, settings):
        return multiprocess_executor.configured(
            {
                "max_concurrent": settings.max_parallel_items,
                # Step processes fork from a server that imported the ops once (a fresh interpreter per step
                # spends seconds importing Dagster, GDAL and numpy).
                "start_method": {"forkserver": {"preload_modules": ["orchestrator_svc.jobs"]}},
            }
        )
    branches = settings.max_parallel_branches if plan.items <= 1 else 1
    return threaded_executor.configured({"max_concurrent": branches})


def build_job(plan: Plan, settings: JobSettings) -> JobDefinition:
    dependencies = {}
    for block in plan.blocks:
        invocation = NodeInvocation(
            OP_DEFS[block.kind].name,
            alias=block.op_name,
            tags={"constellation/block_id": block.id},
            retry_policy=model_retry_policy(settings) if block.kind == "model" else None,
        )
        dependencies[invocation] = {
            name: MultiDependencyDefinition([DependencyDefinition(op, "result") for op in sources])
            if block.kind == "summary"  # fan-in: every item's copy of its input
            else DependencyDefinition(sources[0], "result")
            for name, sources in block.inputs.items()
        }
    kinds = sorted({b.kind for b in plan.blocks})
    graph = GraphDefinition(name=JOB_NAME, node_defs=[OP_DEFS[k] for k in kinds], dependencies=dependencies)
    return graph.to_job(
        resource_defs={"constellation": ConstellationResource.configure_at_launch()},
        executor_def=executor_for(plan, settings),
        description="A Constellation pipeline spec (blocks and edges) launched through the orchestrator.",
    )


def early_exports(plan: Plan, settings: JobSettings) -> dict[str, list[str]]:
    """Stitch op name -> what the exports of its raster want of it ("cog", "png_preview"), for a run whose
    steps share its worker process (over one scene): the stitch step starts that work in threads
    (ops.start_early_export), so it runs beside the vectorize step instead of after it."""
    if runs_in_parallel(plan, settings):
        return {}
    kinds = {b.op_name: b.kind for b in plan.blocks}
    wanted: dict[str, set[str]] = {}
    for block in plan.blocks:
        sources = block.inputs.get("raster", ())
        if block.kind == "export" and len(sources) == 1 and kinds.get(sources[0]) == "stitch":
            formats = {f for f in block.config.get("formats", []) if f in ("cog", "png_preview")}
            if formats:
                wanted.setdefault(sources[0], set()).update(formats)
    return {op: sorted(formats) for op, formats in wanted.items()}


def run_config(plan: Plan, settings: JobSettings) -> dict:
    early = early_exports(plan, settings)
    return {
        "ops": {
            b.op_name: {"config": {**b.config, "prepare": early[b.op_name]} if b.op_name in early else b.config}
            for b in plan.blocks
        },
        "resources": {
            "constellation": {
                "config": {
                    "work_dir": settings.work_dir,
                    "s3_endpoint_url": settings.s3_endpoint_url,
                    "confined": settings.roots is not None,
                    **(settings.roots or {}),
                }
            }
        },
    }


def plan_of(request_json: str, settings: JobSettings) -> Plan:
    """A stored run's plan, from its LaunchRun request and job settings (in its worker; when re-executing it)."""
    return specs.build_plan(
        specs.request_from_json(request_json),
        default_batch_size=settings.default_batch_size,
        default_max_concurrency=settings.default_max_concurrency,
        infer_timeout_s=settings.infer_timeout_s,
        infer_wait_s=settings.infer_wait_s,
        roots=None,  # LaunchRun checked the run's places against the roots
    )

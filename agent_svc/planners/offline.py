"""The embedded default planner: no network but core. Reads the prompt deterministically, ranks, builds the spec."""

from __future__ import annotations

from agent_svc import planning, prompt, ranking
from agent_svc.catalog_client import CoreCatalog, Snapshot
from agent_svc.domain import BlockReason, Intent, Plan, Query, Recommendation
from mesh.errors import FailedPrecondition, NotFound
from pipeline.bands import match_bands


def check_pins(snapshot: Snapshot, query: Query) -> None:
    if query.dataset_id and query.dataset_id not in snapshot.index.d_by_id:
        raise NotFound(f"no dataset has id {query.dataset_id!r}")
    if query.model_id and query.model_id not in snapshot.index.m_by_id:
        raise NotFound(f"no model has id {query.model_id!r}")


def no_pair_reason(snapshot: Snapshot, query: Query, recommendation: Recommendation) -> str:
    catalog = snapshot.catalog
    if not catalog.datasets or not catalog.models:
        return f"the catalog has no {'datasets' if not catalog.datasets else 'models'}; register some in core first"
    if query.dataset_id and query.model_id:
        d = catalog.datasets[snapshot.index.d_by_id[query.dataset_id]]
        m = catalog.models[snapshot.index.m_by_id[query.model_id]]
        missing = match_bands(m.bands, d.bands).missing
        return f"model {m.name!r} reads bands {', '.join(m.bands)}, but dataset {d.name!r} lacks {', '.join(missing)}"
    pinned = f"the pinned {'dataset' if query.dataset_id else 'model'} " if (query.dataset_id or query.model_id) else ""
    return (
        f"no model in the catalog reads only bands that {pinned or 'a leading dataset '}has; {recommendation.summary}"
    )


def annotate(rationale: list[BlockReason], recommendation: Recommendation) -> list[BlockReason]:
    """Say in the plan itself when its dataset or model misses a constraint."""
    if recommendation.satisfied:
        return rationale
    notes = {"scene": recommendation.datasets[0].shortfalls, "infer": recommendation.models[0].shortfalls}
    return [
        BlockReason(
            r.block_id, r.reason + (f" (falls short: {'; '.join(notes[r.block_id])})" if notes.get(r.block_id) else "")
        )
        for r in rationale
    ]


class OfflinePlanner:
    name = "offline"

    def __init__(self, catalog: CoreCatalog, export_base: str) -> None:
        self.catalog = catalog
        self.export_base = export_base

    def read(self, query: Query) -> Intent:
        return prompt.parse(query.prompt, query.constraints)

    def recommend(self, query: Query) -> Recommendation:
        snapshot = self.catalog.snapshot()
        return ranking.rank(snapshot.index, self.read(query), query.max_results, planner=self.name)

    def plan(self, query: Query) -> Plan:
        intent = self.read(query)
        for attempt in range(2):
            snapshot = self.catalog.snapshot(refresh=attempt > 0)
            check_pins(snapshot, query)
            recommendation = ranking.rank(
                snapshot.index, intent, query.max_results, query.dataset_id, query.model_id, planner=self.name
            )
            if recommendation.best_pair is None:
                raise FailedPrecondition(f"cannot build a pipeline: {no_pair_reason(snapshot, query, recommendation)}")
            dataset_id, model_id = recommendation.best_pair
            index = snapshot.index
            d, m = index.d_by_id[dataset_id], index.m_by_id[model_id]
            spec, rationale = planning.build_spec(
                snapshot.catalog.datasets[d],
                snapshot.catalog.models[m],
                intent,
                self.export_base,
                sar=bool(index.d_sar[d]),
            )
            validation = self.catalog.validate(spec)
            if validation.valid:
                return Plan(spec, annotate(rationale, recommendation), recommendation, self.name)
            # The snapshot may be stale (an entry changed or went away): read core again once.
        raise FailedPrecondition("the planned spec does not pass ValidatePipeline: " + "; ".join(validation.problems))

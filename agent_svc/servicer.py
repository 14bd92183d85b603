"""AgentService over gRPC: protobuf <-> the agent's domain, nothing else."""

from __future__ import annotations

from agent_svc.agent import Agent
from agent_svc.domain import DEFAULT_RESULTS, Constraints, Query, Recommendation
from constellation.agent.v1 import agent_pb2, agent_pb2_grpc
from constellation.common.v1 import common_pb2

PLANNER_NAMES = {agent_pb2.PLANNER_OFFLINE: "offline", agent_pb2.PLANNER_GEMINI: "gemini"}
PLANNER_ENUMS = {v: k for k, v in PLANNER_NAMES.items()}
TASK_NAMES = {
    common_pb2.MODEL_TASK_CLASSIFICATION: "classification",
    common_pb2.MODEL_TASK_SEGMENTATION: "segmentation",
    common_pb2.MODEL_TASK_DETECTION: "detection",
    common_pb2.MODEL_TASK_REGRESSION: "regression",
}


def constraints_from_proto(c: agent_pb2.Constraints) -> Constraints:
    region = None
    if c.HasField("region"):
        r = c.region
        region = (r.min_x, r.min_y, r.max_x, r.max_y)
    return Constraints(
        sensors=list(c.sensors),
        bands=list(c.bands),
        task=TASK_NAMES.get(c.task, ""),
        region=region,
        max_resolution_m=c.max_resolution_m,
        max_latency_ms=c.max_latency_ms,
        min_accuracy=c.min_accuracy,
    )


def recommendation_to_proto(r: Recommendation) -> agent_pb2.RecommendResponse:
    def candidate(c):
        return agent_pb2.Candidate(id=c.id, name=c.name, score=c.score, reasons=c.reasons, shortfalls=c.shortfalls)

    return agent_pb2.RecommendResponse(
        datasets=[candidate(c) for c in r.datasets],
        models=[candidate(c) for c in r.models],
        satisfied=r.satisfied,
        summary=r.summary,
        planner=PLANNER_ENUMS[r.planner],
    )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def Recommend(self, request, context):
        query = Query(
            prompt=request.prompt,
            constraints=constraints_from_proto(request.constraints),
            max_results=DEFAULT_RESULTS if request.max_results == 0 else request.max_results,
            planner=PLANNER_NAMES.get(request.planner, ""),
        )
        return recommendation_to_proto(self._agent.recommend(query))

    def PlanPipeline(self, request, context):
        query = Query(
            prompt=request.prompt,
            constraints=constraints_from_proto(request.constraints),
            planner=PLANNER_NAMES.get(request.planner, ""),
            dataset_id=request.dataset_id,
            model_id=request.model_id,
        )
        plan = self._agent.plan(query)
        return agent_pb2.PlanPipelineResponse(
            spec=plan.spec,
            rationale=[agent_pb2.BlockRationale(block_id=r.block_id, reason=r.reason) for r in plan.rationale],
            recommendation=recommendation_to_proto(plan.recommendation),
            planner=PLANNER_ENUMS[plan.planner],
        )

"""AgentService over gRPC: protobuf <-> the agent's domain."""

from __future__ import annotations

from constellation.agent.v1 import agent_pb2, agent_pb2_grpc
from constellation.common.v1 import common_pb2
from agent_svc.planning import Recommendation
from agent_svc.ranking import Ranked
from agent_svc.service import TASKS, Agent

PLANNERS = {agent_pb2.PLANNER_OFFLINE: "offline", agent_pb2.PLANNER_GEMINI: "gemini"}


def constraints_from_proto(message: agent_pb2.Constraints) -> dict:
    task = common_pb2.ModelTask.Name(message.task).removeprefix("MODEL_TASK_").lower() if message.task else ""
    region = None
    if message.HasField("region"):
        r = message.region
        region = (r.min_x, r.min_y, r.max_x, r.max_y)
    return {
        "sensors": list(message.sensors),
        "bands": list(message.bands),
        "task": task if task in TASKS else "",
        "region": region,
        "max_resolution_m": message.max_resolution_m,
        "max_latency_ms": message.max_latency_ms,
        "min_accuracy": message.min_accuracy,
    }


def candidate(ranked: Ranked) -> agent_pb2.Candidate:
    return agent_pb2.Candidate(id=ranked.entry.id, name=ranked.entry.name, score=ranked.score, reasons=ranked.reasons, shortfalls=ranked.shortfalls)


def recommendation_to_proto(result: Recommendation) -> agent_pb2.RecommendResponse:
    return agent_pb2.RecommendResponse(
        datasets=[candidate(d) for d in result.datasets],
        models=[candidate(m) for m in result.models],
        satisfied=result.satisfied,
        summary=result.summary,
        planner=agent_pb2.PLANNER_GEMINI if result.planner == "gemini" else agent_pb2.PLANNER_OFFLINE,
    )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def Recommend(self, request, context):
        result = self._agent.recommend(request.prompt, constraints_from_proto(request.constraints), request.max_results, PLANNERS.get(request.planner, ""))
        return recommendation_to_proto(result)

    def PlanPipeline(self, request, context):
        plan = self._agent.plan(request.prompt, constraints_from_proto(request.constraints), request.dataset_id, request.model_id, PLANNERS.get(request.planner, ""))
        return agent_pb2.PlanPipelineResponse(
            spec=plan.spec,
            rationale=[agent_pb2.BlockRationale(block_id=b, reason=r) for b, r in plan.rationale],
            recommendation=recommendation_to_proto(plan.recommendation),
            planner=agent_pb2.PLANNER_GEMINI if plan.planner == "gemini" else agent_pb2.PLANNER_OFFLINE,
        )

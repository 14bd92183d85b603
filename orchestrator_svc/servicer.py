"""OrchestratorService over gRPC: protobuf in, the run manager decides, protobuf out."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from constellation.orchestrator.v1 import orchestrator_pb2 as pb
from constellation.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from orchestrator_svc.runs import RunInfo, RunManager


def _timestamp(value: datetime | float | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    if isinstance(value, datetime):
        stamp.FromDatetime(value)
    else:
        stamp.FromMicroseconds(round(value * 1e6))
    return stamp


def run_to_proto(info: RunInfo) -> pb.Run:
    return pb.Run(
        id=info.id,
        state=info.state,
        state_message=info.state_message,
        outputs=info.outputs,
        create_time=_timestamp(info.create_time),
        start_time=_timestamp(info.start_time),
        end_time=_timestamp(info.end_time),
    )


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self._runs = runs

    def LaunchRun(self, request, context):
        return run_to_proto(self._runs.launch(request))

    def GetRun(self, request, context):
        return run_to_proto(self._runs.get(request.id))

    def ListRuns(self, request, context):
        runs, token = self._runs.list(request.page_size, request.page_token)
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    def WatchRun(self, request, context):
        yield from self._runs.watch(request.run_id, request.after_sequence, context.is_active)

    def CancelRun(self, request, context):
        return run_to_proto(self._runs.cancel(request.id))

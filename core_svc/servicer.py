"""CoreService, IdentityService and AuditService over gRPC: translate protobuf to core's domain (catalog, runs,
accounts, audit log) and back, with the caller's identity (mesh.identity) for the domain's ownership rules."""

from __future__ import annotations

from google.protobuf import empty_pb2

from constellation.core.v1 import audit_pb2, audit_pb2_grpc, core_pb2, core_pb2_grpc, identity_pb2, identity_pb2_grpc
from core_svc import convert
from core_svc.accounts import Accounts
from core_svc.audit import AuditStore
from core_svc.catalog import Catalog
from core_svc.runs import Runs
from core_svc.stac import StacReader
from mesh import identity
from mesh.auth import principal_to_proto
from mesh.errors import InvalidArgument
from pipeline import mlm
from pipeline.convert import problem_to_proto


class CoreServicer(core_pb2_grpc.CoreServiceServicer):
    def __init__(self, catalog: Catalog, runs: Runs, stac: StacReader) -> None:
        self._catalog = catalog
        self._runs = runs
        self._stac = stac

    def CreateDataset(self, request, context):
        if request.dataset.items:
            raise InvalidArgument.field("dataset.items", "are set only by ImportStacDatasets, from the items' metadata")
        return convert.dataset_to_proto(
            self._catalog.create_dataset(convert.dataset_from_proto(request.dataset), _caller())
        )

    def GetDataset(self, request, context):
        return convert.dataset_to_proto(self._catalog.get_dataset(request.id))

    def ListDatasets(self, request, context):
        datasets, token = self._catalog.list_datasets(_caller(), request.page_size, request.page_token, request.filter)
        return core_pb2.ListDatasetsResponse(
            datasets=[convert.dataset_to_proto(d) for d in datasets], next_page_token=token
        )

    def UpdateDataset(self, request, context):
        dataset = convert.dataset_from_proto(request.dataset)
        dataset.id = request.dataset.id
        updated = self._catalog.update_dataset(dataset, list(request.update_mask.paths), _caller())
        return convert.dataset_to_proto(updated)

    def DeleteDataset(self, request, context):
        self._catalog.delete_dataset(request.id, _caller())
        return empty_pb2.Empty()

    def ImportStacDatasets(self, request, context):
        datasets = self._catalog.import_stac(convert.stac_import_from_proto(request), self._stac, _caller())
        return core_pb2.ImportStacDatasetsResponse(datasets=[convert.dataset_to_proto(d) for d in datasets])

    def RegisterModel(self, request, context):
        return convert.model_to_proto(self._catalog.register_model(convert.model_from_proto(request.model), _caller()))

    def ImportModelFromStac(self, request, context):
        model = mlm.model_from_item(request.item_json)
        return convert.model_to_proto(self._catalog.register_model(convert.model_from_proto(model), _caller()))

    def GetModel(self, request, context):
        return convert.model_to_proto(self._catalog.get_model(request.id))

    def ListModels(self, request, context):
        models, token = self._catalog.list_models(_caller(), request.page_size, request.page_token, request.filter)
        return core_pb2.ListModelsResponse(models=[convert.model_to_proto(m) for m in models], next_page_token=token)

    def DeleteModel(self, request, context):
        self._catalog.delete_model(request.id, _caller())
        return empty_pb2.Empty()

    def CreatePipeline(self, request, context):
        pipeline = self._catalog.create_pipeline(convert.pipeline_from_proto(request.pipeline), _caller())
        return convert.pipeline_to_proto(pipeline)

    def GetPipeline(self, request, context):
        return convert.pipeline_to_proto(self._catalog.get_pipeline(request.id))

    def ListPipelines(self, request, context):
        pipelines, token = self._catalog.list_pipelines(
            _caller(), request.page_size, request.page_token, request.filter
        )
        return core_pb2.ListPipelinesResponse(
            pipelines=[convert.pipeline_to_proto(p) for p in pipelines], next_page_token=token
        )

    def DeletePipeline(self, request, context):
        self._catalog.delete_pipeline(request.id, _caller())
        return empty_pb2.Empty()

    def ValidatePipeline(self, request, context):
        problems, order = self._catalog.validate_pipeline(convert.spec_from_proto(request.spec))
        return core_pb2.ValidatePipelineResponse(
            valid=not problems, problems=[problem_to_proto(p) for p in problems], topological_order=order
        )

    def RunPipeline(self, request, context):
        return convert.run_to_proto(self._runs.run_pipeline(request.pipeline_id, _caller()))

    def GetRun(self, request, context):
        return convert.run_to_proto(self._runs.get(request.id))

    def ListRuns(self, request, context):
        runs, token = self._runs.list(_caller(), request.page_size, request.page_token, request.filter)
        return core_pb2.ListRunsResponse(runs=[convert.run_to_proto(r) for r in runs], next_page_token=token)

    def WatchRun(self, request, context):
        yield from self._runs.watch(request.run_id, request.after_sequence, context.is_active)

    def CancelRun(self, request, context):
        return convert.run_to_proto(self._runs.cancel(request.id, _caller()))


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def CreateUser(self, request, context):
        role = convert.role_from_proto(request.user.role)
        return convert.user_to_proto(self._accounts.create_user(request.user.name, role))

    def GetUser(self, request, context):
        return convert.user_to_proto(self._accounts.get_user(request.id))

    def ListUsers(self, request, context):
        users, token = self._accounts.list_users(request.page_size, request.page_token)
        return identity_pb2.ListUsersResponse(users=[convert.user_to_proto(u) for u in users], next_page_token=token)

    def UpdateUser(self, request, context):
        paths = set(request.update_mask.paths) or ({"role"} if request.user.role else set())
        unknown = paths - {"role", "disabled"}
        if unknown:
            raise InvalidArgument.field("update_mask", f"may name 'role' and 'disabled', not {sorted(unknown)}")
        role = convert.role_from_proto(request.user.role) if "role" in paths else None
        disabled = request.user.disabled if "disabled" in paths else None
        return convert.user_to_proto(self._accounts.update_user(request.user.id, role, disabled))

    def CreateApiKey(self, request, context):
        key, text = self._accounts.create_key(_caller(), request.user_id, request.ttl_seconds, request.description)
        return identity_pb2.CreateApiKeyResponse(api_key=convert.api_key_to_proto(key), key=text)

    def ListApiKeys(self, request, context):
        keys = self._accounts.list_keys(_caller(), request.user_id, request.include_inactive)
        return identity_pb2.ListApiKeysResponse(api_keys=[convert.api_key_to_proto(k) for k in keys])

    def RevokeApiKey(self, request, context):
        return convert.api_key_to_proto(self._accounts.revoke_key(_caller(), request.id))

    def WhoAmI(self, request, context):
        return principal_to_proto(_caller())

    def Authenticate(self, request, context):
        return principal_to_proto(self._accounts.authenticate(request.api_key))


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    def ListAuditEvents(self, request, context):
        events, token = self._store.list(
            _caller(),
            request.page_size,
            request.page_token,
            request.filter,
            request.start_time if request.HasField("start_time") else None,
            request.end_time if request.HasField("end_time") else None,
        )
        return audit_pb2.ListAuditEventsResponse(events=events, next_page_token=token)

    def RecordAuditEvents(self, request, context):
        recorded = self._store.record_from_service(_caller(), list(request.events))
        return audit_pb2.RecordAuditEventsResponse(recorded=recorded)


def _caller() -> identity.Identity:
    caller = identity.current()
    assert caller is not None  # the interceptor sets it for every call it lets through
    return caller

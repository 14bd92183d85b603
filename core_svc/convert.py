"""Protobuf <-> domain for core's resources. The only module here that knows both."""

from __future__ import annotations

from constellation.common.v1 import common_pb2
from constellation.core.v1 import core_pb2, identity_pb2
from core_svc.accounts import ApiKey, User
from core_svc.domain import (
    BoundingBox,
    Dataset,
    InputSpec,
    Model,
    ModelCard,
    OutputSpec,
    Pipeline,
    Run,
    SceneItem,
)
from core_svc.stac import StacImport, StacSearch
from mesh.auth import ROLE_FROM_PROTO, ROLE_TO_PROTO
from mesh.enums import enum_name, enum_value
from mesh.identity import ROLES
from mesh.timestamps import to_timestamp
from pipeline.convert import spec_from_proto, spec_to_proto


def dataset_from_proto(message: core_pb2.Dataset) -> Dataset:
    box = message.bbox
    return Dataset(
        id=message.id,
        name=message.name,
        description=message.description,
        uri=message.uri,
        sensor=message.sensor,
        bands=list(message.bands),
        resolution_m=message.resolution_m,
        bbox=BoundingBox(box.min_x, box.min_y, box.max_x, box.max_y, box.crs or "EPSG:4326")
        if message.HasField("bbox")
        else None,
        tags=list(message.tags),
    )


def dataset_to_proto(dataset: Dataset) -> core_pb2.Dataset:
    return core_pb2.Dataset(
        id=dataset.id,
        name=dataset.name,
        description=dataset.description,
        uri=dataset.uri,
        sensor=dataset.sensor,
        bands=dataset.bands,
        resolution_m=dataset.resolution_m,
        bbox=_bbox_to_proto(dataset.bbox),
        tags=dataset.tags,
        create_time=to_timestamp(dataset.create_time),
        update_time=to_timestamp(dataset.update_time),
        owner=dataset.owner,
        items=[scene_to_proto(item) for item in dataset.items],
    )


def _bbox_to_proto(box: BoundingBox | None) -> common_pb2.BoundingBox | None:
    if box is None:
        return None
    return common_pb2.BoundingBox(min_x=box.min_x, min_y=box.min_y, max_x=box.max_x, max_y=box.max_y, crs=box.crs)


def scene_to_proto(item: SceneItem) -> common_pb2.SceneItem:
    """Core's Dataset.items and the orchestrator's ResolvedDataset.items carry the same message."""
    return common_pb2.SceneItem(
        id=item.id,
        acquired_time=to_timestamp(item.acquired_time),
        cloud_cover=item.cloud_cover,
        bbox=_bbox_to_proto(item.bbox),
        crs=item.crs,
        assets=[
            common_pb2.BandAsset(
                band=a.band, uri=a.uri, band_index=a.band_index, resolution_m=a.resolution_m, asset_key=a.asset_key
            )
            for a in item.assets
        ],
        uri=item.uri,
        stac_href=item.stac_href,
        collection=item.collection,
    )


STAC_MODES = {
    core_pb2.STAC_IMPORT_MODE_UNSPECIFIED: "",
    core_pb2.STAC_IMPORT_MODE_DATASET_PER_ITEM: "per_item",
    core_pb2.STAC_IMPORT_MODE_ONE_DATASET: "one",
}


def stac_import_from_proto(message: core_pb2.ImportStacDatasetsRequest) -> StacImport:
    search = None
    if message.HasField("search"):
        s = message.search
        search = StacSearch(
            api_url=s.api_url,
            collections=list(s.collections),
            bbox=list(s.bbox),
            intersects=s.intersects,
            datetime=s.datetime,
            max_cloud_cover=s.max_cloud_cover if s.HasField("max_cloud_cover") else None,
            filter=s.filter,
            max_items=s.max_items,
        )
    return StacImport(
        item_uri=message.item_uri,
        item_json=message.item_json,
        catalog_uri=message.catalog_uri,
        search=search,
        mode=STAC_MODES.get(message.mode, "?"),
        name=message.name,
        description=message.description,
        tags=list(message.tags),
        bands=list(message.bands),
        sensor=message.sensor,
    )


def model_from_proto(message: core_pb2.Model) -> Model:
    card, spec = message.card, message.input
    return Model(
        id=message.id,
        name=message.name,
        version=message.version,
        task=enum_name(common_pb2.ModelTask, message.task),
        source=message.source,
        card=ModelCard(card.description, card.data_used, list(card.dependencies), dict(card.metrics), card.license),
        input=InputSpec(
            [b.lower() for b in spec.bands], spec.tile_size_px, spec.dtype.upper(), spec.value_min, spec.value_max
        ),
        outputs=[OutputSpec(o.name, o.dtype.upper(), list(o.shape), o.description) for o in message.outputs],
        tags=list(message.tags),
    )


def model_to_proto(model: Model) -> core_pb2.Model:
    return core_pb2.Model(
        id=model.id,
        name=model.name,
        version=model.version,
        task=enum_value(common_pb2.ModelTask, model.task),
        source=model.source,
        card=common_pb2.ModelCard(
            description=model.card.description,
            data_used=model.card.data_used,
            dependencies=model.card.dependencies,
            metrics=model.card.metrics,
            license=model.card.license,
        ),
        input=common_pb2.ModelInputSpec(
            bands=model.input.bands,
            tile_size_px=model.input.tile_size_px,
            dtype=model.input.dtype,
            value_min=model.input.value_min,
            value_max=model.input.value_max,
        ),
        outputs=[
            common_pb2.ModelOutputSpec(name=o.name, dtype=o.dtype, shape=o.shape, description=o.description)
            for o in model.outputs
        ],
        state=enum_value(core_pb2.ModelState, model.state),
        state_message=model.state_message,
        tags=model.tags,
        create_time=to_timestamp(model.create_time),
        update_time=to_timestamp(model.update_time),
        owner=model.owner,
    )


def pipeline_from_proto(message: core_pb2.Pipeline) -> Pipeline:
    return Pipeline(
        id=message.id, name=message.name, description=message.description, spec=spec_from_proto(message.spec)
    )


def pipeline_to_proto(pipeline: Pipeline) -> core_pb2.Pipeline:
    return core_pb2.Pipeline(
        id=pipeline.id,
        name=pipeline.name,
        description=pipeline.description,
        spec=spec_to_proto(pipeline.spec),
        create_time=to_timestamp(pipeline.create_time),
        update_time=to_timestamp(pipeline.update_time),
        owner=pipeline.owner,
    )


def run_state_to_proto(state: str) -> common_pb2.RunState.ValueType:
    return enum_value(common_pb2.RunState, state)


def run_to_proto(run: Run) -> core_pb2.Run:
    return core_pb2.Run(
        id=run.id,
        pipeline_id=run.pipeline_id,
        state=run_state_to_proto(run.state),
        state_message=run.state_message,
        outputs=[common_pb2.RunOutput(**o) for o in run.outputs],
        create_time=to_timestamp(run.create_time),
        start_time=to_timestamp(run.start_time),
        end_time=to_timestamp(run.end_time),
        owner=run.owner,
    )


def user_to_proto(user: User) -> identity_pb2.User:
    return identity_pb2.User(
        id=user.id,
        name=user.name,
        role=ROLE_TO_PROTO[user.role],
        disabled=user.disabled,
        create_time=to_timestamp(user.create_time),
    )


def role_from_proto(role: identity_pb2.Role.ValueType) -> str:
    """A user's role ("" when unset); a service's role is not one a user can have."""
    name = ROLE_FROM_PROTO.get(role, "")
    return name if name in ROLES else ""


def api_key_to_proto(key: ApiKey) -> identity_pb2.ApiKey:
    return identity_pb2.ApiKey(
        id=key.id,
        user_id=key.user_id,
        description=key.description,
        create_time=to_timestamp(key.create_time),
        expire_time=to_timestamp(key.expire_time),
        revoke_time=to_timestamp(key.revoke_time),
        last_used_time=to_timestamp(key.last_used_time),
    )

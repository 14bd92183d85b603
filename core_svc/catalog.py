"""The catalog: datasets, models and pipelines in SQL, with validation (filters and pages: core_svc.listing)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import TypeVar, cast

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from clients.roots import StorageRoots
from core_svc import db
from core_svc.domain import (
    MODEL_TASKS,
    BandAsset,
    BoundingBox,
    Dataset,
    InputSpec,
    Model,
    ModelCard,
    OutputSpec,
    Pipeline,
    SceneItem,
)
from core_svc.listing import FilterFields, Page, parse_filter
from core_svc.ownership import check_may_change, check_may_create, owner_wanted
from core_svc.stac import StacImport, StacReader, datasets_from_items
from core_svc.validation import MAX_DESCRIPTION, MAX_NAME, validate_dataset, validate_model
from mesh.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from mesh.identity import Identity
from mesh.ids import new_id
from pipeline.bands import names_of
from pipeline.spec import DatasetView, ModelView, OutputView, PipelineSpec, Problem
from pipeline.validation import validate_spec

ListedRow = TypeVar("ListedRow", db.DatasetRow, db.ModelRow, db.PipelineRow)

UPDATABLE_DATASET_FIELDS = ("name", "description", "uri", "sensor", "bands", "resolution_m", "bbox", "tags")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _index(values: list[str]) -> str:
    return "," + ",".join(values) + ","


def _like_member(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%,{escaped},%"


def items_to_json(items: list[SceneItem]) -> list[dict]:
    return [
        {
            **dataclasses.asdict(item),
            "acquired_time": item.acquired_time.isoformat() if item.acquired_time else None,
        }
        for item in items
    ]


def items_from_json(data: list[dict]) -> list[SceneItem]:
    items = []
    for entry in data or []:
        box, acquired = entry.get("bbox"), entry.get("acquired_time")
        items.append(
            SceneItem(
                **{
                    **entry,
                    "acquired_time": _aware(datetime.fromisoformat(acquired)) if acquired else None,
                    "bbox": BoundingBox(**box) if box else None,
                    "assets": [BandAsset(**a) for a in entry.get("assets", [])],
                }
            )
        )
    return items


def _has_band(table: type[db.DatasetRow] | type[db.ModelRow], band: str) -> ColumnElement[bool]:
    """A `band = "x"` filter term: the band under any of its names (pipeline.bands), so swir1 finds swir16."""
    return or_(*(table.bands_index.like(_like_member(name), escape="\\") for name in names_of(band)))


def _dataset_from_row(row: db.DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        description=row.description,
        uri=row.uri,
        sensor=row.sensor,
        bands=list(row.bands),
        resolution_m=row.resolution_m,
        bbox=BoundingBox(**row.bbox) if row.bbox else None,
        tags=list(row.tags),
        create_time=_aware(row.create_time),
        update_time=_aware(row.update_time),
        owner=row.owner,
        items=items_from_json(row.items),
    )


def _model_from_row(row: db.ModelRow) -> Model:
    return Model(
        id=row.id,
        name=row.name,
        version=row.version,
        task=row.task,
        source=row.source,
        card=ModelCard(**row.card),
        input=InputSpec(**row.input_spec),
        outputs=[OutputSpec(**o) for o in row.outputs],
        state=row.state,
        state_message=row.state_message,
        tags=list(row.tags),
        create_time=_aware(row.create_time),
        update_time=_aware(row.update_time),
        owner=row.owner,
    )


def spec_to_json(spec: PipelineSpec) -> dict:
    return spec.to_json()


def spec_from_json(data: dict) -> PipelineSpec:
    return PipelineSpec.from_json(data)


def dataset_view(dataset: Dataset | None) -> DatasetView | None:
    """What pipeline validation reads of a dataset."""
    return None if dataset is None else DatasetView(dataset.id, dataset.name, tuple(dataset.bands))


def model_view(model: Model | None) -> ModelView | None:
    """What pipeline validation reads of a model."""
    if model is None:
        return None
    outputs = tuple(OutputView(o.name, o.dtype, tuple(o.shape)) for o in model.outputs)
    return ModelView(model.id, model.name, tuple(model.input.bands), model.input.tile_size_px, outputs)


def _pipeline_from_row(row: db.PipelineRow) -> Pipeline:
    return Pipeline(
        id=row.id,
        name=row.name,
        description=row.description,
        spec=spec_from_json(row.spec),
        create_time=_aware(row.create_time),
        update_time=_aware(row.update_time),
        owner=row.owner,
    )


def _prefixed(prefix: str, violations: list[FieldViolation]) -> list[FieldViolation]:
    return [FieldViolation(f"{prefix}.{v.field}", v.description) for v in violations]


class Catalog:
    def __init__(self, engine: Engine, roots: StorageRoots) -> None:
        self.engine = engine
        self.roots = roots  # where dataset scenes and export destinations may lie
        self._sessions = db.session_factory(engine)

    def _session(self) -> Session:
        return self._sessions()

    def _commit(self, session: Session, conflict: str) -> None:
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise AlreadyExists(conflict) from None

    # Datasets

    def create_dataset(self, dataset: Dataset, caller: Identity) -> Dataset:
        return self.create_datasets([dataset], caller)[0]

    def create_datasets(self, datasets: list[Dataset], caller: Identity) -> list[Dataset]:
        """Every dataset, or none (one transaction); `datasets[i]` violations are prefixed with `datasets[i]` when
        there are several."""
        check_may_create(caller, "dataset")
        now = _now()
        rows, names = [], set()
        for i, dataset in enumerate(datasets):
            dataset = dataclasses.replace(
                dataset, sensor=dataset.sensor.lower(), bands=[b.lower() for b in dataset.bands]
            )
            violations = validate_dataset(dataset, self.roots)
            if violations:
                raise InvalidArgument(_prefixed("dataset" if len(datasets) == 1 else f"datasets[{i}]", violations))
            if dataset.name in names:
                raise AlreadyExists(f"two of the datasets would be named {dataset.name!r}")
            names.add(dataset.name)
            rows.append(
                db.DatasetRow(
                    id=new_id("ds"),
                    name=dataset.name,
                    description=dataset.description,
                    uri=dataset.uri,
                    sensor=dataset.sensor,
                    bands=dataset.bands,
                    resolution_m=dataset.resolution_m,
                    bbox=dataclasses.asdict(dataset.bbox) if dataset.bbox else None,
                    tags=dataset.tags,
                    bands_index=_index(dataset.bands),
                    tags_index=_index(dataset.tags),
                    create_time=now,
                    update_time=now,
                    owner=caller.subject,
                    items=items_to_json(dataset.items),
                )
            )
        with self._session() as session:
            taken = session.scalars(select(db.DatasetRow.name).where(db.DatasetRow.name.in_(names))).first()
            if taken:
                raise AlreadyExists(f"a dataset named {taken!r} already exists")
            session.add_all(rows)
            self._commit(session, "a dataset with one of these names already exists")
            return [_dataset_from_row(row) for row in rows]

    def import_stac(self, request: StacImport, reader: StacReader, caller: Identity) -> list[Dataset]:
        """Datasets from STAC items (core_svc.stac): read, turned into datasets, saved together."""
        check_may_create(caller, "dataset")  # before any document is read on the caller's behalf
        documents, source = reader.read(request)
        return self.create_datasets(datasets_from_items(request, documents, source, self.roots), caller)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return _dataset_from_row(self._get(db.DatasetRow, dataset_id, "dataset"))

    def find_dataset(self, dataset_id: str) -> Dataset | None:
        row = self._find(db.DatasetRow, dataset_id)
        return _dataset_from_row(row) if row else None

    def list_datasets(
        self, caller: Identity, page_size: int = 0, page_token: str = "", filter_text: str = ""
    ) -> tuple[list[Dataset], str]:
        table = db.DatasetRow
        fields = {
            "name": lambda v: table.name == v,
            "sensor": lambda v: table.sensor == v.lower(),
            "tag": lambda v: table.tags_index.like(_like_member(v), escape="\\"),
            "band": lambda v: _has_band(table, v),
        }
        rows, token = self._list(table, caller, page_size, page_token, filter_text, fields)
        return [_dataset_from_row(r) for r in rows], token

    def update_dataset(self, dataset: Dataset, paths: list[str], caller: Identity) -> Dataset:
        if not dataset.id:
            raise InvalidArgument.field("dataset.id", "is required: the id of the dataset to update")
        if not paths:  # AIP-134: no mask means every field the caller set
            paths = [f for f in UPDATABLE_DATASET_FIELDS if getattr(dataset, f) not in ("", 0.0, [], None)]
        unknown = [p for p in paths if p not in UPDATABLE_DATASET_FIELDS]
        if unknown:
            raise InvalidArgument.field(
                "update_mask",
                f"cannot update {', '.join(unknown)}; updatable fields: {', '.join(UPDATABLE_DATASET_FIELDS)}",
            )
        with self._session() as session:
            row = session.get(db.DatasetRow, dataset.id)
            if row is None:
                raise NotFound(f"no dataset has id {dataset.id!r}")
            check_may_change(caller, "dataset", row.id, row.owner)
            merged = _dataset_from_row(row)
            for path in paths:
                setattr(merged, path, getattr(dataset, path))
            merged.sensor, merged.bands = merged.sensor.lower(), [b.lower() for b in merged.bands]
            violations = validate_dataset(merged, self.roots)
            if violations:
                raise InvalidArgument(_prefixed("dataset", violations))
            if "name" in paths and merged.name != row.name:
                if session.scalar(select(db.DatasetRow.id).where(db.DatasetRow.name == merged.name)):
                    raise AlreadyExists(f"a dataset named {merged.name!r} already exists")
            row.name, row.description, row.uri, row.sensor = merged.name, merged.description, merged.uri, merged.sensor
            row.bands, row.resolution_m, row.tags = merged.bands, merged.resolution_m, merged.tags
            row.bbox = dataclasses.asdict(merged.bbox) if merged.bbox else None
            row.bands_index, row.tags_index = _index(merged.bands), _index(merged.tags)
            row.update_time = _now()
            self._commit(session, f"a dataset named {merged.name!r} already exists")
            return _dataset_from_row(row)

    def delete_dataset(self, dataset_id: str, caller: Identity) -> None:
        self._delete(db.DatasetRow, dataset_id, "dataset", caller)

    # Models

    def register_model(self, model: Model, caller: Identity) -> Model:
        check_may_create(caller, "model")
        violations = validate_model(model)
        if violations:
            raise InvalidArgument(_prefixed("model", violations))
        now = _now()
        row = db.ModelRow(
            id=new_id("mdl"),
            name=model.name,
            version=model.version,
            task=model.task,
            source=model.source,
            card=dataclasses.asdict(model.card),
            input_spec=dataclasses.asdict(model.input),
            outputs=[dataclasses.asdict(o) for o in model.outputs],
            state="registered",
            state_message="",
            tags=model.tags,
            bands_index=_index(model.input.bands),
            tags_index=_index(model.tags),
            create_time=now,
            update_time=now,
            owner=caller.subject,
        )
        conflict = f"model {model.name!r} version {model.version!r} is already registered"
        with self._session() as session:
            exists = select(db.ModelRow.id).where(db.ModelRow.name == model.name, db.ModelRow.version == model.version)
            if session.scalar(exists):
                raise AlreadyExists(conflict)
            session.add(row)
            self._commit(session, conflict)
            return _model_from_row(row)

    def get_model(self, model_id: str) -> Model:
        return _model_from_row(self._get(db.ModelRow, model_id, "model"))

    def find_model(self, model_id: str) -> Model | None:
        row = self._find(db.ModelRow, model_id)
        return _model_from_row(row) if row else None

    def list_models(
        self, caller: Identity, page_size: int = 0, page_token: str = "", filter_text: str = ""
    ) -> tuple[list[Model], str]:
        table = db.ModelRow

        def task(value: str) -> ColumnElement[bool]:
            if value.lower() not in MODEL_TASKS:
                raise InvalidArgument.field("filter", f"task {value!r} is not one of {', '.join(MODEL_TASKS)}")
            return table.task == value.lower()

        fields = {
            "name": lambda v: table.name == v,
            "version": lambda v: table.version == v,
            "task": task,
            "tag": lambda v: table.tags_index.like(_like_member(v), escape="\\"),
            "band": lambda v: _has_band(table, v),
        }
        rows, token = self._list(table, caller, page_size, page_token, filter_text, fields)
        return [_model_from_row(r) for r in rows], token

    def set_model_state(self, model_id: str, state: str, message: str) -> None:
        """Where the model is in hosting (registered, packaging, ready, failed), as runs learn it."""
        with self._session() as session:
            row = session.get(db.ModelRow, model_id)
            if row is not None:
                row.state, row.state_message, row.update_time = state, message, _now()
                session.commit()

    def delete_model(self, model_id: str, caller: Identity) -> None:
        self._delete(db.ModelRow, model_id, "model", caller)

    # Pipelines

    def validate_pipeline(self, spec: PipelineSpec) -> tuple[list[Problem], list[str]]:
        return validate_spec(
            spec,
            lambda i: dataset_view(self.find_dataset(i)),
            lambda i: model_view(self.find_model(i)),
            roots=self.roots,
        )

    def create_pipeline(self, pipeline: Pipeline, caller: Identity) -> Pipeline:
        check_may_create(caller, "pipeline")
        violations = [FieldViolation(v.field, v.description) for v in _check_pipeline_fields(pipeline)]
        problems, _ = self.validate_pipeline(pipeline.spec)
        violations += [FieldViolation(f"spec.{p.field}", p.description) for p in problems]
        if violations:
            raise InvalidArgument(_prefixed("pipeline", violations))
        now = _now()
        row = db.PipelineRow(
            id=new_id("pl"),
            name=pipeline.name,
            description=pipeline.description,
            spec=spec_to_json(pipeline.spec),
            create_time=now,
            update_time=now,
            owner=caller.subject,
        )
        references = {
            ("dataset", b.settings.dataset_id) if b.kind == "dataset" else ("model", b.settings.model_id)
            for b in pipeline.spec.blocks
            if b.kind in ("dataset", "model")
        }
        conflict = f"a pipeline named {pipeline.name!r} already exists"
        with self._session() as session:
            if session.scalar(select(db.PipelineRow.id).where(db.PipelineRow.name == pipeline.name)):
                raise AlreadyExists(conflict)
            session.add(row)
            session.flush()
            session.add_all(db.PipelineReferenceRow(pipeline_id=row.id, ref_kind=k, ref_id=i) for k, i in references)
            self._commit(session, conflict)
            return _pipeline_from_row(row)

    def get_pipeline(self, pipeline_id: str) -> Pipeline:
        return _pipeline_from_row(self._get(db.PipelineRow, pipeline_id, "pipeline"))

    def find_pipeline(self, pipeline_id: str) -> Pipeline | None:
        row = self._find(db.PipelineRow, pipeline_id)
        return _pipeline_from_row(row) if row else None

    def list_pipelines(
        self, caller: Identity, page_size: int = 0, page_token: str = "", filter_text: str = ""
    ) -> tuple[list[Pipeline], str]:
        table = db.PipelineRow
        fields = {"name": lambda v: table.name == v}
        rows, token = self._list(table, caller, page_size, page_token, filter_text, fields)
        return [_pipeline_from_row(r) for r in rows], token

    def delete_pipeline(self, pipeline_id: str, caller: Identity) -> None:
        self._delete(db.PipelineRow, pipeline_id, "pipeline", caller)

    # Shared

    def _list(
        self,
        table: type[ListedRow],
        caller: Identity,
        page_size: int,
        page_token: str,
        filter_text: str,
        fields: FilterFields,
    ) -> tuple[list[ListedRow], str]:
        page = Page(page_size, page_token, filter_text)
        owner = {"owner": lambda v: table.owner == owner_wanted(v, caller)}
        clauses = parse_filter(filter_text, {**fields, **owner})
        with self._session() as session:
            return page.fetch(session, select(table).where(*clauses), table.id)

    def _find(self, table: type[ListedRow], resource_id: str) -> ListedRow | None:
        with self._session() as session:
            return session.get(table, resource_id)

    def _get(self, table: type[ListedRow], resource_id: str, kind: str) -> ListedRow:
        if not resource_id:
            raise InvalidArgument.field("id", f"is required: the id of the {kind}")
        row = self._find(table, resource_id)
        if row is None:
            raise NotFound(f"no {kind} has id {resource_id!r}")
        return row

    def _delete(self, table: type[ListedRow], resource_id: str, kind: str, caller: Identity) -> None:
        if not resource_id:
            raise InvalidArgument.field("id", f"is required: the id of the {kind}")
        with self._session() as session:
            row = session.get(table, resource_id)
            if row is None:
                raise NotFound(f"no {kind} has id {resource_id!r}")
            check_may_change(caller, kind, resource_id, row.owner)
            if kind in ("dataset", "model"):
                users = list(
                    session.scalars(
                        select(db.PipelineRow.name)
                        .join(db.PipelineReferenceRow, db.PipelineReferenceRow.pipeline_id == db.PipelineRow.id)
                        .where(db.PipelineReferenceRow.ref_kind == kind, db.PipelineReferenceRow.ref_id == resource_id)
                        .limit(5)
                    )
                )
                if users:
                    raise FailedPrecondition(
                        f"{kind} {resource_id!r} is used by pipeline(s) {', '.join(users)}; delete those "
                        "pipelines first"
                    )
            deleted = session.execute(delete(table).where(table.id == resource_id))
            result = cast(CursorResult, deleted)  # a DELETE's result is a cursor result, which has rowcount
            if result.rowcount == 0:
                raise NotFound(f"no {kind} has id {resource_id!r}")
            session.commit()

    def check_database(self) -> None:
        """Health check: raises when the database does not answer."""
        try:
            db.ping(self.engine)
        except OperationalError as error:
            raise Unavailable(f"database unreachable: {error.orig}") from None


def _check_pipeline_fields(pipeline: Pipeline) -> list[FieldViolation]:
    found = []
    if not pipeline.name.strip():
        found.append(FieldViolation("name", "is required"))
    elif len(pipeline.name) > MAX_NAME:
        found.append(FieldViolation("name", f"at most {MAX_NAME} characters"))
    if len(pipeline.description) > MAX_DESCRIPTION:
        found.append(FieldViolation("description", f"at most {MAX_DESCRIPTION} characters"))
    return found

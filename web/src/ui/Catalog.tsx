import { create } from "@bufbuild/protobuf";
import { useEffect, useState } from "preact/hooks";
import { BoundingBoxSchema, ModelTask } from "../../../gen/ts/constellation/common/v1/common_pb";
import { type Dataset, DatasetSchema, type Model, ModelState } from "../../../gen/ts/constellation/core/v1/core_pb";
import { core } from "../api";
import { describeError, type ServiceError, violationFor } from "../errors";
import { ErrorBox, enumLabel } from "./common";
import { FootprintMap } from "./MapView";
import { StacImport } from "./StacImport";

const MAX_PAGES = 10;

/** Every page of a List call, up to MAX_PAGES. */
async function allPages<T>(page: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>): Promise<T[]> {
  const found: T[] = [];
  let pageToken = "";
  for (let n = 0; n < MAX_PAGES; n++) {
    const response = await page(pageToken);
    found.push(...response.items);
    if (!(pageToken = response.nextPageToken)) break;
  }
  return found;
}

const allDatasets = (filter: string) =>
  allPages((pageToken) => core.listDatasets({ pageSize: 500, pageToken, filter }).then((r) => ({ items: r.datasets, nextPageToken: r.nextPageToken })));
const allModels = (filter: string) =>
  allPages((pageToken) => core.listModels({ pageSize: 500, pageToken, filter }).then((r) => ({ items: r.models, nextPageToken: r.nextPageToken })));

function matches(text: string, ...values: (string | string[])[]): boolean {
  const needle = text.trim().toLowerCase();
  return !needle || values.flat().some((v) => v.toLowerCase().includes(needle));
}

function shorten(text: string, length: number): string {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function extent(dataset: Dataset): string {
  const b = dataset.bbox;
  if (!b || (b.minX === 0 && b.maxX === 0 && b.minY === 0 && b.maxY === 0)) return "—";
  return `${b.minX.toFixed(3)}, ${b.minY.toFixed(3)} → ${b.maxX.toFixed(3)}, ${b.maxY.toFixed(3)} ${b.crs || "EPSG:4326"}`;
}

/** "west, south, east, north" in degrees; a typo becomes NaN, which the server names as a bbox problem. */
function parseExtent(text: string) {
  if (!text.trim()) return undefined;
  const [minX, minY, maxX, maxY] = text.split(",").map((s) => (s.trim() ? Number(s) : Number.NaN));
  return create(BoundingBoxSchema, { minX, minY, maxX, maxY, crs: "EPSG:4326" });
}

export interface CatalogData {
  datasets: Dataset[];
  models: Model[];
}

export function Catalog({ onLoaded, onDeploy }: { onLoaded: (data: CatalogData) => void; onDeploy: (model: Model) => void }) {
  const [data, setData] = useState<CatalogData | null>(null);
  const [search, setSearch] = useState("");
  const [filter, setFilter] = useState("");
  const [applied, setApplied] = useState("");
  const [error, setError] = useState<ServiceError | null>(null);
  const [reloads, setReloads] = useState(0);

  useEffect(() => {
    let live = true;
    Promise.all([allDatasets(applied), allModels("")])
      .then(([datasets, models]) => {
        if (!live) return;
        setData({ datasets, models });
        setError(null);
        onLoaded({ datasets, models });
      })
      .catch((e) => live && setError(describeError(e)));
    return () => {
      live = false;
    };
  }, [applied, reloads]);

  useEffect(() => {
    if (data && !performance.getEntriesByName("catalog-rendered").length) performance.mark("catalog-rendered");
  }, [data]);

  const datasets = (data?.datasets ?? []).filter((d) => matches(search, d.name, d.description, d.sensor, d.bands, d.tags));
  const models = (data?.models ?? []).filter((m) => matches(search, m.name, m.version, m.card?.description ?? "", m.tags, ModelTask[m.task] ?? ""));

  return (
    <section>
      <div class="toolbar">
        <input type="search" placeholder="Search datasets and models" value={search} onInput={(e) => setSearch(e.currentTarget.value)} data-testid="catalog-search" />
        <input placeholder='Dataset filter, e.g. sensor = "landsat-7"' value={filter} onInput={(e) => setFilter(e.currentTarget.value)} data-testid="catalog-filter" />
        <button onClick={() => setApplied(filter)}>Apply filter</button>
        <button onClick={() => setReloads(reloads + 1)}>Refresh</button>
      </div>
      <ErrorBox error={error} />
      {!data && !error && <p class="muted">Loading the catalog…</p>}
      {data && (
        <div data-testid="catalog-ready">
          <h2>Datasets ({datasets.length})</h2>
          <FootprintMap datasets={datasets} />
          <table class="grid" data-testid="datasets">
            <thead>
              <tr><th>Name</th><th>Sensor</th><th>Bands</th><th>Resolution</th><th>Extent</th><th>Tags</th><th>Id</th></tr>
            </thead>
            <tbody>
              {datasets.map((d) => (
                <tr key={d.id} data-dataset={d.name}>
                  <td><strong>{d.name}</strong><div class="muted">{d.description}</div></td>
                  <td>{d.sensor || "—"}</td>
                  <td>{d.bands.join(", ")}</td>
                  <td>{d.resolutionM ? `${d.resolutionM} m` : "—"}</td>
                  <td>{extent(d)}</td>
                  <td>{d.tags.join(", ")}</td>
                  <td><code>{d.id}</code></td>
                </tr>
              ))}
              {datasets.length === 0 && <tr><td colSpan={7} class="muted">No datasets{search || applied ? " match" : " yet: add one below"}.</td></tr>}
            </tbody>
          </table>
          <h2>Models ({models.length})</h2>
          <table class="grid" data-testid="models">
            <thead>
              <tr><th>Name</th><th>Version</th><th>Task</th><th>Status</th><th>Input</th><th>Model card</th><th></th></tr>
            </thead>
            <tbody>
              {models.map((m) => (
                <tr key={m.id} data-model={m.name}>
                  <td><strong>{m.name}</strong><div class="muted"><code>{m.id}</code></div></td>
                  <td>{m.version}</td>
                  <td>{enumLabel(ModelTask, m.task)}</td>
                  <td>{enumLabel(ModelState, m.state)}{m.stateMessage && <div class="muted">{m.stateMessage}</div>}</td>
                  <td>{m.input?.bands.join(", ")}{m.input?.tileSizePx ? ` · ${m.input.tileSizePx} px` : ""}</td>
                  <td title={m.card?.description}>
                    {shorten(m.card?.description ?? "", 160)}
                    {m.card && Object.keys(m.card.metrics).length > 0 && (
                      <div class="muted">{Object.entries(m.card.metrics).map(([k, v]) => `${k} ${v}`).join(" · ")}</div>
                    )}
                    {m.card?.license && <div class="muted">licence {m.card.license}</div>}
                  </td>
                  <td><button onClick={() => onDeploy(m)}>Deploy…</button></td>
                </tr>
              ))}
              {models.length === 0 && <tr><td colSpan={7} class="muted">No models{search ? " match" : ""}.</td></tr>}
            </tbody>
          </table>
        </div>
      )}
      <NewDataset onCreated={() => setReloads(reloads + 1)} />
      <StacImport onImported={() => setReloads(reloads + 1)} />
    </section>
  );
}

function NewDataset({ onCreated }: { onCreated: () => void }) {
  const [form, setForm] = useState({ name: "", uri: "", sensor: "", bands: "", resolution: "", extent: "", tags: "", description: "" });
  const [error, setError] = useState<ServiceError | null>(null);
  const [created, setCreated] = useState<Dataset | null>(null);
  const [busy, setBusy] = useState(false);
  const list = (text: string) => text.split(",").map((s) => s.trim()).filter(Boolean);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    try {
      const dataset = create(DatasetSchema, {
        name: form.name.trim(), uri: form.uri.trim(), sensor: form.sensor.trim(), description: form.description,
        bands: list(form.bands), tags: list(form.tags), resolutionM: Number(form.resolution) || 0, bbox: parseExtent(form.extent),
      });
      setCreated(await core.createDataset({ dataset }));
      setError(null);
      onCreated();
    } catch (e) {
      setError(describeError(e));
      setCreated(null);
    } finally {
      setBusy(false);
    }
  }

  const field = (key: keyof typeof form, label: string, proto: string, placeholder = "") => {
    const violation = violationFor(error, `dataset.${proto}`);
    return (
      <label class={violation ? "invalid" : ""}>
        {label}
        <input name={key} value={form[key]} placeholder={placeholder} onInput={(e) => setForm({ ...form, [key]: e.currentTarget.value })} />
        {violation && <span class="field-error">{violation.description}</span>}
      </label>
    );
  };

  return (
    <form class="card" onSubmit={submit} data-testid="new-dataset">
      <h2>Add a dataset</h2>
      <div class="form-grid">
        {field("name", "Name", "name", "olinda-landsat7")}
        {field("uri", "URI", "uri", "file:///abs/scene.tif or s3://bucket/key.tif")}
        {field("sensor", "Sensor", "sensor", "landsat-7")}
        {field("bands", "Bands (comma separated)", "bands", "blue, green, red, nir")}
        {field("resolution", "Resolution (m)", "resolution_m", "28.5")}
        {field("extent", "Extent: west, south, east, north (EPSG:4326)", "bbox", "-35.0, -8.1, -34.8, -7.9")}
        {field("tags", "Tags", "tags", "water, coast")}
        {field("description", "Description", "description")}
      </div>
      <button type="submit" disabled={busy}>Create dataset</button>
      <ErrorBox error={error} testId="new-dataset-error" />
      {created && <p class="ok" data-testid="dataset-created">Created {created.name} (<code>{created.id}</code>).</p>}
    </form>
  );
}

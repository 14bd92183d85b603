import { useState } from "preact/hooks";
import { type Dataset, StacImportMode } from "../../../gen/ts/constellation/core/v1/core_pb";
import { core } from "../api";
import { describeError, type ServiceError, violationFor } from "../errors";
import { ErrorBox } from "./common";

type Source = "item" | "catalog" | "search";

const list = (text: string) => text.split(",").map((s) => s.trim()).filter(Boolean);

/** The ImportStacDatasets request for the form: one source, and how items become datasets. */
export function importRequest(form: Record<string, string>) {
  const common = {
    name: form.name.trim(),
    mode: form.mode === "one" ? StacImportMode.ONE_DATASET : form.mode === "per-item" ? StacImportMode.DATASET_PER_ITEM : StacImportMode.UNSPECIFIED,
    bands: list(form.bands),
    tags: list(form.tags),
  };
  if (form.source === "item") return { ...common, source: { case: "itemUri" as const, value: form.location.trim() } };
  if (form.source === "catalog") return { ...common, source: { case: "catalogUri" as const, value: form.location.trim() } };
  const cloud = form.maxCloud.trim();
  return {
    ...common,
    source: {
      case: "search" as const,
      value: {
        apiUrl: form.location.trim(),
        collections: list(form.collections),
        bbox: form.bbox.trim() ? form.bbox.split(",").map((v) => Number(v)) : [],
        datetime: form.datetime.trim(),
        maxCloudCover: cloud ? Number(cloud) : undefined,
        filter: form.filter.trim(),
        maxItems: Number(form.maxItems) || 0,
      },
    },
  };
}

/** Register datasets from STAC: bands, resolution, footprint, dates and cloud cover come from the items. */
export function StacImport({ onImported }: { onImported: () => void }) {
  const [form, setForm] = useState<Record<string, string>>({
    source: "item", location: "", collections: "", bbox: "", datetime: "", maxCloud: "", filter: "", maxItems: "",
    mode: "", name: "", bands: "", tags: "",
  });
  const [error, setError] = useState<ServiceError | null>(null);
  const [imported, setImported] = useState<Dataset[]>([]);
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    try {
      setImported((await core.importStacDatasets(importRequest(form))).datasets);
      setError(null);
      onImported();
    } catch (e) {
      setError(describeError(e));
      setImported([]);
    } finally {
      setBusy(false);
    }
  }

  const field = (key: string, label: string, proto: string, placeholder = "") => {
    const violation = violationFor(error, proto);
    return (
      <label class={violation ? "invalid" : ""}>
        {label}
        <input name={key} value={form[key]} placeholder={placeholder} onInput={(e) => setForm({ ...form, [key]: e.currentTarget.value })} />
        {violation && <span class="field-error">{violation.description}</span>}
      </label>
    );
  };
  const search = form.source === "search";
  const locationField = { item: "item_uri", catalog: "catalog_uri", search: "search.api_url" }[form.source as Source];

  return (
    <form class="card" onSubmit={submit} data-testid="stac-import">
      <h2>Import from STAC</h2>
      <div class="form-grid">
        <label>
          Source
          <select name="source" value={form.source} onChange={(e) => setForm({ ...form, source: e.currentTarget.value })}>
            <option value="item">A STAC Item (file:// URI)</option>
            <option value="catalog">A static catalog or collection (file:// URI)</option>
            <option value="search">A STAC API search</option>
          </select>
        </label>
        {field("location", search ? "STAC API URL" : "URI", locationField, search ? "https://earth-search.aws.element84.com/v1" : "file:///data/stac/item.json")}
        {search && field("collections", "Collections", "search.collections", "sentinel-2-l2a")}
        {search && field("bbox", "Bbox: west, south, east, north", "search.bbox", "-35.0, -8.1, -34.8, -7.9")}
        {search && field("datetime", "Dates", "search.datetime", "2024-06-01/2024-06-30")}
        {search && field("maxCloud", "Max cloud cover (%)", "search.max_cloud_cover", "20")}
        {search && field("filter", "CQL2 filter", "search.filter", "eo:cloud_cover < 10")}
        {search && field("maxItems", "Max items", "search.max_items", "100")}
        <label>
          Datasets
          <select name="mode" value={form.mode} onChange={(e) => setForm({ ...form, mode: e.currentTarget.value })}>
            <option value="">One per item (one for a single item)</option>
            <option value="per-item">One per item</option>
            <option value="one">One holding every item (time series / mosaic)</option>
          </select>
        </label>
        {field("name", "Name (or prefix)", "name", "olinda")}
        {field("bands", "Only these bands (optional)", "bands", "green, nir08")}
        {field("tags", "Tags", "tags", "water")}
      </div>
      <button type="submit" disabled={busy}>Import</button>
      <ErrorBox error={error} testId="stac-import-error" />
      {imported.length > 0 && (
        <p class="ok" data-testid="stac-imported">
          Imported {imported.map((d) => `${d.name} (${d.items.length} item${d.items.length === 1 ? "" : "s"})`).join(", ")}.
        </p>
      )}
    </form>
  );
}

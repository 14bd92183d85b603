// The console's maps: dataset footprints on the catalog screen, a run's results over its scene on the run page.
// OpenLayers loads on first use (dynamic import of ../map/olmap), so the first page stays small. Tiles and point
// values come from the tile server behind the gateway (/tiles/, gateway/tiles.py), which wants the key's cookie.
import { useEffect, useRef, useState } from "preact/hooks";
import type { RunOutput } from "../../../gen/ts/constellation/common/v1/common_pb";
import type { Dataset } from "../../../gen/ts/constellation/core/v1/core_pb";
import { core, outputUrl, type ConsoleConfig } from "../api";
import { outputsByRole } from "../runs";
import type { Footprint, LayerSpec, MapHandle } from "../map/olmap";

type Bbox = [number, number, number, number];

function degrees(b: { minX: number; minY: number; maxX: number; maxY: number; crs: string } | undefined): Bbox | null {
  if (!b || (b.crs && b.crs.toUpperCase() !== "EPSG:4326")) return null;
  if (b.minX === 0 && b.maxX === 0 && b.minY === 0 && b.maxY === 0) return null;
  return [b.minX, b.minY, b.maxX, b.maxY];
}

/** Every dataset's footprint, and each STAC item's where a dataset has them. */
export function footprints(datasets: Dataset[]): Footprint[] {
  return datasets.flatMap((d) => {
    const own = degrees(d.bbox);
    const items = d.items.flatMap((item) => {
      const box = degrees(item.bbox);
      return box ? [{ id: `${d.id}/${item.id}`, label: item.id, bbox: box, kind: "item" as const }] : [];
    });
    return own ? [{ id: d.id, label: d.name, bbox: own, kind: "dataset" as const }, ...items] : items;
  });
}

/** A tile server URL for `path` (e.g. "tiles/WebMercatorQuad/{z}/{x}/{y}.png") over the file `uri`. */
export function tileUrl(path: string, uri: string, options: Record<string, string | string[]> = {}): string {
  const query = new URLSearchParams({ url: uri });
  for (const [name, value] of Object.entries(options)) for (const v of [value].flat()) query.append(name, v);
  return `/tiles/${path}?${query}`;
}

function useMap(build: (olmap: typeof import("../map/olmap"), target: HTMLElement) => MapHandle | null, deps: unknown[]) {
  const target = useRef<HTMLDivElement>(null);
  const [map, setMap] = useState<MapHandle | null>(null);
  const [failed, setFailed] = useState("");
  useEffect(() => {
    let made: MapHandle | null = null;
    let live = true;
    import("../map/olmap").then(
      (olmap) => {
        if (!live || !target.current) return;
        made = build(olmap, target.current);
        setMap(made);
      },
      (e) => setFailed(String(e)),
    );
    return () => {
      live = false;
      made?.dispose();
    };
  }, deps);
  return { target, map, failed };
}

export function FootprintMap({ datasets }: { datasets: Dataset[] }) {
  const shown = footprints(datasets);
  const key = shown.map((f) => `${f.id}:${f.bbox.join(",")}`).join(";");
  const { target, map, failed } = useMap((olmap, el) => olmap.footprintMap(el, shown), [key]);
  return (
    <div class="map-card">
      <div class="map" ref={target} data-testid="footprint-map" data-footprints={map ? shown.length : undefined} />
      {failed && <p class="error">The map did not load: {failed}</p>}
      {!shown.length && <p class="muted">No dataset has an extent in EPSG:4326 to draw.</p>}
    </div>
  );
}

const TRUE_COLOUR = ["red", "green", "blue"];

interface RunLayer extends LayerSpec {
  label: string;
  uri?: string;
}

/** The run's result raster and polygons over the true-colour scene, with toggles, opacity and a value readout. */
export function RunMap({ pipelineId, outputs, config }: { pipelineId: string; outputs: RunOutput[]; config: ConsoleConfig }) {
  const [scene, setScene] = useState<Dataset | null | undefined>(undefined);
  const [resultDtype, setResultDtype] = useState<string | null>(null);
  const [extent, setExtent] = useState<Bbox | null>(null);
  const [visible, setVisible] = useState<Record<string, boolean>>({});
  const [opacity, setOpacity] = useState<Record<string, number>>({});
  const [readout, setReadout] = useState<{ lonLat: [number, number]; values: Record<string, string> } | null>(null);
  const { raster, vectors } = outputsByRole(outputs);

  useEffect(() => {
    core.getPipeline({ id: pipelineId })
      .then((p) => {
        const block = p.spec?.blocks.find((b) => b.config.case === "dataset");
        const id = block?.config.case === "dataset" ? block.config.value.datasetId : "";
        return id ? core.getDataset({ id }) : null;
      })
      .then(setScene, () => setScene(null));
  }, [pipelineId]);
  useEffect(() => {
    if (!raster) return;
    fetch(tileUrl("info", raster.uri)).then((r) => (r.ok ? r.json() : null)).then((info) => setResultDtype(info?.dtype ?? "unknown"), () => setResultDtype("unknown"));
    fetch(tileUrl("info.geojson", raster.uri)).then((r) => (r.ok ? r.json() : null)).then((f) => f?.bbox && setExtent(f.bbox), () => undefined);
  }, [raster?.uri]);

  const layers: RunLayer[] = [];
  const rgb = scene ? TRUE_COLOUR.map((band) => scene.bands.indexOf(band) + 1) : [];
  if (scene && scene.uri && !scene.items.length && rgb.every((i) => i > 0)) {
    layers.push({ id: "scene", label: `${scene.name} (true colour)`, kind: "tiles", opacity: 1, uri: scene.uri,
      url: tileUrl("tiles/WebMercatorQuad/{z}/{x}/{y}.png", scene.uri, { bidx: rgb.map(String), rescale: ["0,255", "0,255", "0,255"] }) });
  }
  if (raster && resultDtype) {
    // Masks (integer rasters): 1 is the class found, drawn blue; anything else is transparent. Index rasters
    // (floats): -1..1 on a red-blue ramp.
    const render: Record<string, string> = resultDtype.includes("int") ? { colormap: JSON.stringify({ 1: [0, 90, 255, 255], 255: [0, 90, 255, 255] }) } : { rescale: "-1,1", colormap_name: "rdbu" };
    layers.push({ id: "result", label: `${raster.name} (result)`, kind: "tiles", opacity: 0.8, uri: raster.uri, url: tileUrl("tiles/WebMercatorQuad/{z}/{x}/{y}.png", raster.uri, render) });
  }
  if (vectors && outputUrl(vectors.uri, config)) {
    layers.push({ id: "polygons", label: `${vectors.name} (polygons)`, kind: "vectors", opacity: 1, url: tileUrl("geojson", vectors.uri) });
  }
  const ready = scene !== undefined && (!raster || resultDtype !== null);
  const key = ready ? layers.map((l) => l.url).join(" ") : "";
  const { target, map, failed } = useMap((olmap, el) => (ready ? olmap.layerMap(el, layers) : null), [key]);

  useEffect(() => map?.zoomTo(extent ?? degrees(scene?.bbox)), [map, extent]);
  useEffect(() => {
    if (!map) return;
    map.onClick(async ([lon, lat]) => {
      const values: Record<string, string> = {};
      for (const layer of layers.filter((l) => l.kind === "tiles" && l.uri)) {
        const r = await fetch(tileUrl(`point/${lon},${lat}`, layer.uri!));
        values[layer.id] = r.ok ? ((await r.json()).values as number[]).join(", ") : "outside";
      }
      setReadout({ lonLat: [lon, lat], values });
    });
  }, [map]);
  if (!raster && !vectors) return null;

  return (
    <div class="map-card" data-testid="run-map">
      <div class="map-controls">
        {layers.map((l) => (
          <label key={l.id} data-layer={l.id}>
            <input type="checkbox" checked={visible[l.id] ?? true} onChange={(e) => { setVisible({ ...visible, [l.id]: e.currentTarget.checked }); map?.setVisible(l.id, e.currentTarget.checked); }} />
            {l.label}
            <input type="range" min="0" max="1" step="0.05" value={opacity[l.id] ?? l.opacity} aria-label={`opacity of ${l.label}`}
              onInput={(e) => { const v = Number(e.currentTarget.value); setOpacity({ ...opacity, [l.id]: v }); map?.setOpacity(l.id, v); }} />
          </label>
        ))}
        <button onClick={() => map?.zoomTo(extent ?? degrees(scene?.bbox))} data-testid="zoom-extent">Zoom to extent</button>
      </div>
      <div class="map" ref={target} data-testid="layer-map" data-layers={map ? layers.map((l) => l.id).join(" ") : undefined} />
      {failed && <p class="error">The map did not load: {failed}</p>}
      <p class="muted" data-testid="map-value" data-value={readout?.values.result} data-lon={readout?.lonLat[0]} data-lat={readout?.lonLat[1]}>
        {readout
          ? `${readout.lonLat[1].toFixed(5)}, ${readout.lonLat[0].toFixed(5)}: ` + Object.entries(readout.values).map(([id, v]) => `${id} ${v}`).join(" · ")
          : "Click the map to read the values under the cursor."}
      </p>
    </div>
  );
}

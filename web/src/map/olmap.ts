// The OpenLayers side of the console's maps (canvas renderer, no WebGL): loaded on demand by ui/MapView.tsx,
// so the first page carries none of it. Basemap: Natural Earth countries (world-atlas, bundled, no network).
import "ol/ol.css";
import Feature from "ol/Feature";
import OlMap from "ol/Map";
import View from "ol/View";
import { type Extent, createEmpty, extend, isEmpty } from "ol/extent";
import GeoJSON from "ol/format/GeoJSON";
import TopoJSON from "ol/format/TopoJSON";
import { fromExtent } from "ol/geom/Polygon";
import type BaseLayer from "ol/layer/Base";
import TileLayer from "ol/layer/Tile";
import VectorLayer from "ol/layer/Vector";
import { toLonLat, transformExtent } from "ol/proj";
import VectorSource from "ol/source/Vector";
import XYZ from "ol/source/XYZ";
import { Fill, Stroke, Style } from "ol/style";
import countries from "world-atlas/countries-110m.json";

export interface Footprint {
  id: string;
  label: string;
  /** west, south, east, north in degrees */
  bbox: [number, number, number, number];
  kind: "dataset" | "item";
}

export interface LayerSpec {
  id: string;
  kind: "tiles" | "vectors";
  url: string;
  opacity: number;
}

export interface MapHandle {
  setVisible(id: string, visible: boolean): void;
  setOpacity(id: string, opacity: number): void;
  zoomTo(extent4326: Extent | null): void;
  onClick(handler: (lonLat: [number, number]) => void): void;
  dispose(): void;
}

const basemapStyle = new Style({ fill: new Fill({ color: "#e8e4d8" }), stroke: new Stroke({ color: "#9a9486", width: 0.6 }) });
const footprintStyles = {
  dataset: new Style({ fill: new Fill({ color: "rgba(220, 60, 30, 0.18)" }), stroke: new Stroke({ color: "#d23c1e", width: 2 }) }),
  item: new Style({ stroke: new Stroke({ color: "#7a3cd2", width: 1, lineDash: [4, 3] }) }),
};
const polygonStyle = new Style({ fill: new Fill({ color: "rgba(255, 200, 0, 0.15)" }), stroke: new Stroke({ color: "#ffb000", width: 1.5 }) });

function basemap(): VectorLayer {
  const features = new TopoJSON({ layers: ["countries"] }).readFeatures(countries, { featureProjection: "EPSG:3857" });
  return new VectorLayer({ source: new VectorSource({ features }), style: basemapStyle, properties: { id: "basemap" } });
}

function newMap(target: HTMLElement, layers: BaseLayer[]): OlMap {
  const map = new OlMap({ target, layers: [basemap(), ...layers], view: new View({ center: [0, 0], zoom: 1, maxZoom: 20 }) });
  // Devtools and the browser tests read the map from its element (pixel of a place, layers shown).
  (target as HTMLElement & { olMap?: OlMap }).olMap = map;
  return map;
}

function handle(map: OlMap, layers: Map<string, BaseLayer>): MapHandle {
  return {
    setVisible: (id, visible) => layers.get(id)?.setVisible(visible),
    setOpacity: (id, opacity) => layers.get(id)?.setOpacity(opacity),
    zoomTo: (extent) => {
      if (!extent || isEmpty(extent)) return;
      map.getView().fit(transformExtent(extent, "EPSG:4326", "EPSG:3857"), { padding: [24, 24, 24, 24], maxZoom: 16 });
    },
    onClick: (handler) => map.on("singleclick", (e) => handler(toLonLat(e.coordinate) as [number, number])),
    dispose: () => map.setTarget(undefined),
  };
}

/** Footprints of datasets (and their STAC items) over the basemap, zoomed to them all. */
export function footprintMap(target: HTMLElement, footprints: Footprint[]): MapHandle {
  const features = footprints.map((f) => {
    const feature = new Feature({ geometry: fromExtent(transformExtent(f.bbox, "EPSG:4326", "EPSG:3857")), label: f.label });
    feature.setId(`${f.kind}:${f.id}`);
    feature.setStyle(footprintStyles[f.kind]);
    return feature;
  });
  const layer = new VectorLayer({ source: new VectorSource({ features }) });
  const map = newMap(target, [layer]);
  const all = footprints.reduce((extent, f) => extend(extent, f.bbox), createEmpty());
  const h = handle(map, new Map([["footprints", layer]]));
  h.zoomTo(footprints.length ? all : null);
  return h;
}

/** A run's layers, bottom to top, each shown and dimmed on its own. */
export function layerMap(target: HTMLElement, specs: LayerSpec[]): MapHandle {
  const layers = new Map<string, BaseLayer>();
  for (const spec of specs) {
    const layer =
      spec.kind === "tiles"
        ? new TileLayer({ source: new XYZ({ url: spec.url, maxZoom: 20, transition: 0 }), opacity: spec.opacity })
        : new VectorLayer({ source: new VectorSource({ url: spec.url, format: new GeoJSON() }), style: polygonStyle, opacity: spec.opacity });
    layers.set(spec.id, layer);
  }
  return handle(newMap(target, [...layers.values()]), layers);
}

// A summary block's time series (its JSON output: one row per scene, in acquisition order) as a
// small SVG line chart of the area above the threshold per date. Plain SVG: no chart library.
import { useEffect, useState } from "preact/hooks";

export interface SeriesRow {
  item_id: string;
  acquired: string;
  area_km2: number;
  valid_km2: number;
}

export interface SeriesDocument {
  name: string;
  threshold: number | null;
  unit: string;
  series: SeriesRow[];
}

const W = 480;
const H = 200;
const PAD = { left: 56, right: 12, top: 12, bottom: 36 };

/** The chart's points in SVG coordinates: x by acquisition time (evenly by index when dates are missing), y by area. */
export function chartPoints(rows: SeriesRow[]): { x: number; y: number; row: SeriesRow }[] {
  const times = rows.map((r, i) => (r.acquired ? Date.parse(r.acquired) : Number.NaN) || i);
  const [t0, t1] = [Math.min(...times), Math.max(...times)];
  const top = Math.max(...rows.map((r) => r.area_km2), 0) || 1;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  return rows.map((row, i) => ({
    x: PAD.left + (t1 > t0 ? ((times[i] - t0) / (t1 - t0)) * plotW : plotW / 2),
    y: PAD.top + plotH - (row.area_km2 / top) * plotH,
    row,
  }));
}

export function SeriesChart({ url }: { url: string }) {
  const [doc, setDoc] = useState<SeriesDocument | null>(null);
  useEffect(() => {
    fetch(url)
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.statusText))))
      .then((d: SeriesDocument) => setDoc(Array.isArray(d.series) && d.series.length ? d : null), () => setDoc(null));
  }, [url]);
  if (!doc) return null;
  const points = chartPoints(doc.series);
  const top = Math.max(...doc.series.map((r) => r.area_km2), 0);
  return (
    <figure class="series" data-testid="series-chart">
      <figcaption>
        {doc.name}: area above {doc.threshold ?? "?"} per scene ({doc.unit})
      </figcaption>
      <svg width={W} height={H} viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${doc.name} time series`}>
        <line x1={PAD.left} y1={H - PAD.bottom} x2={W - PAD.right} y2={H - PAD.bottom} stroke="#8a96a3" />
        <line x1={PAD.left} y1={PAD.top} x2={PAD.left} y2={H - PAD.bottom} stroke="#8a96a3" />
        <text x={PAD.left - 6} y={PAD.top + 4} text-anchor="end" font-size="11">{top.toFixed(2)}</text>
        <text x={PAD.left - 6} y={H - PAD.bottom} text-anchor="end" font-size="11">0</text>
        <polyline fill="none" stroke="#1860c8" stroke-width="2" points={points.map((p) => `${p.x},${p.y}`).join(" ")} />
        {points.map((p) => (
          <g key={p.row.item_id}>
            <circle cx={p.x} cy={p.y} r="4" fill="#1860c8" data-testid="series-point" data-area={p.row.area_km2}>
              <title>{`${p.row.item_id} ${p.row.acquired.slice(0, 10)}: ${p.row.area_km2} ${doc.unit}`}</title>
            </circle>
            <text x={p.x} y={H - PAD.bottom + 16} text-anchor="middle" font-size="11">{p.row.acquired.slice(0, 10)}</text>
          </g>
        ))}
      </svg>
    </figure>
  );
}

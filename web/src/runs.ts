// A run's event stream folded into what the run page shows: per-step state, progress and time.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type RunEvent, RunEventType, RunState } from "../../gen/ts/constellation/common/v1/common_pb";

export const TERMINAL = new Set([RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELED]);

export interface Step {
  state: string;
  done: number;
  total: number;
  unit: string;
  message: string;
  startedMs?: number;
  seconds?: number;
}

const STEP_STATES: Partial<Record<RunEventType, string>> = {
  [RunEventType.STEP_STARTED]: "running",
  [RunEventType.STEP_SUCCEEDED]: "succeeded",
  [RunEventType.STEP_FAILED]: "failed",
  [RunEventType.STEP_RETRY]: "retrying",
};

const waiting = (): Step => ({ state: "waiting", done: 0, total: 0, unit: "", message: "" });

/** Per-block step state and progress folded from a run's events; `blockIds` (the pipeline's, in order) start out waiting. */
export function foldSteps(events: RunEvent[], blockIds: readonly string[] = []): Map<string, Step> {
  const steps = new Map<string, Step>(blockIds.map((id) => [id, waiting()]));
  for (const event of events) {
    if (!event.blockId) continue;
    const step = steps.get(event.blockId) ?? waiting();
    const state = STEP_STATES[event.type];
    if (state) step.state = state;
    else if (event.type === RunEventType.DEPLOYMENT && step.state === "waiting") step.state = "deploying";
    const at = event.time ? timestampDate(event.time).getTime() : undefined;
    if (event.type === RunEventType.STEP_STARTED && step.startedMs === undefined) step.startedMs = at;
    if ((event.type === RunEventType.STEP_SUCCEEDED || event.type === RunEventType.STEP_FAILED) && at !== undefined && step.startedMs !== undefined) step.seconds = (at - step.startedMs) / 1000;
    if (event.progress && (event.progress.total > 0n || event.progress.done > 0n)) {
      step.done = Number(event.progress.done);
      step.total = Number(event.progress.total);
      step.unit = event.progress.unit;
    }
    if (event.type === RunEventType.STEP_SUCCEEDED && step.total > 0) step.done = step.total;
    if (event.message) step.message = event.message;
    steps.set(event.blockId, step);
  }
  return steps;
}

/** How many runs start before this one while it waits in core's queue (its latest RUN_QUEUED event), or null
 * once it has left the queue (or never waited). */
export function queuePosition(events: readonly RunEvent[]): number | null {
  const last = events[events.length - 1];
  if (!last || last.state !== RunState.QUEUED) return null;
  for (let i = events.length - 1; i >= 0; i--) {
    if (events[i].type === RunEventType.RUN_QUEUED) return events[i].queuePosition;
  }
  return null;
}

/** A run's outputs by what the run page shows of them. Every export also lists its STAC Items and Collection
 * (media type "...; profile=stac"), which are GeoJSON/JSON too: they are never the polygons or the series. */
export function outputsByRole<T extends { uri: string; mediaType: string }>(outputs: T[]) {
  const files = outputs.filter((o) => !o.mediaType.includes("profile=stac"));
  return {
    raster: files.find((o) => o.uri.endsWith(".tif") || o.mediaType.startsWith("image/tiff")),
    preview: files.find((o) => o.mediaType.startsWith("image/png") || o.uri.endsWith(".png")),
    vectors: files.find((o) => o.mediaType.includes("geo+json") || o.uri.endsWith(".geojson")),
    series: files.find((o) => o.mediaType.startsWith("application/json")),
  };
}

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useRef, useState } from "preact/hooks";
import { ConnectError, Code } from "@connectrpc/connect";
import { type RunEvent, RunEventType, type RunOutput, RunState } from "../../../gen/ts/constellation/common/v1/common_pb";
import type { Run } from "../../../gen/ts/constellation/core/v1/core_pb";
import { type ConsoleConfig, core, outputUrl } from "../api";
import { describeError, type ServiceError } from "../errors";
import { foldSteps, outputsByRole, queuePosition, type Step, TERMINAL } from "../runs";
import { ErrorBox, enumLabel, Progress } from "./common";
import { RunMap } from "./MapView";
import { SeriesChart } from "./SeriesChart";

function when(run: Run, key: "createTime" | "startTime" | "endTime"): Date | undefined {
  const t = run[key];
  return t && (t.seconds > 0n || t.nanos > 0) ? timestampDate(t) : undefined;
}

export function Runs({ runId, config, onPick }: { runId: string | null; config: ConsoleConfig; onPick: (id: string) => void }) {
  const [runs, setRuns] = useState<Run[]>([]);
  const [error, setError] = useState<ServiceError | null>(null);
  const [settled, setSettled] = useState(0);
  useEffect(() => {
    core.listRuns({ pageSize: 50 }).then((r) => { setRuns(r.runs); setError(null); }, (e) => setError(describeError(e)));
  }, [runId, settled]);
  return (
    <section class="runs">
      <aside class="run-list">
        <h3>Runs</h3>
        <ErrorBox error={error} />
        <ul>
          {runs.map((r) => (
            <li key={r.id} class={r.id === runId ? "selected" : ""}>
              <a href="#" onClick={(e) => { e.preventDefault(); onPick(r.id); }}>{r.id}</a>
              <span class={`state state-${RunState[r.state]?.toLowerCase()}`}>{enumLabel(RunState, r.state)}</span>
            </li>
          ))}
          {runs.length === 0 && !error && <li class="muted">No runs yet: start one from the pipeline editor.</li>}
        </ul>
      </aside>
      {runId ? <RunView key={runId} runId={runId} config={config} onSettled={() => setSettled(settled + 1)} /> : <p class="muted">Pick a run.</p>}
    </section>
  );
}

function RunView({ runId, config, onSettled }: { runId: string; config: ConsoleConfig; onSettled: () => void }) {
  const [run, setRun] = useState<Run | null>(null);
  const [events, setEvents] = useState<RunEvent[]>([]);
  const [error, setError] = useState<ServiceError | null>(null);
  const [streamNote, setStreamNote] = useState("");
  const [blockIds, setBlockIds] = useState<string[]>([]);
  const lastSequence = useRef(0n);

  useEffect(() => {
    const abort = new AbortController();
    let finished = false;
    core.getRun({ id: runId }, { signal: abort.signal })
      .then((found) => {
        setRun(found);
        return core.getPipeline({ id: found.pipelineId }, { signal: abort.signal });
      })
      .then((pipeline) => setBlockIds(pipeline.spec?.blocks.map((b) => b.id) ?? []))
      .catch((e) => !abort.signal.aborted && setError(describeError(e)));
    // Follow the stream; when it drops before the run ends, resume after the last event seen.
    (async () => {
      for (let attempt = 0; attempt < 20 && !abort.signal.aborted && !finished; attempt++) {
        try {
          for await (const event of core.watchRun({ runId, afterSequence: lastSequence.current }, { signal: abort.signal })) {
            if (event.sequence <= lastSequence.current) continue;
            lastSequence.current = event.sequence;
            // The first event shown since a run was started here (the editor clears the mark): a measured figure.
            if (!performance.getEntriesByName("first-run-event").length) performance.mark("first-run-event");
            setEvents((seen) => [...seen, event]);
            setStreamNote("");
            if (TERMINAL.has(event.state)) finished = true;
          }
          finished = true;
        } catch (e) {
          if (abort.signal.aborted) return;
          const described = describeError(e);
          if (e instanceof ConnectError && e.code !== Code.Unavailable && e.code !== Code.Internal && e.code !== Code.Unknown) {
            setError(described);
            return;
          }
          setStreamNote(`stream interrupted (${described.message}); resuming…`);
          await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
        }
      }
      if (!abort.signal.aborted) {
        core.getRun({ id: runId }).then(setRun, (e) => setError(describeError(e)));
        onSettled();
      }
    })();
    return () => abort.abort();
  }, [runId]);

  const state = events.length ? events[events.length - 1].state : run?.state ?? RunState.UNSPECIFIED;
  const steps = foldSteps(events, blockIds);
  const done = TERMINAL.has(state);
  const ahead = queuePosition(events);
  const outputs: RunOutput[] = run?.outputs.length ? run.outputs : events.flatMap((e) => e.outputs);

  async function cancel() {
    try {
      setRun(await core.cancelRun({ id: runId }));
    } catch (e) {
      setError(describeError(e));
    }
  }

  return (
    <div class="run" data-testid="run-view">
      <div class="run-head">
        <h2><code>{runId}</code></h2>
        <span class={`state state-${RunState[state]?.toLowerCase()}`} data-testid="run-state">{enumLabel(RunState, state)}</span>
        {ahead !== null && (
          <span class="muted" data-testid="queue-position">
            {ahead === 0 ? "starts next" : `${ahead} run${ahead === 1 ? "" : "s"} start before it`}
          </span>
        )}
        {!done && <button class="danger" onClick={cancel} data-testid="cancel-run">Cancel run</button>}
      </div>
      <ErrorBox error={error} />
      {streamNote && <p class="hint warn">{streamNote}</p>}
      <table class="grid steps" data-testid="steps">
        <thead><tr><th>Step</th><th>State</th><th>Progress</th><th>Time</th><th>Last message</th></tr></thead>
        <tbody>
          {[...steps.entries()].map(([blockId, step]) => {
            // Once the run is over, a step that never finished stopped with it.
            const shown = done && !["succeeded", "failed"].includes(step.state) ? "stopped" : step.state;
            return (
            <tr key={blockId} data-step={blockId}>
              <td><code>{blockId}</code></td>
              <td><span class={`state state-${shown}`}>{shown}</span></td>
              <td><Progress done={step.done} total={step.total} unit={step.unit} complete={shown === "succeeded"} stopped={shown !== step.state || shown === "waiting"} /></td>
              <td>{step.seconds !== undefined ? `${step.seconds.toFixed(1)} s` : ""}</td>
              <td class="muted">{step.message}</td>
            </tr>
            );
          })}
        </tbody>
      </table>
      {done && run && <RunSummary run={run} events={events} steps={steps} outputs={outputs} config={config} />}
      <h3>Events ({events.length})</h3>
      <ol class="events" data-testid="events">
        {events.map((e) => (
          <li key={String(e.sequence)} data-testid="event">
            <span class="muted">#{String(e.sequence)}</span> <span class="event-type">{enumLabel(RunEventType, e.type)}</span>{" "}
            {e.blockId && <code>{e.blockId}</code>} <span class="muted">[{e.source}]</span> {e.message}
            {e.progress && e.progress.total > 0n && <span class="muted"> ({String(e.progress.done)}/{String(e.progress.total)} {e.progress.unit})</span>}
          </li>
        ))}
      </ol>
    </div>
  );
}

interface SummaryProps {
  run: Run;
  events: RunEvent[];
  steps: Map<string, Step>;
  outputs: RunOutput[];
  config: ConsoleConfig;
}

function RunSummary({ run, events, steps, outputs, config }: SummaryProps) {
  const started = when(run, "startTime") ?? when(run, "createTime");
  const ended = when(run, "endTime");
  const seconds = started && ended ? ((ended.getTime() - started.getTime()) / 1000).toFixed(1) : undefined;
  const { preview, vectors, series } = outputsByRole(outputs);
  const previewUrl = preview && outputUrl(preview.uri, config);
  const vectorsUrl = vectors && outputUrl(vectors.uri, config);
  const seriesUrl = series && outputUrl(series.uri, config);
  const tiles = [...steps.values()].filter((s) => s.unit === "tiles").reduce((sum, s) => Math.max(sum, s.done), 0);
  const [polygons, setPolygons] = useState<number | null>(null);
  useEffect(() => {
    if (!vectorsUrl) return;
    fetch(vectorsUrl)
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.statusText))))
      .then((collection: { features?: unknown[] }) => setPolygons(collection.features?.length ?? 0), () => setPolygons(null));
  }, [vectorsUrl]);
  return (
    <div class="card" data-testid="run-summary">
      <h3>Summary</h3>
      <p>
        {enumLabel(RunState, run.state)}
        {seconds && <> in {seconds} s</>} · pipeline <code>{run.pipelineId}</code> · {events.length} events · {outputs.length} outputs
        {tiles > 0 && <> · {tiles} tiles</>}
        {polygons !== null && <> · <span data-testid="polygon-count">{polygons} polygons</span></>}
      </p>
      {run.stateMessage && <p class={run.state === RunState.FAILED ? "error" : "muted"} data-testid="run-message">{run.stateMessage}</p>}
      {seriesUrl && <SeriesChart url={seriesUrl} />}
      {previewUrl && <img class="preview" src={previewUrl} alt={`preview of ${run.id}`} data-testid="preview" />}
      {outputs.length > 0 && <RunMap pipelineId={run.pipelineId} outputs={outputs} config={config} />}
      <ul class="outputs" data-testid="outputs">
        {outputs.map((o) => {
          const url = outputUrl(o.uri, config);
          return (
            <li key={o.uri}>
              {url ? <a href={url} download>{o.name}</a> : <span>{o.name}</span>} <span class="muted">{o.mediaType} · {o.blockId}</span>
              {!url && <div class="muted"><code>{o.uri}</code></div>}
            </li>
          );
        })}
      </ul>
    </div>
  );
}

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useRef, useState } from "preact/hooks";
import { ConnectError, Code } from "@connectrpc/connect";
import { type RunEvent, RunEventType, type RunOutput, RunState } from "../../../gen/ts/constellation/common/v1/common_pb";
import type { Run } from "../../../gen/ts/constellation/core/v1/core_pb";
import { type ConsoleConfig, core, outputUrl } from "../api";
import { describeError, type ServiceError } from "../errors";
import { ErrorBox, enumLabel, Progress } from "./common";

const TERMINAL = new Set([RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELED]);

interface Step {
  state: string;
  done: number;
  total: number;
  unit: string;
  message: string;
}

const STEP_STATES: Partial<Record<RunEventType, string>> = {
  [RunEventType.STEP_STARTED]: "running",
  [RunEventType.STEP_SUCCEEDED]: "succeeded",
  [RunEventType.STEP_FAILED]: "failed",
  [RunEventType.STEP_RETRY]: "retrying",
};

/** Per-block step state and progress folded from a run's events. */
export function foldSteps(events: RunEvent[]): Map<string, Step> {
  const steps = new Map<string, Step>();
  for (const event of events) {
    if (!event.blockId) continue;
    const step = steps.get(event.blockId) ?? { state: "waiting", done: 0, total: 0, unit: "", message: "" };
    const state = STEP_STATES[event.type];
    if (state) step.state = state;
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

function when(run: Run, key: "createTime" | "startTime" | "endTime"): Date | undefined {
  const t = run[key];
  return t && (t.seconds > 0n || t.nanos > 0) ? timestampDate(t) : undefined;
}

export function Runs({ runId, config, onPick }: { runId: string | null; config: ConsoleConfig; onPick: (id: string) => void }) {
  const [runs, setRuns] = useState<Run[]>([]);
  const [error, setError] = useState<ServiceError | null>(null);
  useEffect(() => {
    core.listRuns({ pageSize: 50 }).then((r) => { setRuns(r.runs); setError(null); }, (e) => setError(describeError(e)));
  }, [runId]);
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
      {runId ? <RunView key={runId} runId={runId} config={config} /> : <p class="muted">Pick a run.</p>}
    </section>
  );
}

function RunView({ runId, config }: { runId: string; config: ConsoleConfig }) {
  const [run, setRun] = useState<Run | null>(null);
  const [events, setEvents] = useState<RunEvent[]>([]);
  const [error, setError] = useState<ServiceError | null>(null);
  const [streamNote, setStreamNote] = useState("");
  const lastSequence = useRef(0n);

  useEffect(() => {
    const abort = new AbortController();
    let finished = false;
    core.getRun({ id: runId }, { signal: abort.signal }).then(setRun, (e) => !abort.signal.aborted && setError(describeError(e)));
    // Follow the stream; when it drops before the run ends, resume after the last event seen.
    (async () => {
      for (let attempt = 0; attempt < 20 && !abort.signal.aborted && !finished; attempt++) {
        try {
          for await (const event of core.watchRun({ runId, afterSequence: lastSequence.current }, { signal: abort.signal })) {
            if (event.sequence <= lastSequence.current) continue;
            lastSequence.current = event.sequence;
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
      if (!abort.signal.aborted) core.getRun({ id: runId }).then(setRun, (e) => setError(describeError(e)));
    })();
    return () => abort.abort();
  }, [runId]);

  const state = events.length ? events[events.length - 1].state : run?.state ?? RunState.UNSPECIFIED;
  const steps = foldSteps(events);
  const done = TERMINAL.has(state);
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
        {!done && <button class="danger" onClick={cancel} data-testid="cancel-run">Cancel run</button>}
      </div>
      <ErrorBox error={error} />
      {streamNote && <p class="hint warn">{streamNote}</p>}
      <table class="grid steps" data-testid="steps">
        <thead><tr><th>Step</th><th>State</th><th>Progress</th><th>Last message</th></tr></thead>
        <tbody>
          {[...steps.entries()].map(([blockId, step]) => (
            <tr key={blockId} data-step={blockId}>
              <td><code>{blockId}</code></td>
              <td><span class={`state state-${step.state}`}>{step.state}</span></td>
              <td><Progress done={step.done} total={step.total} unit={step.unit} complete={step.state === "succeeded"} /></td>
              <td class="muted">{step.message}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {done && run && <RunSummary run={run} events={events} outputs={outputs} config={config} />}
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

function RunSummary({ run, events, outputs, config }: { run: Run; events: RunEvent[]; outputs: RunOutput[]; config: ConsoleConfig }) {
  const started = when(run, "startTime") ?? when(run, "createTime");
  const ended = when(run, "endTime");
  const seconds = started && ended ? ((ended.getTime() - started.getTime()) / 1000).toFixed(1) : undefined;
  const preview = outputs.find((o) => o.mediaType.startsWith("image/png") || o.uri.endsWith(".png"));
  const previewUrl = preview && outputUrl(preview.uri, config);
  return (
    <div class="card" data-testid="run-summary">
      <h3>Summary</h3>
      <p>
        {enumLabel(RunState, run.state)}
        {seconds && <> in {seconds} s</>} · pipeline <code>{run.pipelineId}</code> · {events.length} events · {outputs.length} outputs
      </p>
      {run.stateMessage && <p class={run.state === RunState.FAILED ? "error" : "muted"} data-testid="run-message">{run.stateMessage}</p>}
      {previewUrl && <img class="preview" src={previewUrl} alt={`preview of ${run.id}`} data-testid="preview" />}
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

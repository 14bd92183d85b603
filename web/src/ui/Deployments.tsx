import { useEffect, useState } from "preact/hooks";
import type { Model } from "../../../gen/ts/constellation/core/v1/core_pb";
import { type DeploymentEvent, DeploymentState, type ModelStatus } from "../../../gen/ts/constellation/hosting/v1/hosting_pb";
import { hosting } from "../api";
import { describeError, type ServiceError } from "../errors";
import { ErrorBox, enumLabel } from "./common";

/** Hosting's models; packaging a catalog model; deploying one and following WatchDeployment live. */
export function Deployments({ catalogModel }: { catalogModel: Model | null }) {
  const [models, setModels] = useState<ModelStatus[] | null>(null);
  const [watching, setWatching] = useState<string | null>(null);
  const [error, setError] = useState<ServiceError | null>(null);
  const [reloads, setReloads] = useState(0);

  useEffect(() => {
    hosting.listModels({ pageSize: 200 }).then((r) => setModels(r.models), (e) => setError(describeError(e)));
  }, [reloads, watching]);

  const hosted = catalogModel && models?.find((m) => m.modelName === catalogModel.name && m.modelVersion === catalogModel.version);

  async function act(call: () => Promise<ModelStatus>) {
    setError(null);
    try {
      const status = await call();
      setWatching(status.modelId);
      setReloads(reloads + 1);
    } catch (e) {
      setError(describeError(e));
    }
  }

  const packageModel = (m: Model) =>
    act(() => hosting.packageModel({ modelName: m.name, modelVersion: m.version, source: { case: "localPath", value: m.source.replace(/^file:\/\//, "") }, modelCard: m.card }));

  return (
    <section>
      <ErrorBox error={error} />
      {catalogModel && models && (
        <div class="card" data-testid="deploy-target">
          <h3>{catalogModel.name} {catalogModel.version}</h3>
          <p class="muted">source <code>{catalogModel.source}</code></p>
          {hosted ? (
            <p>Hosting knows it as <code>{hosted.modelId}</code>: {enumLabel(DeploymentState, hosted.state)}.</p>
          ) : (
            <p>Hosting has not packaged it yet.</p>
          )}
          {!hosted && <button onClick={() => packageModel(catalogModel)} data-testid="package">Package</button>}
          {hosted && <button onClick={() => act(() => hosting.deployModel({ modelId: hosted.modelId }))} data-testid="deploy">Deploy</button>}
        </div>
      )}
      <table class="grid" data-testid="hosted-models">
        <thead><tr><th>Model</th><th>State</th><th>Image</th><th>Endpoints</th><th></th></tr></thead>
        <tbody>
          {(models ?? []).map((m) => (
            <tr key={m.modelId} class={m.modelId === watching ? "selected" : ""}>
              <td><strong>{m.modelName}</strong> {m.modelVersion}<div class="muted"><code>{m.modelId}</code></div></td>
              <td>{enumLabel(DeploymentState, m.state)}{m.stateMessage && <div class="muted">{m.stateMessage}</div>}</td>
              <td><code>{m.image}</code></td>
              <td>{m.endpoints.map((e) => `${e.address}${e.healthy ? "" : " (unhealthy)"}`).join(", ") || "—"}</td>
              <td>
                <button onClick={() => setWatching(m.modelId)}>Watch</button>{" "}
                <button onClick={() => act(() => hosting.deployModel({ modelId: m.modelId }))}>Deploy</button>
              </td>
            </tr>
          ))}
          {models?.length === 0 && <tr><td colSpan={5} class="muted">Hosting holds no models yet: pick one in the catalog and package it.</td></tr>}
        </tbody>
      </table>
      {watching && <DeploymentStream key={watching} modelId={watching} />}
    </section>
  );
}

function DeploymentStream({ modelId }: { modelId: string }) {
  const [events, setEvents] = useState<DeploymentEvent[]>([]);
  const [error, setError] = useState<ServiceError | null>(null);
  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      try {
        for await (const event of hosting.watchDeployment({ modelId }, { signal: abort.signal })) setEvents((seen) => [...seen, event]);
      } catch (e) {
        if (!abort.signal.aborted) setError(describeError(e));
      }
    })();
    return () => abort.abort();
  }, [modelId]);
  const state = events.length ? events[events.length - 1].state : DeploymentState.UNSPECIFIED;
  return (
    <div class="card" data-testid="deployment-stream">
      <h3>Deployment of <code>{modelId}</code>: <span class="state" data-testid="deployment-state">{enumLabel(DeploymentState, state)}</span></h3>
      <ErrorBox error={error} />
      <ol class="events log">
        {events.map((e) => (
          <li key={String(e.sequence)}>
            <span class="muted">#{String(e.sequence)}</span> <strong>{enumLabel(DeploymentState, e.state)}</strong> {e.message}
            {e.logLine && <pre>{e.logLine}</pre>}
          </li>
        ))}
      </ol>
    </div>
  );
}

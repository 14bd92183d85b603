import { useState } from "preact/hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Candidate, Planner, type PlanPipelineResponse, type RecommendResponse } from "../../../gen/ts/constellation/agent/v1/agent_pb";
import type { PipelineSpec } from "../../../gen/ts/constellation/common/v1/common_pb";
import { agent } from "../api";
import { describeError, type ServiceError, violationFor } from "../errors";
import { ErrorBox, enumLabel } from "./common";

function Candidates({ title, candidates, testId }: { title: string; candidates: Candidate[]; testId: string }) {
  return (
    <div class="candidates" data-testid={testId}>
      <h3>{title}</h3>
      {candidates.length === 0 && <p class="muted">None.</p>}
      <ol>
        {candidates.map((c) => (
          <li key={c.id} class="candidate">
            <div class="candidate-head">
              <strong>{c.name}</strong> <code class="muted">{c.id}</code>
              <span class="score" title="fit score">
                <span style={{ width: `${Math.round(c.score * 100)}%` }} />
              </span>
              {c.score.toFixed(2)}
            </div>
            <ul class="reasons">
              {c.reasons.map((r) => <li key={r} class="reason">✓ {r}</li>)}
              {c.shortfalls.map((s) => <li key={s} class="shortfall">✗ {s}</li>)}
            </ul>
          </li>
        ))}
      </ol>
    </div>
  );
}

const LIMITS = [
  { key: "sensors", label: "Sensors", placeholder: "sentinel-2, landsat-7" },
  { key: "bands", label: "Bands the dataset must have", placeholder: "green, nir" },
  { key: "maxResolutionM", label: "Coarsest resolution (m)", placeholder: "30" },
  { key: "maxLatencyMs", label: "Slowest model latency per tile (ms)", placeholder: "" },
  { key: "minAccuracy", label: "Lowest model accuracy (0-1)", placeholder: "0.9" },
] as const;
type LimitKey = (typeof LIMITS)[number]["key"];

/** Structured constraints from the optional fields; they add to and override what the prompt says. */
function constraintsFrom(limits: Record<LimitKey, string>) {
  const list = (text: string) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const number = (text: string) => (text.trim() ? Number(text) : 0);
  return {
    sensors: list(limits.sensors),
    bands: list(limits.bands),
    maxResolutionM: number(limits.maxResolutionM),
    maxLatencyMs: number(limits.maxLatencyMs),
    minAccuracy: number(limits.minAccuracy),
  };
}

const PROTO_NAMES: Record<LimitKey, string> = {
  sensors: "sensors", bands: "bands", maxResolutionM: "max_resolution_m", maxLatencyMs: "max_latency_ms", minAccuracy: "min_accuracy",
};

export function Agent({ onAccept }: { onAccept: (spec: PipelineSpec, prompt: string) => void }) {
  const [prompt, setPrompt] = useState("");
  const [limits, setLimits] = useState<Record<LimitKey, string>>({ sensors: "", bands: "", maxResolutionM: "", maxLatencyMs: "", minAccuracy: "" });
  const [plan, setPlan] = useState<PlanPipelineResponse | null>(null);
  const [ranking, setRanking] = useState<RecommendResponse | null>(null);
  const [error, setError] = useState<ServiceError | null>(null);
  const [busy, setBusy] = useState(false);

  async function ask(event: Event) {
    event.preventDefault();
    setBusy(true);
    setPlan(null);
    setRanking(null);
    setError(null);
    try {
      const answer = await agent.planPipeline({ prompt, constraints: constraintsFrom(limits) });
      setPlan(answer);
      setRanking(answer.recommendation ?? null);
    } catch (e) {
      setError(describeError(e));
      // Nothing fits well enough to plan: the ranking still says what comes nearest and why.
      if (e instanceof ConnectError && e.code === Code.FailedPrecondition) {
        agent.recommend({ prompt, constraints: constraintsFrom(limits) }).then(setRanking, () => undefined);
      }
    } finally {
      setBusy(false);
    }
  }

  return (
    <section>
      <form class="card" onSubmit={ask} data-testid="agent-form">
        <label>
          What do you want to find out?
          <textarea rows={2} value={prompt} placeholder="map surface water in the Olinda scene" onInput={(e) => setPrompt(e.currentTarget.value)} data-testid="goal" />
        </label>
        <details>
          <summary>Limits (optional)</summary>
          <div class="form-grid">
            {LIMITS.map(({ key, label, placeholder }) => {
              const violation = violationFor(error, `constraints.${PROTO_NAMES[key]}`);
              return (
                <label key={key} class={violation ? "invalid" : ""}>
                  {label}
                  <input name={key} value={limits[key]} placeholder={placeholder} onInput={(e) => setLimits({ ...limits, [key]: e.currentTarget.value })} />
                  {violation && <span class="field-error">{violation.description}</span>}
                </label>
              );
            })}
          </div>
        </details>
        <button type="submit" disabled={busy} data-testid="ask">{busy ? "Asking…" : "Ask the agent"}</button>
      </form>
      <ErrorBox error={error} />
      {ranking && (
        <div class="card" data-testid="recommendation">
          <p>
            <span class={ranking.satisfied ? "badge ok" : "badge warn"}>{ranking.satisfied ? "meets every constraint" : "nearest alternatives"}</span>{" "}
            <span class="muted">planner: {enumLabel(Planner, ranking.planner)}</span>
          </p>
          <p data-testid="summary">{ranking.summary}</p>
          <div class="columns">
            <Candidates title="Datasets" candidates={ranking.datasets} testId="dataset-candidates" />
            <Candidates title="Models" candidates={ranking.models} testId="model-candidates" />
          </div>
        </div>
      )}
      {plan?.spec && (
        <div class="card" data-testid="plan">
          <h3>Proposed pipeline</h3>
          <ol class="rationale">
            {plan.rationale.map((r) => (
              <li key={r.blockId}><code>{r.blockId}</code> {r.reason}</li>
            ))}
          </ol>
          <button onClick={() => onAccept(plan.spec!, prompt)} data-testid="accept-plan">Accept plan and edit</button>
        </div>
      )}
    </section>
  );
}

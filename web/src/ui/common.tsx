import { Component, type ComponentChildren } from "preact";
import type { ServiceError } from "../errors";

export function ErrorBox({ error, testId = "error" }: { error: ServiceError | null; testId?: string }) {
  if (!error) return null;
  return (
    <div class="error" role="alert" data-testid={testId}>
      <strong class="error-code">{error.code}</strong> <span class="error-message">{error.message}</span>
      {error.violations.length > 0 && (
        <ul>
          {error.violations.map((v) => (
            <li key={v.field}>
              <code class="error-field">{v.field}</code>: {v.description}
            </li>
          ))}
        </ul>
      )}
      {error.code === "UNAUTHENTICATED" && <div>Enter an API key at the top right.</div>}
      {error.requestId && <div class="muted">request id {error.requestId}</div>}
    </div>
  );
}

/** Anything a component throws while rendering shows up here instead of a blank page. */
export class Boundary extends Component<{ children: ComponentChildren }, { failure: string | null }> {
  state = { failure: null as string | null };
  componentDidCatch(error: unknown) {
    this.setState({ failure: error instanceof Error ? `${error.message}\n${error.stack ?? ""}` : String(error) });
  }
  render() {
    if (this.state.failure) {
      return (
        <div class="error" role="alert" data-testid="crash">
          <strong>The console hit a bug.</strong> <button onClick={() => this.setState({ failure: null })}>Try again</button>
          <pre>{this.state.failure}</pre>
        </div>
      );
    }
    return this.props.children;
  }
}

/** A step's bar: done/total when the step counts, striped while it runs without a total, full once it is done. */
interface ProgressProps {
  done: number;
  total: number;
  unit: string;
  complete?: boolean;
  stopped?: boolean;
}

export function Progress({ done, total, unit, complete = false, stopped = false }: ProgressProps) {
  const counted = total > 0;
  const fraction = counted ? Math.min(1, done / total) : complete ? 1 : 0;
  const striped = !counted && !complete && !stopped;
  return (
    <div class="progress" title={`${done}${counted ? ` of ${total}` : ""} ${unit}`}>
      <div class={`progress-fill${striped ? " indeterminate" : ""}`} style={{ width: `${striped ? 100 : fraction * 100}%` }} />
      <span class="progress-label">{counted ? `${done} / ${total} ${unit}` : complete ? "done" : done ? `${done} ${unit}` : ""}</span>
    </div>
  );
}

/** "SUCCEEDED" -> "succeeded" for a generated enum (protobuf-es drops the prefix). */
export function enumLabel(values: Record<number, string>, value: number): string {
  return (values[value] ?? "UNSPECIFIED").toLowerCase().replace(/_/g, " ");
}

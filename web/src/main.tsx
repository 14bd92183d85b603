import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { Model } from "../../gen/ts/constellation/core/v1/core_pb";
import { apiKey, type ConsoleConfig, loadConsoleConfig, loginFromLink, setApiKey } from "./api";
import { describeError, type ServiceError } from "./errors";
import { EMPTY_GRAPH, fromSpec, type Graph } from "./graph";
import { Agent } from "./ui/Agent";
import { Catalog, type CatalogData } from "./ui/Catalog";
import { Boundary, ErrorBox } from "./ui/common";
import { Deployments } from "./ui/Deployments";
import { Editor } from "./ui/Editor";
import { Runs } from "./ui/Runs";
import "./style.css";

const TABS = ["catalog", "agent", "pipeline", "deployments", "runs"] as const;
type Tab = (typeof TABS)[number];

function App({ loginError }: { loginError: string | null }) {
  // #tab, or #runs/<run id> for a run's page (a link that replays the run's events).
  const [initial, initialRun] = location.hash.slice(1).split("/") as [Tab, string | undefined];
  const [tab, setTab] = useState<Tab>(TABS.includes(initial) ? initial : "catalog");
  const [catalog, setCatalog] = useState<CatalogData>({ datasets: [], models: [] });
  const [graph, setGraph] = useState<Graph>(EMPTY_GRAPH);
  const [runId, setRunId] = useState<string | null>(initial === "runs" && initialRun ? initialRun : null);
  const [deployTarget, setDeployTarget] = useState<Model | null>(null);
  const [config, setConfig] = useState<ConsoleConfig>({ outputsUri: "", auth: false, authOff: false });

  const [stray, setStray] = useState<ServiceError | null>(null);

  useEffect(() => {
    loadConsoleConfig().then(setConfig);
    // An error no screen caught still shows up, at the top, rather than nowhere.
    const onRejection = (event: PromiseRejectionEvent) => setStray(describeError(event.reason));
    const onError = (event: ErrorEvent) => setStray(describeError(event.error ?? event.message));
    window.addEventListener("unhandledrejection", onRejection);
    window.addEventListener("error", onError);
    return () => {
      window.removeEventListener("unhandledrejection", onRejection);
      window.removeEventListener("error", onError);
    };
  }, []);
  useEffect(() => {
    history.replaceState(null, "", tab === "runs" && runId ? `#runs/${runId}` : `#${tab}`);
  }, [tab, runId]);

  return (
    <>
      <header>
        <h1>Constellation</h1>
        <nav>
          {TABS.map((t) => (
            <button key={t} class={t === tab ? "tab active" : "tab"} onClick={() => setTab(t)} data-testid={`tab-${t}`}>
              {t}
            </button>
          ))}
        </nav>
        {(config.auth || apiKey()) && <KeyInput />}
      </header>
      <main>
        {config.authOff && (
          <div class="error" role="alert" data-testid="auth-off">
            Authentication is off (CONSTELLATION_AUTH=off): anyone who can reach this gateway may do anything.
          </div>
        )}
        {loginError && (
          <div class="error" role="alert" data-testid="login-error">
            <strong class="error-code">login link refused</strong> <span class="error-message">{loginError}</span>
          </div>
        )}
        {stray && (
          <div onClick={() => setStray(null)} title="click to dismiss">
            <ErrorBox error={stray} testId="stray-error" />
          </div>
        )}
        <Boundary>
          {/* The catalog stays mounted so the editor's pickers see what it loaded. */}
          <div hidden={tab !== "catalog"}>
            <Catalog onLoaded={setCatalog} onDeploy={(m) => { setDeployTarget(m); setTab("deployments"); }} />
          </div>
          {tab === "agent" && <Agent onAccept={(spec) => { setGraph(fromSpec(spec)); setTab("pipeline"); }} />}
          {tab === "pipeline" && (
            <Editor graph={graph} onChange={setGraph} catalog={catalog} exportUri={config.outputsUri} onStarted={(run) => { setRunId(run.id); setTab("runs"); }} />
          )}
          {tab === "deployments" && <Deployments catalogModel={deployTarget} />}
          {tab === "runs" && <Runs runId={runId} config={config} onPick={setRunId} />}
        </Boundary>
      </main>
    </>
  );
}

/** The mesh's API key for this tab; changing it reloads the page so every screen asks again. */
function KeyInput() {
  const [key, setKey] = useState(apiKey());
  return (
    <form class="api-key" onSubmit={(e) => { e.preventDefault(); setApiKey(key.trim()); location.reload(); }}>
      <input type="password" placeholder="API key" value={key} onInput={(e) => setKey(e.currentTarget.value)} data-testid="api-key" />
      <button type="submit">Use key</button>
    </form>
  );
}

// A key kept from earlier in this tab gets its cookies again (map tiles need /tiles' since it was added).
if (apiKey()) setApiKey(apiKey());
// A login link is exchanged for the key before any screen calls the mesh.
loginFromLink().then((loginError) => render(<App loginError={loginError} />, document.getElementById("app")!));

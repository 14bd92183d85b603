import { useEffect, useRef, useState } from "preact/hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import { BlendMode, ExportFormat, Normalization, type PipelineProblem, SpectralIndex } from "../../../gen/ts/constellation/common/v1/common_pb";
import type { Pipeline, Run } from "../../../gen/ts/constellation/core/v1/core_pb";
import { core } from "../api";
import { describeError, type ServiceError } from "../errors";
import {
  addBlock, BLOCK_KINDS, type BlockKind, connect, disconnect, fromSpec, type Graph, type GraphBlock, moveBlock, placeProblems,
  type PlacedProblems, problemSetting, removeBlock, renameBlock, toSpec, updateBlock,
} from "../graph";
import type { CatalogData } from "./Catalog";
import { ErrorBox, enumLabel } from "./common";

const BLOCK_W = 170;
const PORT_Y = 26;
const DRAG_TYPE = "application/x-constellation-block";

type FieldType = "int" | "float" | "text" | "list" | "enum" | "formats" | "dataset" | "model" | "bool";
interface FieldDef { name: string; label: string; type: FieldType; values?: Record<number, string> }

const FIELDS: Record<BlockKind, FieldDef[]> = {
  dataset: [
    { name: "datasetId", label: "Dataset", type: "dataset" },
    { name: "bands", label: "Bands (empty: all)", type: "list" },
    { name: "resolutionM", label: "Resolution (m, 0: the finest band's)", type: "float" },
  ],
  tile: [
    { name: "tileSizePx", label: "Tile size (px, 0: the model's)", type: "int" },
    { name: "overlapPx", label: "Overlap (px)", type: "int" },
    { name: "normalization", label: "Normalization", type: "enum", values: Normalization },
  ],
  model: [
    { name: "modelId", label: "Model", type: "model" },
    { name: "batchSize", label: "Batch size (0: default)", type: "int" },
    { name: "maxConcurrency", label: "Concurrent requests (0: default)", type: "int" },
  ],
  stitch: [{ name: "blend", label: "Blend", type: "enum", values: BlendMode }],
  index: [
    { name: "preset", label: "Index (unspecified: the two bands below)", type: "enum", values: SpectralIndex },
    { name: "firstBand", label: "First band (first − second) / (first + second)", type: "text" },
    { name: "secondBand", label: "Second band", type: "text" },
  ],
  vectorize: [
    { name: "threshold", label: "Threshold", type: "float" },
    { name: "simplifyToleranceM", label: "Simplify tolerance (m)", type: "float" },
    { name: "minAreaM2", label: "Minimum area (m²)", type: "float" },
    { name: "crs", label: "Output CRS (empty: the scene's)", type: "text" },
  ],
  summary: [
    { name: "threshold", label: "Count area above", type: "float" },
    { name: "mosaic", label: "Also a mosaic of the scenes", type: "bool" },
  ],
  export: [{ name: "uri", label: "Destination URI", type: "text" }, { name: "formats", label: "Formats (none ticked: all)", type: "formats" }],
};

function summary(block: GraphBlock, catalog: CatalogData): string {
  const v = block.config.value as unknown as Record<string, unknown>;
  switch (block.config.case) {
    case "dataset": return catalog.datasets.find((d) => d.id === v.datasetId)?.name ?? String(v.datasetId || "no dataset chosen");
    case "model": return catalog.models.find((m) => m.id === v.modelId)?.name ?? String(v.modelId || "no model chosen");
    case "tile": return `${v.tileSizePx || "model"} px, overlap ${v.overlapPx}`;
    case "stitch": return enumLabel(BlendMode, v.blend as number);
    case "index": return v.preset ? enumLabel(SpectralIndex, v.preset as number) : `(${v.firstBand} − ${v.secondBand}) / (${v.firstBand} + ${v.secondBand})`;
    case "vectorize": return `threshold ${v.threshold}`;
    case "summary": return `area above ${v.threshold}${v.mosaic ? ", mosaic" : ""}`;
    case "export": return String(v.uri || "no destination");
  }
}

interface Props {
  graph: Graph;
  onChange: (graph: Graph) => void;
  catalog: CatalogData;
  exportUri: string;
  onStarted: (run: Run) => void;
}

export function Editor({ graph, onChange, catalog, exportUri, onStarted }: Props) {
  const [selected, setSelected] = useState<{ block?: string; edge?: number } | null>(null);
  const [connectingFrom, setConnectingFrom] = useState<string | null>(null);
  const [placed, setPlaced] = useState<PlacedProblems | null>(null);
  const [order, setOrder] = useState<string[] | null>(null);
  const [notice, setNotice] = useState("");
  const [error, setError] = useState<ServiceError | null>(null);
  const [name, setName] = useState("");
  const [busy, setBusy] = useState(false);
  const canvas = useRef<HTMLDivElement>(null);
  const dragging = useRef<{ id: string; dx: number; dy: number } | null>(null);

  // Any edit but a move makes the last validation stale.
  function edit(next: Graph) {
    onChange(next);
    setPlaced(null);
    setOrder(null);
  }

  function canvasPoint(event: { clientX: number; clientY: number }) {
    const rect = canvas.current!.getBoundingClientRect();
    return { x: event.clientX - rect.left + canvas.current!.scrollLeft, y: event.clientY - rect.top + canvas.current!.scrollTop };
  }

  function onDrop(event: DragEvent) {
    event.preventDefault();
    const kind = event.dataTransfer?.getData(DRAG_TYPE) as BlockKind;
    if (!BLOCK_KINDS.includes(kind)) return;
    const { x, y } = canvasPoint(event);
    const added = addBlock(graph, kind, x - BLOCK_W / 2, y - 20, kind === "export" ? exportUri : "");
    edit(added.graph);
    setSelected({ block: added.id });
  }

  function clickPort(id: string, side: "in" | "out") {
    if (side === "out") {
      setConnectingFrom(connectingFrom === id ? null : id);
      setNotice("");
      return;
    }
    if (!connectingFrom) {
      setNotice("Click a block's output port (right) first, then the input port (left) of the block it feeds.");
      return;
    }
    const result = connect(graph, connectingFrom, id);
    setConnectingFrom(null);
    if (result.error) setNotice(result.error);
    else {
      setNotice("");
      edit(result.graph);
    }
  }

  async function validate(): Promise<boolean> {
    setError(null);
    try {
      const answer = await core.validatePipeline({ spec: toSpec(graph) });
      setPlaced(placeProblems(graph, answer.problems));
      setOrder(answer.valid ? answer.topologicalOrder : null);
      return answer.valid;
    } catch (e) {
      setError(describeError(e));
      return false;
    }
  }

  async function saveAndRun() {
    performance.clearMarks("run-clicked");
    performance.clearMarks("first-run-event");
    performance.mark("run-clicked");
    setBusy(true);
    try {
      if (!(await validate())) return;
      const pipelineName = name.trim() || `console-${new Date().toISOString().replace(/[:.]/g, "-").toLowerCase()}`;
      const pipeline = await core.createPipeline({ pipeline: { name: pipelineName, spec: toSpec(graph) } });
      const run = await core.runPipeline({ pipelineId: pipeline.id });
      performance.clearMarks("run-created");
      performance.mark("run-created");
      onStarted(run);
    } catch (e) {
      setError(describeError(e));
      if (e instanceof ConnectError && e.code === Code.AlreadyExists) setNotice("That pipeline name is taken: choose another.");
    } finally {
      setBusy(false);
    }
  }

  function onKeyDown(event: KeyboardEvent) {
    if ((event.target as HTMLElement).closest("input, select, textarea")) return;
    if (event.key === "Escape") setConnectingFrom(null);
    if (event.key !== "Delete" && event.key !== "Backspace") return;
    if (selected?.block) edit(removeBlock(graph, selected.block));
    else if (selected?.edge !== undefined) edit(disconnect(graph, selected.edge));
    else return;
    setSelected(null);
    event.preventDefault();
  }

  function onPointerDown(event: PointerEvent, block: GraphBlock) {
    if ((event.target as HTMLElement).closest("button")) return;
    const { x, y } = canvasPoint(event);
    dragging.current = { id: block.id, dx: x - block.x, dy: y - block.y };
    (event.currentTarget as HTMLElement).setPointerCapture(event.pointerId);
    setSelected({ block: block.id });
  }

  function onPointerMove(event: PointerEvent) {
    if (!dragging.current) return;
    const { x, y } = canvasPoint(event);
    onChange(moveBlock(graph, dragging.current.id, x - dragging.current.dx, y - dragging.current.dy));
  }

  const byId = new Map(graph.blocks.map((b) => [b.id, b]));
  const selectedBlock = selected?.block ? byId.get(selected.block) : undefined;
  const width = Math.max(900, ...graph.blocks.map((b) => b.x + BLOCK_W + 40));
  const height = Math.max(420, ...graph.blocks.map((b) => b.y + 160));

  return (
    <section class="editor">
      <div class="toolbar">
        <div class="palette" data-testid="palette">
          {BLOCK_KINDS.map((kind) => (
            <div key={kind} class={`palette-item kind-${kind}`} draggable onDragStart={(e) => e.dataTransfer?.setData(DRAG_TYPE, kind)} data-testid={`palette-${kind}`}>
              {kind}
            </div>
          ))}
        </div>
        <OpenPipeline onOpen={(pipeline) => { edit(fromSpec(pipeline.spec!)); setSelected(null); setName(""); setNotice(`Opened ${pipeline.name}; saving creates a new pipeline.`); }} onError={setError} />
        <input placeholder="pipeline name (optional)" value={name} onInput={(e) => setName(e.currentTarget.value)} data-testid="pipeline-name" />
        <button onClick={validate} data-testid="validate">Validate</button>
        <button onClick={saveAndRun} disabled={busy || graph.blocks.length === 0} data-testid="run">{busy ? "Starting…" : "Save and run"}</button>
        <button onClick={() => { edit({ blocks: [], edges: [] }); setSelected(null); }}>Clear</button>
      </div>
      {connectingFrom && <p class="hint">Connecting from <code>{connectingFrom}</code>: click the input port of the block it feeds.</p>}
      {notice && <p class="hint warn" data-testid="editor-notice">{notice}</p>}
      <ErrorBox error={error} />
      {placed && (placed.general.length > 0 || order) && (
        <div class={order ? "ok" : "error"} data-testid="validation">
          {order ? <>Valid: {order.join(" → ")}</> : <ProblemList problems={placed.general} />}
        </div>
      )}
      <div class="workspace">
        <div
          class="canvas"
          ref={canvas}
          onDragOver={(e) => e.preventDefault()}
          onDrop={onDrop}
          onPointerMove={onPointerMove}
          onPointerUp={() => (dragging.current = null)}
          onKeyDown={onKeyDown}
          tabIndex={0}
          data-testid="canvas"
        >
          <div class="canvas-inner" style={{ width: `${width}px`, height: `${height}px` }}>
            {graph.blocks.length === 0 && <p class="muted empty">Drag blocks here from the palette, or accept a plan from the agent.</p>}
            <svg class="edges" width={width} height={height}>
              {graph.edges.map((e, i) => {
                const from = byId.get(e.source), to = byId.get(e.target);
                if (!from || !to) return null;
                const x1 = from.x + BLOCK_W, y1 = from.y + PORT_Y, x2 = to.x, y2 = to.y + PORT_Y;
                const bend = Math.max(40, Math.abs(x2 - x1) / 2);
                const path = `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
                const classes = ["edge", placed?.byEdge.has(i) ? "invalid" : "", selected?.edge === i ? "selected" : ""].join(" ");
                return (
                  <g key={`${e.source}-${e.target}`} class={classes} onClick={() => setSelected({ edge: i })} data-testid={`edge-${i}`}>
                    <path d={path} class="edge-hit" />
                    <path d={path} class="edge-line" />
                  </g>
                );
              })}
            </svg>
            {graph.edges.map((e, i) => {
              const problems = placed?.byEdge.get(i);
              const from = byId.get(e.source), to = byId.get(e.target);
              if (!problems || !from || !to) return null;
              return (
                <div key={`p${i}`} class="edge-problem" style={{ left: `${(from.x + BLOCK_W + to.x) / 2 - 90}px`, top: `${(from.y + to.y) / 2 + PORT_Y + 8}px` }} data-testid={`edge-problem-${i}`}>
                  <ProblemList problems={problems} />
                </div>
              );
            })}
            {graph.blocks.map((block) => {
              const problems = placed?.byBlock.get(block.id);
              const classes = ["block", `kind-${block.config.case}`, problems ? "invalid" : "", selected?.block === block.id ? "selected" : ""].join(" ");
              return (
                <div key={block.id} class={classes} style={{ left: `${block.x}px`, top: `${block.y}px`, width: `${BLOCK_W}px` }} onPointerDown={(e) => onPointerDown(e, block)} data-testid={`block-${block.id}`}>
                  {block.config.case !== "dataset" && (
                    <button class={`port in${connectingFrom ? " armed" : ""}`} title="input" onClick={() => clickPort(block.id, "in")} data-testid={`port-in-${block.id}`} />
                  )}
                  <div class="block-head">
                    <span class="block-kind">{block.config.case}</span> <code>{block.id}</code>
                  </div>
                  <div class="block-body">{block.label || summary(block, catalog)}</div>
                  {problems && <div class="block-problems" data-testid={`block-problems-${block.id}`}><ProblemList problems={problems} /></div>}
                  {block.config.case !== "export" && (
                    <button class={`port out${connectingFrom === block.id ? " active" : ""}`} title="output: click, then click an input" onClick={() => clickPort(block.id, "out")} data-testid={`port-out-${block.id}`} />
                  )}
                </div>
              );
            })}
          </div>
        </div>
        <aside class="inspector" data-testid="inspector">
          {selectedBlock && (
            <BlockSettings
              key={selectedBlock.id}
              block={selectedBlock}
              catalog={catalog}
              problems={placed?.byBlock.get(selectedBlock.id) ?? []}
              onRename={(newId) => {
                const result = renameBlock(graph, selectedBlock.id, newId);
                if (result.error) setNotice(result.error);
                else { edit(result.graph); setSelected({ block: newId }); }
              }}
              onChange={(change) => edit(updateBlock(graph, selectedBlock.id, change))}
              onRemove={() => { edit(removeBlock(graph, selectedBlock.id)); setSelected(null); }}
            />
          )}
          {selected?.edge !== undefined && graph.edges[selected.edge] && (
            <div>
              <h3>Edge</h3>
              <p><code>{graph.edges[selected.edge].source}</code> → <code>{graph.edges[selected.edge].target}</code></p>
              <button onClick={() => { edit(disconnect(graph, selected.edge!)); setSelected(null); }}>Remove edge</button>
            </div>
          )}
          {!selected && <p class="muted">Select a block to edit its settings. Connect blocks by clicking an output port (right), then an input port (left). Delete removes the selected block or edge.</p>}
        </aside>
      </div>
    </section>
  );
}

/** A stored pipeline into the editor (pipelines are immutable: saving an edit stores a new one). */
function OpenPipeline({ onOpen, onError }: { onOpen: (pipeline: Pipeline) => void; onError: (error: ServiceError) => void }) {
  const [pipelines, setPipelines] = useState<Pipeline[] | null>(null);
  useEffect(() => {
    core.listPipelines({ pageSize: 200 }).then((r) => setPipelines(r.pipelines), (e) => onError(describeError(e)));
  }, []);
  return (
    <select value="" onChange={(e) => { const found = pipelines?.find((p) => p.id === e.currentTarget.value); if (found?.spec) onOpen(found); }} data-testid="open-pipeline">
      <option value="">Open a stored pipeline…</option>
      {(pipelines ?? []).map((p) => <option key={p.id} value={p.id}>{p.name}</option>)}
    </select>
  );
}

function ProblemList({ problems }: { problems: PipelineProblem[] }) {
  return (
    <ul class="problems">
      {problems.map((p, i) => (
        <li key={i} title={p.field}>{p.description}</li>
      ))}
    </ul>
  );
}

interface SettingsProps {
  block: GraphBlock;
  catalog: CatalogData;
  problems: PipelineProblem[];
  onRename: (id: string) => void;
  onChange: (change: Partial<Pick<GraphBlock, "label" | "config">>) => void;
  onRemove: () => void;
}

function BlockSettings({ block, catalog, problems, onRename, onChange, onRemove }: SettingsProps) {
  const [id, setId] = useState(block.id);
  const value = block.config.value as unknown as Record<string, unknown>;
  const set = (name: string, v: unknown) => onChange({ config: { case: block.config.case, value: { ...block.config.value, [name]: v } } as GraphBlock["config"] });

  function input(field: FieldDef) {
    const current = value[field.name];
    switch (field.type) {
      case "int":
      case "float":
        return <input type="number" step={field.type === "int" ? 1 : "any"} value={String(current ?? 0)} onChange={(e) => set(field.name, field.type === "int" ? Math.trunc(Number(e.currentTarget.value) || 0) : Number(e.currentTarget.value) || 0)} />;
      case "bool":
        return <input type="checkbox" checked={Boolean(current)} onChange={(e) => set(field.name, e.currentTarget.checked)} />;
      case "text":
        return <input value={String(current ?? "")} onChange={(e) => set(field.name, e.currentTarget.value.trim())} />;
      case "list":
        return <input value={(current as string[]).join(", ")} onChange={(e) => set(field.name, e.currentTarget.value.split(",").map((s) => s.trim()).filter(Boolean))} />;
      case "enum":
        return (
          <select value={String(current)} onChange={(e) => set(field.name, Number(e.currentTarget.value))}>
            {Object.entries(field.values!).filter(([k]) => !Number.isNaN(Number(k))).map(([k, v]) => <option key={k} value={k}>{v.toLowerCase().replace(/_/g, " ")}</option>)}
          </select>
        );
      case "formats": {
        const chosen = current as ExportFormat[];
        return (
          <div class="checks">
            {[ExportFormat.COG, ExportFormat.GEOJSON, ExportFormat.PNG_PREVIEW, ExportFormat.CSV, ExportFormat.JSON].map((f) => (
              <label key={f} class="check">
                <input type="checkbox" checked={chosen.includes(f)} onChange={(e) => set(field.name, e.currentTarget.checked ? [...chosen, f] : chosen.filter((c) => c !== f))} />
                {enumLabel(ExportFormat, f)}
              </label>
            ))}
          </div>
        );
      }
      case "dataset":
      case "model": {
        const options = field.type === "dataset" ? catalog.datasets.map((d) => [d.id, `${d.name} (${d.sensor || "?"})`]) : catalog.models.map((m) => [m.id, `${m.name} ${m.version}`]);
        const known = options.some(([k]) => k === current);
        return (
          <select value={String(current)} onChange={(e) => set(field.name, e.currentTarget.value)}>
            <option value="">— choose —</option>
            {!known && current ? <option value={String(current)}>{String(current)} (not in the catalog)</option> : null}
            {options.map(([k, label]) => <option key={k} value={k}>{label}</option>)}
          </select>
        );
      }
    }
  }

  return (
    <div data-testid="block-settings">
      <h3>{block.config.case} block</h3>
      <label>
        Id
        <input value={id} onInput={(e) => setId(e.currentTarget.value)} onChange={() => onRename(id)} data-testid="block-id" />
      </label>
      <label>
        Label
        <input value={block.label} onChange={(e) => onChange({ label: e.currentTarget.value })} />
      </label>
      {FIELDS[block.config.case].map((field) => {
        const problem = problems.find((p) => problemSetting(p) === field.name);
        return (
          <label key={field.name} class={problem ? "invalid" : ""} data-setting={field.name}>
            {field.label}
            {input(field)}
            {problem && <span class="field-error">{problem.description}</span>}
          </label>
        );
      })}
      <button class="danger" onClick={onRemove}>Remove block</button>
    </div>
  );
}

// The pipeline editor's model: blocks placed on a canvas and the edges between them, kept as
// plain immutable data so that every edit is a pure function (tested in graph.test.ts). The
// server stays the judge of what is valid (ValidatePipeline); the editor only refuses edits
// that can never make sense (self-loops, duplicate edges, cycles) and places the problems the
// server reports on the block or edge they concern.
import { create } from "@bufbuild/protobuf";
import {
  BlendMode,
  type Block,
  BlockSchema,
  DatasetBlockSchema,
  EdgeSchema,
  ExportBlockSchema,
  IndexBlockSchema,
  ModelBlockSchema,
  Normalization,
  type PipelineProblem,
  type PipelineSpec,
  PipelineSpecSchema,
  SpectralIndex,
  StitchBlockSchema,
  SummaryBlockSchema,
  TileBlockSchema,
  VectorizeBlockSchema,
} from "../../gen/ts/constellation/common/v1/common_pb";

export type BlockKind = NonNullable<Block["config"]["case"]>;
export type BlockConfig = Extract<Block["config"], { case: BlockKind }>;

// The palette's order; the server's pipeline package owns what each kind accepts and produces.
export const BLOCK_KINDS: readonly BlockKind[] = ["dataset", "tile", "model", "stitch", "index", "vectorize", "summary", "export"];

export interface GraphBlock {
  id: string;
  label: string;
  config: BlockConfig;
  x: number;
  y: number;
}

export interface GraphEdge {
  source: string;
  target: string;
}

export interface Graph {
  blocks: GraphBlock[];
  // Order matters: PipelineProblem.edge_index points into this list as sent in the spec.
  edges: GraphEdge[];
}

export const EMPTY_GRAPH: Graph = { blocks: [], edges: [] };

const BLOCK_ID = /^[a-z0-9_-]{1,64}$/;
export const COLUMN_PX = 210;
export const ROW_PX = 120;

export function defaultConfig(kind: BlockKind, exportUri = ""): BlockConfig {
  switch (kind) {
    case "dataset":
      return { case: kind, value: create(DatasetBlockSchema) };
    case "tile":
      return { case: kind, value: create(TileBlockSchema, { tileSizePx: 256, normalization: Normalization.REFLECTANCE }) };
    case "model":
      return { case: kind, value: create(ModelBlockSchema) };
    case "stitch":
      return { case: kind, value: create(StitchBlockSchema, { blend: BlendMode.MEAN }) };
    case "index":
      return { case: kind, value: create(IndexBlockSchema, { preset: SpectralIndex.NDWI }) };
    case "vectorize":
      return { case: kind, value: create(VectorizeBlockSchema, { threshold: 0.5 }) };
    case "summary":
      return { case: kind, value: create(SummaryBlockSchema, { threshold: 0 }) };
    case "export":
      return { case: kind, value: create(ExportBlockSchema, { uri: exportUri }) };
  }
}

/** The first of `kind`, `kind-2`, `kind-3`... not used by a block yet. */
export function freshId(graph: Graph, kind: string): string {
  const taken = new Set(graph.blocks.map((b) => b.id));
  if (!taken.has(kind)) return kind;
  for (let n = 2; ; n++) if (!taken.has(`${kind}-${n}`)) return `${kind}-${n}`;
}

export function addBlock(graph: Graph, kind: BlockKind, x: number, y: number, exportUri = ""): { graph: Graph; id: string } {
  const id = freshId(graph, kind);
  const block: GraphBlock = { id, label: "", config: defaultConfig(kind, exportUri), x: Math.max(0, x), y: Math.max(0, y) };
  return { graph: { ...graph, blocks: [...graph.blocks, block] }, id };
}

export function moveBlock(graph: Graph, id: string, x: number, y: number): Graph {
  return { ...graph, blocks: graph.blocks.map((b) => (b.id === id ? { ...b, x: Math.max(0, x), y: Math.max(0, y) } : b)) };
}

export function updateBlock(graph: Graph, id: string, change: Partial<Pick<GraphBlock, "label" | "config">>): Graph {
  return { ...graph, blocks: graph.blocks.map((b) => (b.id === id ? { ...b, ...change } : b)) };
}

/** Renames a block and every edge end that names it. */
export function renameBlock(graph: Graph, id: string, newId: string): { graph: Graph; error?: string } {
  if (newId === id) return { graph };
  if (!BLOCK_ID.test(newId)) return { graph, error: "ids use lowercase letters, digits, '-' and '_' (1-64)" };
  if (graph.blocks.some((b) => b.id === newId)) return { graph, error: `a block named "${newId}" exists` };
  const rename = (name: string) => (name === id ? newId : name);
  return {
    graph: {
      blocks: graph.blocks.map((b) => (b.id === id ? { ...b, id: newId } : b)),
      edges: graph.edges.map((e) => ({ source: rename(e.source), target: rename(e.target) })),
    },
  };
}

export function removeBlock(graph: Graph, id: string): Graph {
  return {
    blocks: graph.blocks.filter((b) => b.id !== id),
    edges: graph.edges.filter((e) => e.source !== id && e.target !== id),
  };
}

function reaches(graph: Graph, from: string, to: string): boolean {
  const seen = new Set<string>();
  const stack = [from];
  while (stack.length) {
    const at = stack.pop()!;
    if (at === to) return true;
    if (seen.has(at)) continue;
    seen.add(at);
    for (const e of graph.edges) if (e.source === at) stack.push(e.target);
  }
  return false;
}

/** Adds source -> target unless it is a self-loop, a duplicate, names a missing block or closes a cycle. */
export function connect(graph: Graph, source: string, target: string): { graph: Graph; error?: string } {
  const ids = new Set(graph.blocks.map((b) => b.id));
  if (!ids.has(source) || !ids.has(target)) return { graph, error: "both ends must be blocks on the canvas" };
  if (source === target) return { graph, error: "a block cannot feed itself" };
  if (graph.edges.some((e) => e.source === source && e.target === target)) return { graph, error: `${source} already feeds ${target}` };
  if (reaches(graph, target, source)) return { graph, error: `${target} already feeds ${source}: that edge would close a cycle` };
  return { graph: { ...graph, edges: [...graph.edges, { source, target }] } };
}

export function disconnect(graph: Graph, edgeIndex: number): Graph {
  return { ...graph, edges: graph.edges.filter((_, i) => i !== edgeIndex) };
}

export function toSpec(graph: Graph): PipelineSpec {
  return create(PipelineSpecSchema, {
    blocks: graph.blocks.map((b) => create(BlockSchema, { id: b.id, label: b.label, config: b.config })),
    edges: graph.edges.map((e) => create(EdgeSchema, { sourceBlockId: e.source, targetBlockId: e.target })),
  });
}

/** A graph from a spec, laid out left to right by depth (longest path from a source). */
export function fromSpec(spec: PipelineSpec): Graph {
  const blocks = spec.blocks.filter((b): b is Block & { config: BlockConfig } => b.config.case !== undefined);
  const ids = new Set(blocks.map((b) => b.id));
  const edges = spec.edges
    .filter((e) => ids.has(e.sourceBlockId) && ids.has(e.targetBlockId))
    .map((e) => ({ source: e.sourceBlockId, target: e.targetBlockId }));
  const depth = new Map<string, number>(blocks.map((b) => [b.id, 0]));
  // Longest-path layering; |blocks| rounds suffice for a DAG and bound the work on a cyclic spec.
  for (let round = 0; round < blocks.length; round++) {
    let changed = false;
    for (const e of edges) {
      const next = depth.get(e.source)! + 1;
      if (next > depth.get(e.target)! && next <= blocks.length) {
        depth.set(e.target, next);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const rows = new Map<number, number>();
  return {
    blocks: blocks.map((b) => {
      const column = depth.get(b.id)!;
      const row = rows.get(column) ?? 0;
      rows.set(column, row + 1);
      return { id: b.id, label: b.label, config: b.config, x: 20 + column * COLUMN_PX, y: 20 + row * ROW_PX };
    }),
    edges,
  };
}

export interface PlacedProblems {
  byBlock: Map<string, PipelineProblem[]>;
  byEdge: Map<number, PipelineProblem[]>;
  // Problems that concern the whole spec (or a block/edge no longer on the canvas).
  general: PipelineProblem[];
}

const BLOCK_FIELD = /^(?:spec\.)?blocks\[(\d+)\]/;
const EDGE_FIELD = /^(?:spec\.)?edges\[(\d+)\]/;

/** The setting a block problem names, as the generated field name: "blocks[2].model.model_id" -> "modelId". */
export function problemSetting(problem: PipelineProblem): string | undefined {
  const match = /^(?:spec\.)?blocks\[\d+\]\.[a-z]+\.([a-z_]+)/.exec(problem.field);
  return match?.[1].replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Puts each problem on the block or edge it concerns: block_id and edge_index first, else the field path. */
export function placeProblems(graph: Graph, problems: readonly PipelineProblem[]): PlacedProblems {
  const placed: PlacedProblems = { byBlock: new Map(), byEdge: new Map(), general: [] };
  const ids = new Set(graph.blocks.map((b) => b.id));
  const push = <K>(map: Map<K, PipelineProblem[]>, key: K, problem: PipelineProblem) => map.set(key, [...(map.get(key) ?? []), problem]);
  for (const problem of problems) {
    const blockIndex = BLOCK_FIELD.exec(problem.field)?.[1];
    const edgeIndex = EDGE_FIELD.exec(problem.field)?.[1];
    const blockId = problem.blockId || (blockIndex !== undefined ? graph.blocks[Number(blockIndex)]?.id : undefined);
    const edge = problem.edgeIndex >= 0 && problem.edgeIndex < graph.edges.length ? problem.edgeIndex : edgeIndex !== undefined ? Number(edgeIndex) : -1;
    if (edge >= 0 && edge < graph.edges.length) push(placed.byEdge, edge, problem);
    else if (blockId && ids.has(blockId)) push(placed.byBlock, blockId, problem);
    else placed.general.push(problem);
  }
  return placed;
}

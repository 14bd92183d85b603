import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { PipelineProblemSchema, type PipelineSpec, SpectralIndex } from "../../gen/ts/constellation/common/v1/common_pb";
import { addBlock, connect, disconnect, EMPTY_GRAPH, fromSpec, type Graph, moveBlock, placeProblems, problemSetting, removeBlock, renameBlock, toSpec, updateBlock } from "./graph";

function chain(...kinds: Parameters<typeof addBlock>[1][]): Graph {
  let graph = EMPTY_GRAPH;
  kinds.forEach((kind, i) => (graph = addBlock(graph, kind, i * 200, 0).graph));
  for (let i = 1; i < graph.blocks.length; i++) graph = connect(graph, graph.blocks[i - 1].id, graph.blocks[i].id).graph;
  return graph;
}

const problem = (fields: { field?: string; blockId?: string; edgeIndex?: number; description?: string }) =>
  create(PipelineProblemSchema, { edgeIndex: -1, description: "wrong", ...fields });

describe("adding and moving blocks", () => {
  it("names blocks after their kind and never reuses an id", () => {
    let graph = addBlock(EMPTY_GRAPH, "model", 10, 10).graph;
    graph = addBlock(graph, "model", 10, 10).graph;
    graph = addBlock(graph, "model", 10, 10).graph;
    expect(graph.blocks.map((b) => b.id)).toEqual(["model", "model-2", "model-3"]);
    graph = removeBlock(graph, "model-2");
    expect(addBlock(graph, "model", 0, 0).id).toBe("model-2");
  });

  it("gives each kind a default config of that kind, and export blocks the outputs destination", () => {
    const graph = chain("dataset", "tile", "model", "stitch", "vectorize");
    expect(graph.blocks.map((b) => b.config.case)).toEqual(["dataset", "tile", "model", "stitch", "vectorize"]);
    const tile = graph.blocks[1].config;
    expect(tile.case === "tile" && tile.value.tileSizePx).toBe(256);
    const out = addBlock(graph, "export", 0, 0, "file:///tmp/out").graph.blocks.at(-1)!.config;
    expect(out.case === "export" && out.value.uri).toBe("file:///tmp/out");
  });

  it("keeps blocks on the canvas when dropped or dragged past its edge", () => {
    const graph = moveBlock(addBlock(EMPTY_GRAPH, "tile", -50, 20).graph, "tile", 30, -10);
    expect(graph.blocks[0]).toMatchObject({ x: 30, y: 0 });
  });
});

describe("connecting blocks", () => {
  it("refuses self-loops, duplicates, missing ends and cycles, and says why", () => {
    const graph = chain("dataset", "tile", "model");
    expect(connect(graph, "tile", "tile").error).toMatch(/itself/);
    expect(connect(graph, "dataset", "tile").error).toMatch(/already feeds/);
    expect(connect(graph, "dataset", "nowhere").error).toMatch(/both ends/);
    expect(connect(graph, "model", "dataset").error).toMatch(/cycle/);
    expect(connect(graph, "model", "dataset").graph).toBe(graph);
  });

  it("removing a block drops the edges that touch it; removing an edge keeps the blocks", () => {
    const graph = chain("dataset", "tile", "model");
    expect(removeBlock(graph, "tile").edges).toEqual([]);
    expect(disconnect(graph, 0)).toEqual({ blocks: graph.blocks, edges: [{ source: "tile", target: "model" }] });
  });

  it("renaming a block renames the edge ends and rejects bad or taken ids", () => {
    const graph = chain("dataset", "tile", "model");
    const renamed = renameBlock(graph, "tile", "tiles-256").graph;
    expect(renamed.edges).toEqual([{ source: "dataset", target: "tiles-256" }, { source: "tiles-256", target: "model" }]);
    expect(renameBlock(graph, "tile", "Tiles!").error).toMatch(/lowercase/);
    expect(renameBlock(graph, "tile", "model").error).toMatch(/exists/);
  });
});

describe("specs", () => {
  it("builds a model-free index pipeline (NDWI by default) that round-trips", () => {
    const graph = chain("dataset", "index", "vectorize", "export");
    const spec = toSpec(graph);
    const index = spec.blocks[1];
    expect(index.config.case === "index" && index.config.value.preset).toBe(SpectralIndex.NDWI);
    expect(spec.edges.map((e) => `${e.sourceBlockId}>${e.targetBlockId}`)).toEqual(["dataset>index", "index>vectorize", "vectorize>export"]);
    expect(fromSpec(spec).blocks.map((b) => b.config)).toEqual(graph.blocks.map((b) => b.config));
  });

  it("round-trips through a PipelineSpec keeping ids, labels, configs and edge order", () => {
    let graph = chain("dataset", "tile", "model", "stitch", "export");
    graph = updateBlock(graph, "model", { label: "Water", config: { case: "model", value: { ...(graph.blocks[2].config.value as object), modelId: "mdl_1", batchSize: 4 } } as never });
    const spec: PipelineSpec = toSpec(graph);
    expect(spec.blocks.map((b) => b.id)).toEqual(["dataset", "tile", "model", "stitch", "export"]);
    expect(spec.edges.map((e) => `${e.sourceBlockId}>${e.targetBlockId}`)).toEqual(["dataset>tile", "tile>model", "model>stitch", "stitch>export"]);
    const model = spec.blocks[2];
    expect(model.label).toBe("Water");
    expect(model.config.case === "model" && model.config.value.modelId).toBe("mdl_1");
    const back = fromSpec(spec);
    expect(back.edges).toEqual(graph.edges);
    expect(back.blocks.map((b) => b.config)).toEqual(graph.blocks.map((b) => b.config));
  });

  it("lays a plan out left to right by depth, stacking blocks of equal depth", () => {
    const graph = chain("dataset", "tile", "model", "stitch", "vectorize");
    const withExport = connect(connect(addBlock(graph, "export", 0, 0).graph, "stitch", "export").graph, "vectorize", "export").graph;
    const laid = fromSpec(toSpec(withExport));
    const at = (id: string) => laid.blocks.find((b) => b.id === id)!;
    expect([at("dataset").x, at("tile").x, at("model").x, at("stitch").x]).toEqual([...new Set([at("dataset").x, at("tile").x, at("model").x, at("stitch").x])].sort((a, b) => a - b));
    expect(at("export").x).toBeGreaterThan(at("vectorize").x); // the longest path decides the column
  });
});

describe("placing validation problems", () => {
  const graph = chain("dataset", "tile", "model", "stitch");

  it("puts a problem on the block it names, on the edge it indexes, and the rest in general", () => {
    const placed = placeProblems(graph, [
      problem({ field: "blocks[2].model.model_id", blockId: "model" }),
      problem({ field: "edges[1]", blockId: "model", edgeIndex: 1 }),
      problem({ field: "blocks", description: "needs an export block" }),
    ]);
    expect([...placed.byBlock.keys()]).toEqual(["model"]);
    expect([...placed.byEdge.keys()]).toEqual([1]);
    expect(placed.general.map((p) => p.description)).toEqual(["needs an export block"]);
  });

  it("falls back to the field path when block_id is empty, and to general for blocks no longer there", () => {
    const placed = placeProblems(graph, [problem({ field: "spec.blocks[1].tile.overlap_px" }), problem({ blockId: "gone", field: "blocks[9].id" })]);
    expect(placed.byBlock.get("tile")?.length).toBe(1);
    expect(placed.general.length).toBe(1);
  });

  it("names the setting a problem concerns in the editor's field names", () => {
    expect(problemSetting(problem({ field: "blocks[2].model.model_id" }))).toBe("modelId");
    expect(problemSetting(problem({ field: "blocks[1].tile.overlap_px" }))).toBe("overlapPx");
    expect(problemSetting(problem({ field: "blocks[1]" }))).toBeUndefined();
  });
});

// @vitest-environment happy-dom
// The graph editor as a component: the palette, ports, inspector and error box in a DOM, with the
// real graph model underneath. (The browser tests cover the same screen against the real mesh.)
import { render } from "preact";
import { useState } from "preact/hooks";
import { act } from "preact/test-utils";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { addBlock, EMPTY_GRAPH, type Graph } from "../graph";
import { Editor } from "./Editor";

let root: HTMLElement;
let current: Graph;

function mount(initial: Graph) {
  function Harness() {
    const [graph, setGraph] = useState(initial);
    current = graph;
    return <Editor graph={graph} onChange={setGraph} catalog={{ datasets: [], models: [] }} exportUri="file:///srv/out" onStarted={() => undefined} />;
  }
  act(() => render(<Harness />, root));
}

const $ = (testId: string) => root.querySelector<HTMLElement>(`[data-testid="${testId}"]`);

beforeEach(() => {
  // Preact listens for "drop" only where the element has an `ondrop` property, as browsers' do;
  // happy-dom's elements lack the drag ones.
  for (const name of ["ondrop", "ondragover", "ondragstart", "onkeydown"]) if (!(name in HTMLElement.prototype)) Object.defineProperty(HTMLElement.prototype, name, { value: null, writable: true });
  // No gateway here: every call fails the way fetch does when nothing listens.
  vi.stubGlobal("fetch", () => Promise.reject(new TypeError("Failed to fetch")));
  root = document.createElement("div");
  document.body.appendChild(root);
});

afterEach(() => {
  act(() => render(null, root));
  root.remove();
  vi.unstubAllGlobals();
});

describe("the graph editor component", () => {
  it("adds the dropped palette block to the canvas and opens its settings", () => {
    mount(EMPTY_GRAPH);
    expect($("canvas")!.textContent).toContain("Drag blocks here");
    // happy-dom's DragEvent ignores its dataTransfer and coordinates; give the event what a browser would.
    const drop = new DragEvent("drop", { bubbles: true, cancelable: true });
    const data = new Map([["application/x-constellation-block", "export"]]);
    Object.defineProperties(drop, {
      dataTransfer: { value: { getData: (type: string) => data.get(type) ?? "" } },
      clientX: { value: 300 },
      clientY: { value: 120 },
    });
    act(() => void $("canvas")!.dispatchEvent(drop));
    expect(current.blocks.map((b) => b.id)).toEqual(["export"]);
    expect(current.blocks[0].config).toMatchObject({ case: "export", value: { uri: "file:///srv/out" } });
    expect($("block-export")).not.toBeNull();
    expect($("block-settings")!.textContent).toContain("export block");
  });

  it("connects an output port to an input port, and says why a repeated edge is refused", () => {
    let graph = addBlock(EMPTY_GRAPH, "dataset", 0, 0).graph;
    graph = addBlock(graph, "tile", 200, 0).graph;
    mount(graph);
    act(() => $("port-out-dataset")!.click());
    act(() => $("port-in-tile")!.click());
    expect(current.edges).toEqual([{ source: "dataset", target: "tile" }]);
    expect(root.querySelectorAll("g.edge").length).toBe(1);
    act(() => $("port-out-dataset")!.click());
    act(() => $("port-in-tile")!.click());
    expect(current.edges.length).toBe(1);
    expect($("editor-notice")!.textContent).toContain("already feeds");
  });

  it("removes the selected edge, then the selected block, with the Delete key", () => {
    let graph = addBlock(EMPTY_GRAPH, "dataset", 0, 0).graph;
    graph = addBlock(graph, "tile", 200, 0).graph;
    mount({ ...graph, edges: [{ source: "dataset", target: "tile" }] });
    const press = () => act(() => void $("canvas")!.dispatchEvent(new KeyboardEvent("keydown", { key: "Delete", bubbles: true })));
    act(() => void $("edge-0")!.dispatchEvent(new Event("click", { bubbles: true })));
    press();
    expect(current.edges).toEqual([]);
    expect(current.blocks.length).toBe(2);
    act(() => void $("block-tile")!.dispatchEvent(new Event("pointerdown", { bubbles: true })));
    press();
    expect(current.blocks.map((b) => b.id)).toEqual(["dataset"]);
  });

  it("edits a block's settings from the inspector", () => {
    mount(addBlock(EMPTY_GRAPH, "tile", 0, 0).graph);
    act(() => void $("block-tile")!.dispatchEvent(new Event("pointerdown", { bubbles: true })));
    const size = root.querySelector<HTMLInputElement>('[data-setting="tileSizePx"] input')!;
    size.value = "512";
    act(() => void size.dispatchEvent(new Event("change", { bubbles: true })));
    expect(current.blocks[0].config).toMatchObject({ case: "tile", value: { tileSizePx: 512 } });
    expect($("block-tile")!.textContent).toContain("512 px");
  });

  it("shows an error, not a blank editor, when the gateway cannot be reached", async () => {
    mount(addBlock(EMPTY_GRAPH, "dataset", 0, 0).graph);
    await act(async () => $("validate")!.click());
    for (let i = 0; i < 50 && !root.querySelector('[role="alert"]'); i++) await act(() => new Promise((r) => setTimeout(r, 20)));
    const alert = root.querySelector('[role="alert"]');
    expect(alert?.querySelector(".error-code")?.textContent).toMatch(/^[A-Z_]+$/);
    expect(alert?.textContent).toContain("Failed to fetch");
    expect($("block-dataset")).not.toBeNull();
  });
});

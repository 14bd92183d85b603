// @vitest-environment happy-dom
// The time-series chart: points placed by date and area, one per scene, from a summary's JSON.
import { render } from "preact";
import { act } from "preact/test-utils";
import { afterEach, describe, expect, it, vi } from "vitest";
import { chartPoints, type SeriesDocument, SeriesChart } from "./SeriesChart";

const DOC: SeriesDocument = {
  name: "water",
  threshold: 0,
  unit: "km2",
  series: [
    { item_id: "a", acquired: "2024-06-11T10:30:00Z", area_km2: 1, valid_km2: 9 },
    { item_id: "b", acquired: "2024-06-21T10:30:00Z", area_km2: 2, valid_km2: 9 },
    { item_id: "c", acquired: "2024-07-01T10:30:00Z", area_km2: 4, valid_km2: 9 },
  ],
};

afterEach(() => vi.unstubAllGlobals());

describe("chartPoints", () => {
  it("spaces points by time and scales areas to the largest", () => {
    const [a, b, c] = chartPoints(DOC.series);
    expect(b.x - a.x).toBeCloseTo(c.x - b.x, 6); // 10 days apart each
    expect(a.y).toBeGreaterThan(b.y);
    expect(b.y).toBeGreaterThan(c.y);
    expect(c.y).toBe(12); // the largest area reaches the top of the plot
  });
});

describe("SeriesChart", () => {
  it("draws one point per scene from the JSON output", async () => {
    vi.stubGlobal("fetch", () => Promise.resolve(new Response(JSON.stringify(DOC))));
    const root = document.createElement("div");
    await act(async () => {
      render(<SeriesChart url="/files/x/water.json" />, root);
    });
    await act(async () => {
      await new Promise((r) => setTimeout(r, 0));
    });
    const points = root.querySelectorAll("[data-testid=series-point]");
    expect([...points].map((p) => p.getAttribute("data-area"))).toEqual(["1", "2", "4"]);
    render(null, root);
  });
});

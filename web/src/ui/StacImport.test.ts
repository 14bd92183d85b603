// @vitest-environment happy-dom
// The STAC import form's request: one source in the oneof, search fields only for a search, and the mode.
import { create, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ImportStacDatasetsRequestSchema, StacImportMode } from "../../../gen/ts/constellation/core/v1/core_pb";
import { importRequest } from "./StacImport";

const blank = { source: "item", location: "", collections: "", bbox: "", datetime: "", maxCloud: "", filter: "", maxItems: "", mode: "", name: "", bands: "", tags: "" };

describe("importRequest", () => {
  it("sends an item URI with the chosen bands", () => {
    const request = create(ImportStacDatasetsRequestSchema, importRequest({ ...blank, location: " file:///data/item.json ", bands: "green, nir08" }));
    expect(request.source).toEqual({ case: "itemUri", value: "file:///data/item.json" });
    expect(request.bands).toEqual(["green", "nir08"]);
    expect(request.mode).toBe(StacImportMode.UNSPECIFIED);
  });

  it("sends a search with its limits, and one dataset for all items", () => {
    const form = { ...blank, source: "search", location: "http://stac.local", collections: "s2, l8", bbox: "-35,-8.1,-34.8,-7.9", datetime: "2024-06-01/2024-06-30", maxCloud: "10", mode: "one" };
    const request = create(ImportStacDatasetsRequestSchema, importRequest(form));
    expect(request.mode).toBe(StacImportMode.ONE_DATASET);
    expect(request.source.case).toBe("search");
    if (request.source.case !== "search") throw new Error("not a search");
    expect(request.source.value.collections).toEqual(["s2", "l8"]);
    expect(request.source.value.bbox).toEqual([-35, -8.1, -34.8, -7.9]);
    expect(request.source.value.maxCloudCover).toBe(10);
    expect(toBinary(ImportStacDatasetsRequestSchema, request).length).toBeGreaterThan(0);
  });

  it("leaves the cloud limit unset when the field is empty", () => {
    const request = create(ImportStacDatasetsRequestSchema, importRequest({ ...blank, source: "search", location: "http://stac.local" }));
    if (request.source.case !== "search") throw new Error("not a search");
    expect(request.source.value.maxCloudCover).toBeUndefined();
  });
});

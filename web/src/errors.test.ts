import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { describe, expect, it } from "vitest";
import { decodeBadRequest, describeError, violationFor } from "./errors";

function badRequest(...violations: [string, string][]): Uint8Array {
  const writer = new BinaryWriter();
  for (const [field, description] of violations) writer.tag(1, 2).fork().tag(1, 2).string(field).tag(2, 2).string(description).join();
  return writer.finish();
}

describe("service errors", () => {
  it("decodes google.rpc.BadRequest field violations", () => {
    expect(decodeBadRequest(badRequest(["dataset.uri", "must be file:// or s3://"], ["dataset.name", "is required"]))).toEqual([
      { field: "dataset.uri", description: "must be file:// or s3://" },
      { field: "dataset.name", description: "is required" },
    ]);
  });

  it("describes a ConnectError with its code, raw message, violations and request id", () => {
    const requestInfo = new BinaryWriter().tag(1, 2).string("req-42").finish();
    const error = new ConnectError("dataset.uri is invalid", Code.InvalidArgument);
    // As the transport adds them from grpc-status-details-bin: type name + bytes.
    error.details.push(
      { type: "google.rpc.BadRequest", value: badRequest(["dataset.uri", "must be file:// or s3://"]) },
      { type: "google.rpc.RequestInfo", value: requestInfo },
    );
    const described = describeError(error);
    expect(described).toEqual({ code: "INVALID_ARGUMENT", message: "dataset.uri is invalid", violations: [{ field: "dataset.uri", description: "must be file:// or s3://" }], requestId: "req-42" });
    expect(violationFor(described, "dataset.uri")?.description).toMatch(/s3/);
    expect(violationFor(described, "dataset.name")).toBeUndefined();
  });

  it("describes anything else thrown without losing its message", () => {
    expect(describeError(new Error("boom"))).toMatchObject({ code: "CLIENT", message: "boom" });
  });
});

// Service errors as people should read them: the gRPC status, its message, and each field
// named by a google.rpc.BadRequest detail (carried in grpc-status-details-bin), plus the
// request id from google.rpc.RequestInfo that the server's logs use.
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

export interface FieldViolation {
  field: string;
  description: string;
}

export interface ServiceError {
  code: string;
  message: string;
  violations: FieldViolation[];
  requestId: string;
}

/** Length-delimited string fields of a message by number (enough for BadRequest and RequestInfo). */
function stringFields(bytes: Uint8Array): Map<number, string[]> {
  const fields = new Map<number, string[]>();
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    if (wireType !== WireType.LengthDelimited) {
      reader.skip(wireType);
      continue;
    }
    const value = reader.bytes();
    fields.set(number, [...(fields.get(number) ?? []), new TextDecoder().decode(value)]);
  }
  return fields;
}

/** google.rpc.BadRequest: repeated FieldViolation field_violations = 1 {string field = 1; string description = 2}. */
export function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    if (number !== 1 || wireType !== WireType.LengthDelimited) {
      reader.skip(wireType);
      continue;
    }
    const fields = stringFields(reader.bytes());
    violations.push({ field: fields.get(1)?.[0] ?? "", description: fields.get(2)?.[0] ?? "" });
  }
  return violations;
}

function codeName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export function describeError(error: unknown): ServiceError {
  if (error instanceof ConnectError) {
    const described: ServiceError = { code: codeName(error.code), message: error.rawMessage || "(no message)", violations: [], requestId: "" };
    for (const detail of error.details) {
      if (!("value" in detail) || !(detail.value instanceof Uint8Array)) continue;
      const type = "type" in detail ? detail.type : "";
      if (type === "google.rpc.BadRequest") described.violations.push(...decodeBadRequest(detail.value));
      if (type === "google.rpc.RequestInfo") described.requestId = stringFields(detail.value).get(1)?.[0] ?? "";
    }
    if (error.code === Code.Unavailable && /fetch|network/i.test(described.message)) {
      described.message = `the gateway did not answer (${described.message})`;
    }
    return described;
  }
  return { code: "CLIENT", message: error instanceof Error ? error.message : String(error), violations: [], requestId: "" };
}

/** The violation that names `field` (exactly or as a parent path), for showing beside a form input. */
export function violationFor(error: ServiceError | null, field: string): FieldViolation | undefined {
  return error?.violations.find((v) => v.field === field || v.field.startsWith(`${field}.`) || v.field.startsWith(`${field}[`));
}

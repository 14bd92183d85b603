// One gRPC-web transport to the gateway that served this page, and a client per service.
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentService } from "../../gen/ts/constellation/agent/v1/agent_pb";
import { CoreService } from "../../gen/ts/constellation/core/v1/core_pb";
import { HostingService } from "../../gen/ts/constellation/hosting/v1/hosting_pb";

const transport = createGrpcWebTransport({ baseUrl: window.location.origin, useBinaryFormat: true });

export const core = createClient(CoreService, transport);
export const hosting = createClient(HostingService, transport);
export const agent = createClient(AgentService, transport);

export interface ConsoleConfig {
  // file:// prefix of run outputs that the gateway serves under /files/.
  outputsUri: string;
}

export async function loadConsoleConfig(): Promise<ConsoleConfig> {
  try {
    const response = await fetch("/console.json", { cache: "no-store" });
    const body = (await response.json()) as { outputs_uri?: string };
    return { outputsUri: body.outputs_uri ?? "" };
  } catch {
    return { outputsUri: "" };
  }
}

/** The /files/ URL of a file:// output under the served outputs folder, or undefined. */
export function outputUrl(uri: string, config: ConsoleConfig): string | undefined {
  const root = config.outputsUri.replace(/\/+$/, "");
  if (!root || !uri.startsWith(`${root}/`)) return undefined;
  const relative = uri.slice(root.length + 1);
  if (relative.split("/").some((part) => part === ".." || part === "")) return undefined;
  return `/files/${relative}`;
}

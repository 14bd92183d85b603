// One gRPC-web transport to the gateway that served this page, and a client per service.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentService } from "../../gen/ts/constellation/agent/v1/agent_pb";
import { CoreService } from "../../gen/ts/constellation/core/v1/core_pb";
import { HostingService } from "../../gen/ts/constellation/hosting/v1/hosting_pb";

const KEY_STORAGE = "constellation.apiKey";
const KEY_COOKIE = "constellation_api_key"; // gateway/console.py reads it for /files/

export function apiKey(): string {
  return sessionStorage.getItem(KEY_STORAGE) ?? "";
}

/** Remembers the key for this tab: sent as x-api-key on every call, and as a cookie for /files/ (images and links). */
export function setApiKey(key: string): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  const expiry = key ? "" : "; max-age=0";
  document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=/files; SameSite=Strict${expiry}`;
}

const withApiKey: Interceptor = (next) => (request) => {
  const key = apiKey();
  if (key) request.header.set("x-api-key", key);
  return next(request);
};

const transport = createGrpcWebTransport({ baseUrl: window.location.origin, useBinaryFormat: true, interceptors: [withApiKey] });

export const core = createClient(CoreService, transport);
export const hosting = createClient(HostingService, transport);
export const agent = createClient(AgentService, transport);

export interface ConsoleConfig {
  // file:// prefix of run outputs that the gateway serves under /files/.
  outputsUri: string;
  // The mesh wants an API key.
  auth: boolean;
}

export async function loadConsoleConfig(): Promise<ConsoleConfig> {
  try {
    const response = await fetch("/console.json", { cache: "no-store" });
    const body = (await response.json()) as { outputs_uri?: string; auth?: boolean };
    return { outputsUri: body.outputs_uri ?? "", auth: Boolean(body.auth) };
  } catch {
    return { outputsUri: "", auth: false };
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

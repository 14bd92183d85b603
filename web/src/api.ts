// One gRPC-web transport to the gateway that served this page, and a client per service.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentService } from "../../gen/ts/constellation/agent/v1/agent_pb";
import { CoreService } from "../../gen/ts/constellation/core/v1/core_pb";
import { HostingService } from "../../gen/ts/constellation/hosting/v1/hosting_pb";

const KEY_STORAGE = "constellation.apiKey";
const KEY_COOKIE = "constellation_api_key"; // gateway/console.py reads it for /files/, gateway/tiles.py for /tiles/

export function apiKey(): string {
  return sessionStorage.getItem(KEY_STORAGE) ?? "";
}

/** Remembers the key for this tab: sent as x-api-key on every call, and as a cookie for /files/ and /tiles/ (images, links, map tiles). */
export function setApiKey(key: string): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  const expiry = key ? "" : "; max-age=0";
  for (const path of ["/files", "/tiles"]) {
    document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=${path}; SameSite=Strict${expiry}`;
  }
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
  // Authentication is turned off (CONSTELLATION_AUTH=off): anyone who reaches the gateway may do anything.
  authOff: boolean;
}

export async function loadConsoleConfig(): Promise<ConsoleConfig> {
  try {
    const response = await fetch("/console.json", { cache: "no-store" });
    const body = (await response.json()) as { outputs_uri?: string; auth?: boolean; auth_off?: boolean };
    return { outputsUri: body.outputs_uri ?? "", auth: Boolean(body.auth), authOff: Boolean(body.auth_off) };
  } catch {
    return { outputsUri: "", auth: false, authOff: false };
  }
}

/**
 * A login link (`/?login=<one-time token>`, from `constellation up` or `constellation login-link`): the token
 * leaves the address bar at once (history.replaceState), is exchanged at POST /login for the mesh's API key, and
 * the key is kept as a typed one would be. Returns why the link did not work, or null (no link, or it worked).
 */
export async function loginFromLink(): Promise<string | null> {
  const params = new URLSearchParams(location.search);
  const token = params.get("login");
  if (token === null) return null;
  params.delete("login");
  const query = params.toString();
  history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  try {
    const response = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
      cache: "no-store",
    });
    const body = (await response.json().catch(() => ({}))) as { api_key?: string; error?: string };
    if (!response.ok || typeof body.api_key !== "string") {
      return body.error ?? `the login link did not work (HTTP ${response.status})`;
    }
    setApiKey(body.api_key);
    return null;
  } catch (error) {
    return `the login link did not work: ${String(error)}`;
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

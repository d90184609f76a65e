// What the browser tests share: where the server binary and Chromium are, a free port, waiting
// for the server to be healthy, and the checks with their tally.
//
// Environment (not SCIM_BRIDGE_*: the server reads those as configuration): SERVER_BIN
// (default: $CARGO_TARGET_DIR or target, /debug/scim-bridge), CHROMIUM (default
// /usr/bin/chromium).

import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const targetDir = process.env.CARGO_TARGET_DIR || join(root, "target");
export const bin = process.env.SERVER_BIN || join(targetDir, "debug", "scim-bridge");
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

/// Exit at once when there is no server binary to test.
export function requireServerBinary() {
  if (!existsSync(bin)) {
    console.error(`FAILED - no server binary at ${bin}: run cargo build first, or set SERVER_BIN`);
    process.exit(1);
  }
}

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

export async function waitForHealth(base, server) {
  for (let i = 0; i < 100; i++) {
    if (server.exitCode !== null) throw new Error(`the server exited with ${server.exitCode}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the server did not become healthy within 10 s");
}

const checks = [];

export function check(name, ok, detail = "") {
  checks.push({ name, ok });
  console.log(`${ok ? "ok" : "FAILED"} - ${name}${detail ? `: ${detail}` : ""}`);
}

/// Print the tally and exit: 0 only when there were checks, all passed, and nothing failed.
export function finish(what, failed) {
  const bad = checks.filter((c) => !c.ok).length;
  console.log(`${what} checks: ${checks.length - bad} of ${checks.length} passed`);
  process.exit(failed || bad > 0 || checks.length === 0 ? 1 : 0);
}

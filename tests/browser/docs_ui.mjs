// Browser test of the OpenAPI UI: start the built server on a temporary database, open /docs
// in headless Chromium, check that the UI rendered the admin and SCIM operations, authorise
// with an admin token through the UI, call GET /admin/v1/tenants from it, and save a
// screenshot.
//
//   node tests/browser/docs_ui.mjs
//
// Environment (not SCIM_BRIDGE_*: the server reads those as configuration): SERVER_BIN (default: $CARGO_TARGET_DIR or target, /debug/scim-bridge),
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT (default target/browser/docs-ui.png).
// Exit code 0 only when every check passed.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const targetDir = process.env.CARGO_TARGET_DIR || join(root, "target");
const bin = process.env.SERVER_BIN || join(targetDir, "debug", "scim-bridge");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshot = resolve(process.env.SCREENSHOT || join(targetDir, "browser", "docs-ui.png"));
const adminToken = `browser-test-operator-${process.pid}-${Date.now()}`;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function waitForHealth(base, server) {
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
function check(name, ok, detail = "") {
  checks.push({ name, ok });
  console.log(`${ok ? "ok" : "FAILED"} - ${name}${detail ? `: ${detail}` : ""}`);
}

if (!existsSync(bin)) {
  console.error(`FAILED - no server binary at ${bin}: run cargo build first, or set SERVER_BIN`);
  process.exit(1);
}

const work = mkdtempSync(join(tmpdir(), "scim-bridge-browser-"));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
writeFileSync(
  join(work, "scim-bridge.toml"),
  `[server]
listen = "127.0.0.1:${port}"
[staging]
database = "sqlite://staging.db"
durability = "normal"
[tenants.demo]
token = "browser-test-scim-token-${process.pid}"
[admin.tokens.browser]
token = "${adminToken}"
role = "operator"
`,
);
const server = spawn(bin, ["serve", "--config", join(work, "scim-bridge.toml")], {
  stdio: ["ignore", "ignore", "inherit"],
});
let browser;
let failed = false;
try {
  await waitForHealth(base, server);
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
  const external = [];
  page.on("request", (req) => {
    if (!req.url().startsWith(base) && !req.url().startsWith("data:")) external.push(req.url());
  });
  await page.goto(`${base}/docs`, { waitUntil: "load" });
  await page.waitForSelector(".opblock", { timeout: 20000 });

  const paths = await page.$$eval(".opblock-summary-path", (els) =>
    els.map((e) => e.getAttribute("data-path") || e.textContent.trim()),
  );
  for (const p of [
    "/admin/v1/tenants",
    "/admin/v1/tenants/{tenant}",
    "/admin/v1/tenants/{tenant}/users",
    "/admin/v1/tenants/{tenant}/requests",
    "/scim-api/v1/{tenant}/scim/Users",
  ]) {
    check(`the UI lists ${p}`, paths.some((x) => x.replace(/\u200b/g, "") === p));
  }
  const tags = await page.$$eval(".opblock-tag", (els) => els.map((e) => e.textContent.trim()));
  check("the UI shows the admin tags", ["Tenants", "Staging", "ProvisioningLog"].every((t) => tags.some((x) => x.startsWith(t))), tags.join(", "));

  // Authorise with the admin token through the UI and call GET /admin/v1/tenants.
  await page.click("button.authorize");
  const form = page.locator(".auth-container", { hasText: "AdminAuth" });
  await form.locator("input").fill(adminToken);
  await form.locator("button.authorize").click();
  await page.click("button.btn-done");
  const op = page.locator("#operations-Tenants-adminListTenants");
  await op.locator(".opblock-summary").click();
  await op.locator("button.try-out__btn").click();
  await op.locator("button.execute").click();
  const status = op.locator(".live-responses-table tbody .response-col_status").first();
  await status.waitFor({ timeout: 10000 });
  const code = (await status.textContent()).trim();
  check("GET /admin/v1/tenants from the UI with the admin token answers 200", code.startsWith("200"), code);
  const body = await op.locator(".live-responses-table .microlight").first().textContent();
  check("the answer lists the tenant", body.includes('"name": "demo"'), body.slice(0, 120));
  check("the UI loaded nothing from outside the server", external.length === 0, external.join(" "));

  mkdirSync(dirname(screenshot), { recursive: true });
  await op.scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(`screenshot: ${screenshot}`);
} catch (e) {
  failed = true;
  console.error(`FAILED - ${e.stack || e}`);
} finally {
  if (browser) await browser.close();
  server.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}
const bad = checks.filter((c) => !c.ok).length;
console.log(`docs UI checks: ${checks.length - bad} of ${checks.length} passed`);
process.exit(failed || bad > 0 || checks.length === 0 ? 1 : 0);

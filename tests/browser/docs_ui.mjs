// Browser test of the OpenAPI UI: start the built server on a temporary database with a
// syncing tenant, stage a user the demo mapping cannot sync (no externalId) and run the sync,
// open /docs in headless Chromium, check that the UI lists the admin sections first and the
// SCIM operations after them, authorise once with an admin token, reload (the authorisation
// is remembered), and reach the failing user's reason in three actions or fewer: expand
// GET /admin/v1/failing, execute, read the answer. Saves a screenshot of that answer.
//
//   node tests/browser/docs_ui.mjs
//
// Environment (not SCIM_BRIDGE_*: the server reads those as configuration): SERVER_BIN (default: $CARGO_TARGET_DIR or target, /debug/scim-bridge),
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT (default target/browser/docs-ui.png).
// Exit code 0 only when every check passed.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { chromium } from "playwright-core";
import {
  bin,
  check,
  chromiumPath,
  finish,
  freePort,
  requireServerBinary,
  root,
  targetDir,
  waitForHealth,
} from "./harness.mjs";

const screenshot = resolve(process.env.SCREENSHOT || join(targetDir, "browser", "docs-ui.png"));
const adminToken = `browser-test-operator-${process.pid}-${Date.now()}`;
const scimToken = `browser-test-scim-token-${process.pid}-${Date.now()}`;

requireServerBinary();

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
token = "${scimToken}"
[applications.primedocs]
database = "sqlite://app.db"
schema = "${join(root, "sql/app/example_app.sql")}"
[tenants.demo.sync]
mapping = "${join(root, "mappings/primedocs.toml")}"
schedule = "0 0 0 1 1 *"
[admin.tokens.browser]
token = "${adminToken}"
role = "operator"
`,
);
const server = spawn(bin, ["serve", "--config", join(work, "scim-bridge.toml")], {
  cwd: work,
  stdio: ["ignore", "ignore", "inherit"],
});

// A user the demo mapping keys on externalId for, staged without one, and a run that fails it.
async function stageAFailingUser() {
  const created = await fetch(`${base}/scim-api/v1/demo/scim/Users`, {
    method: "POST",
    headers: { authorization: `Bearer ${scimToken}`, "content-type": "application/scim+json" },
    body: JSON.stringify({
      schemas: ["urn:ietf:params:scim:schemas:core:2.0:User"],
      userName: "no.key@example.com",
      active: true,
    }),
  });
  if (created.status !== 201) throw new Error(`staging the user answered ${created.status}`);
  const admin = { authorization: `Bearer ${adminToken}`, "content-type": "application/json" };
  const started = await fetch(`${base}/admin/v1/tenants/demo/runs`, {
    method: "POST",
    headers: admin,
    body: "{}",
  });
  if (started.status !== 202) throw new Error(`starting a run answered ${started.status}`);
  const { runId: id } = await started.json();
  for (let i = 0; i < 100; i++) {
    const run = await (await fetch(`${base}/admin/v1/runs/${id}`, { headers: admin })).json();
    if (run.status !== "running") return run;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the run did not finish within 10 s");
}
let browser;
let failed = false;
try {
  await waitForHealth(base, server);
  const run = await stageAFailingUser();
  check("the run failed the user without a key", run.counts?.failed === 1, JSON.stringify(run.counts));
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
    "/admin/v1/runs",
    "/admin/v1/runs/{id}/items",
    "/admin/v1/tenants/{tenant}/mapping/preview",
    "/admin/v1/tenants/{tenant}/offboardings",
    "/scim-api/v1/{tenant}/scim/Users",
  ]) {
    check(`the UI lists ${p}`, paths.some((x) => x.replace(/\u200b/g, "") === p));
  }
  const tags = await page.$$eval(".opblock-tag", (els) => els.map((e) => e.textContent.trim()));
  const order = ["Users", "Sync runs", "Provisioning log", "Offboardings"].map((t) =>
    tags.findIndex((x) => x.startsWith(t)),
  );
  const scim = tags.findIndex((x) => x.startsWith("SCIM"));
  check(
    "the admin sections come first, in order, before the SCIM ones",
    order.every((i, k) => i >= 0 && (k === 0 || i > order[k - 1])) && scim > order[order.length - 1],
    tags.join(" | "),
  );

  // Authorise once with the admin token through the UI, then reload: it is remembered.
  await page.click("button.authorize");
  const form = page.locator(".auth-container", { hasText: "AdminAuth" });
  await form.locator("input").fill(adminToken);
  await form.locator("button.authorize").click();
  await page.click("button.btn-done");
  await page.reload({ waitUntil: "load" });
  await page.waitForSelector(".opblock", { timeout: 20000 });
  check(
    "after a reload the UI is still authorised",
    (await page.locator("button.authorize.locked").count()) > 0,
  );

  // Three actions at most: expand "what is failing now", execute, read.
  const op = page.locator("#operations-Users-adminListFailing");
  await op.locator(".opblock-summary").click(); // 1
  await op.locator("button.execute").click(); // 2
  const status = op.locator(".live-responses-table tbody .response-col_status").first();
  await status.waitFor({ timeout: 10000 });
  const code = (await status.textContent()).trim();
  check("GET /admin/v1/failing from the UI answers 200", code.startsWith("200"), code);
  const body = await op.locator(".live-responses-table .microlight").first().textContent(); // 3
  check("the answer names the failing user", body.includes("no.key@example.com"), body.slice(0, 200));
  check(
    "the answer gives the reason",
    body.includes("the key attribute `externalId` is empty"),
    body.slice(0, 400),
  );
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
finish("docs UI", failed);

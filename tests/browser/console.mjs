// Browser test of the admin console: start the built server on a temporary database with a
// syncing tenant, make a run with a failed item and a run the guard held, then in headless
// Chromium sign in, walk overview → runs → the run with the failed item → that user's story,
// approve the held run as an operator, check that a reader sees no actions and that no token
// reaches the server's log, run axe-core on every page (no serious or critical violations)
// and save a screenshot of each page.
//
//   node tests/browser/console.mjs
//
// Environment (not SCIM_BRIDGE_*: the server reads those as configuration): SERVER_BIN
// (default: $CARGO_TARGET_DIR or target, /debug/scim-bridge), CHROMIUM (default
// /usr/bin/chromium), SCREENSHOT_DIR (default target/browser); screenshots are
// console-<page>.png there. Exit code 0 only when every check passed.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
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

const axeSource = createRequire(import.meta.url)("axe-core").source;
const shots = resolve(process.env.SCREENSHOT_DIR || join(targetDir, "browser"));
const stamp = `${process.pid}-${Date.now()}`;
const operatorToken = `browser-console-operator-${stamp}`;
const readerToken = `browser-console-reader-${stamp}`;
const scimToken = `browser-console-scim-${stamp}`;

requireServerBinary();

const work = mkdtempSync(join(tmpdir(), "scim-bridge-console-"));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
writeFileSync(
  join(work, "scim-bridge.toml"),
  `[server]
listen = "127.0.0.1:${port}"
[staging]
database = "sqlite://staging.db"
durability = "normal"
[applications.scifeon]
database = "sqlite://app.db"
schema = "${join(root, "sql/app/example_app.sql")}"
[tenants.demo]
token = "${scimToken}"
[tenants.demo.sync]
mapping = "${join(root, "mappings/scifeon.toml")}"
retention_hours = 0
guard_min = 0
guard_share = 0.0
[admin.tokens.browser-operator]
token = "${operatorToken}"
role = "operator"
[admin.tokens.browser-reader]
token = "${readerToken}"
role = "reader"
`,
);

const USER = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
async function scim(method, path, body) {
  const r = await fetch(`${base}/scim-api/v1/demo/scim${path}`, {
    method,
    headers: { authorization: `Bearer ${scimToken}`, "content-type": "application/scim+json" },
    body: body && JSON.stringify(body),
  });
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.status === 204 ? null : r.json();
}
async function admin(method, path, body) {
  const r = await fetch(`${base}/admin/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${operatorToken}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}
async function runNow() {
  const { runId } = await admin("POST", "/tenants/demo/runs", {});
  for (let i = 0; i < 200; i++) {
    const run = await admin("GET", `/runs/${runId}`);
    if (run.status !== "running") return run;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`run ${runId} did not end`);
}
const user = (userName, given, extra = {}) => ({
  schemas: [USER, ENTERPRISE],
  userName,
  externalId: `ext-${userName}`,
  name: { givenName: given, familyName: "Example" },
  emails: [{ value: userName, type: "work", primary: true }],
  ...extra,
});

const server = spawn(bin, ["serve", "--config", join(work, "scim-bridge.toml")], {
  cwd: work,
  stdio: ["ignore", "pipe", "pipe"],
});
// Everything the server logs, to check that no token is in it.
let serverLog = "";
server.stdout.on("data", (d) => (serverLog += d));
server.stderr.on("data", (d) => (serverLog += d));
let browser;
let failed = false;
try {
  await waitForHealth(base, server);
  // A run with a failed item (an employeeNumber the mapping cannot write as an integer) …
  const ann = await scim("POST", "/Users", user("ann@example.com", "Ann"));
  await scim("POST", "/Users", user("bad@example.com", "Bad", { [ENTERPRISE]: { employeeNumber: "x" } }));
  await scim("POST", "/Users", user("bob@example.com", "Bob"));
  const first = await runNow();
  check("the first run has a failed item", first.counts.failed === 1, JSON.stringify(first.counts));
  // … and one the guard held (ann deactivated, no retention, nothing allowed by the guard).
  await scim("PATCH", `/Users/${ann.id}`, {
    schemas: ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
    Operations: [{ op: "replace", path: "active", value: false }],
  });
  let held;
  for (let i = 0; i < 3 && !held; i++) {
    const run = await runNow();
    if (run.status === "awaiting_approval") held = run;
  }
  check("a run awaits approval", !!held);

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  mkdirSync(shots, { recursive: true });
  const external = [];
  const serious = [];
  async function newPage() {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on("request", (req) => {
      if (!req.url().startsWith(base)) external.push(req.url());
    });
    page.on("pageerror", (e) => check("no script error", false, String(e)));
    return page;
  }
  // Accessibility check and screenshot of the page shown.
  async function inspect(page, name) {
    await page.evaluate(axeSource);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    for (const v of bad) serious.push(`${name}: ${v.id} (${v.impact}) ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`);
    check(`${name}: no serious accessibility violations`, bad.length === 0, bad.map((v) => v.id).join(", "));
    await page.screenshot({ path: join(shots, `console-${name}.png`), fullPage: true });
  }
  async function signIn(page, token) {
    await page.goto(`${base}/console`, { waitUntil: "load" });
    check("signed out, the console asks to sign in", page.url().endsWith("/console/sign-in"), page.url());
    await page.getByLabel("Admin token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(`${base}/console`);
  }

  const ops = await newPage();
  await ops.goto(`${base}/console/sign-in`);
  await inspect(ops, "sign-in");
  await signIn(ops, operatorToken);
  check("the token is not in the page", !(await ops.content()).includes(operatorToken));
  check("times show in the browser's time zone, UTC on hover",
    (await ops.locator("time[datetime]").first().getAttribute("title")).endsWith("UTC"));
  await inspect(ops, "overview");

  // overview → runs → the run with the failed item → that user's story
  await ops.getByRole("link", { name: "Runs", exact: true }).click();
  await ops.waitForURL(/\/console\/runs$/);
  await inspect(ops, "runs");
  await ops.getByRole("link", { name: `run ${first.id}`, exact: true }).click();
  await ops.waitForURL(new RegExp(`/console/runs/${first.id}$`));
  await ops.getByLabel("Outcome").selectOption("failed");
  await ops.getByRole("button", { name: "Apply" }).click();
  await ops.waitForURL(/outcome=failed/);
  const failedRow = ops.locator("table tbody tr", { hasText: "bad@example.com" });
  check("the run lists the failed item with its reason", (await failedRow.textContent()).includes("not an integer"));
  await inspect(ops, "run");
  await failedRow.getByRole("link", { name: "bad@example.com" }).click();
  await ops.waitForURL(/\/console\/user\?/);
  const headline = await ops.locator(".headline").textContent();
  check("the story says why the user fails", headline.includes("Failing since"), headline);
  await inspect(ops, "user");

  for (const [name, path] of [
    ["failing", "/failing"],
    ["offboardings", "/offboardings"],
    ["log", "/log"],
    ["mapping", "/mapping?tenant=demo&by=userName&q=bob%40example.com"],
  ]) {
    await ops.goto(`${base}/console${path}`, { waitUntil: "load" });
    await inspect(ops, name);
  }

  // Approve the held run as the operator: asked first, then a new run approves it.
  await ops.goto(`${base}/console/runs/${held.id}`, { waitUntil: "load" });
  await ops.getByRole("button", { name: `Approve run ${held.id}…` }).click();
  await ops.waitForURL(/\/console\/actions\/approve$/);
  await inspect(ops, "confirm");
  await ops.getByRole("button", { name: "Yes, do it" }).click();
  await ops.waitForURL(/\/console\/runs\/\d+$/);
  const approving = Number(ops.url().split("/").pop());
  let approval;
  for (let i = 0; i < 100; i++) {
    approval = await admin("GET", `/runs/${approving}`);
    if (approval.status !== "running") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  check("the approval ran as a new run", approval.approval?.approvesRun === held.id, JSON.stringify(approval.approval));
  const original = await admin("GET", `/runs/${held.id}`);
  check("the held run is approved", !!original.approval?.approvedAt, JSON.stringify(original.approval));

  // A reader sees no action controls.
  const reader = await newPage();
  await signIn(reader, readerToken);
  for (const path of ["", `/runs/${first.id}`, "/failing", "/user?tenant=demo&by=userName&q=bad%40example.com"]) {
    await reader.goto(`${base}/console${path}`, { waitUntil: "load" });
    const actions = await reader.locator('form[action*="/console/actions/"]').count();
    check(`a reader sees no actions on /console${path}`, actions === 0, `${actions} forms`);
  }
  await inspect(reader, "reader-overview");
  await reader.getByRole("button", { name: "Sign out" }).click();
  await reader.waitForURL(/\/console\/sign-in$/);
  check("sign-out ends the session", reader.url().endsWith("/console/sign-in"));

  check("the console loaded nothing from outside the server", external.length === 0, external.join(" "));
  check("the server logged sign-ins", serverLog.includes("console sign-in"), `${serverLog.length} bytes of log`);
  check(
    "no token is in the server's log",
    ![operatorToken, readerToken].some((t) => serverLog.includes(t)),
  );
  if (serious.length) console.log(serious.join("\n"));
  console.log(`screenshots: ${shots}/console-*.png`);
} catch (e) {
  failed = true;
  console.error(`FAILED - ${e.stack || e}`);
} finally {
  if (browser) await browser.close();
  server.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}
finish("console", failed);

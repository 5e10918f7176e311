// The browser example (examples/browser/index.html) in headless Chromium,
// exactly as README.md tells a reader to open it: a single node on loopback,
// the page served by `python3 -m http.server --bind 127.0.0.1` and opened
// at http://localhost:<port>, a loopback origin.
//
// Bob and alice each use the page in their own browser context: bob logs
// in, alice signs up, creates a room, invites bob and posts; the script
// posts too, over REST. Passes when both pages show the live events, no page logged a
// console error or threw, and a preflight from the page's origin succeeds.
//
// Usage (from the repository root, after `cargo test --workspace` or
// `cargo build -p parley`): node .ci/browser/test.mjs
// Environment: PARLEY_BIN (default target/debug/parley), CHROMIUM
// (default /usr/bin/chromium; no browser is ever downloaded).

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const parleyBin = process.env.PARLEY_BIN || join(root, "target/debug/parley");
const chromiumBin = process.env.CHROMIUM || "/usr/bin/chromium";
// The whole run, start-up included; a healthy run takes a few seconds.
const DEADLINE_MS = 120_000;
// One step (a click's visible effect, a process's first line).
const STEP_MS = 20_000;

const children = [];
// Console errors, uncaught exceptions and failed requests of the pages.
const problems = [];
const dataDir = mkdtempSync(join(tmpdir(), "parley-browser-"));
let browser;

function cleanup() {
  for (const child of children) if (child.exitCode === null) child.kill("SIGTERM");
  rmSync(dataDir, { recursive: true, force: true });
}

const deadline = setTimeout(() => {
  console.error(`browser test: not finished within ${DEADLINE_MS / 1000} s`);
  cleanup();
  process.exit(1);
}, DEADLINE_MS);

/// Starts a process and resolves with the first stdout line matching `pattern`.
/// Its stderr is shown unless `quiet` (the static server logs every request there).
function start(what, command, args, env, pattern, quiet = false) {
  const stdio = ["ignore", "pipe", quiet ? "ignore" : "inherit"];
  const child = spawn(command, args, { cwd: root, env: { ...process.env, ...env }, stdio });
  children.push(child);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no ${pattern} within ${STEP_MS / 1000} s`)), STEP_MS);
    child.on("exit", (code) => reject(new Error(`${what} exited (${code}) before it was ready`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = line.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m);
      }
    });
  });
}

/// A raw HTTP request (Node's fetch would refuse to set `Origin` itself).
function raw(method, url, headers, body) {
  return new Promise((resolvePromise, reject) => {
    const req = request(url, { method, headers }, (res) => {
      let text = "";
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () => resolvePromise({ status: res.statusCode, headers: res.headers, text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  const [, api] = await start("parley", parleyBin, [], { PARLEY_LISTEN: "127.0.0.1:0", PARLEY_DATA_DIR: dataDir, PARLEY_LOG: "warn" },
    /REST api:\s+(http:\/\/\S+)\/v1/);
  const [, port] = await start("http.server", "python3",
    ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", "examples/browser"], {},
    /Serving HTTP on \S+ port (\d+)/, true);
  const pageUrl = `http://localhost:${port}/?server=${encodeURIComponent(api)}`;
  console.log(`browser test: node ${api}, page ${pageUrl}`);

  browser = await chromium.launch({ executablePath: chromiumBin, headless: true, args: ["--no-sandbox"] });
  async function open(name) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on("console", (m) => { if (m.type() === "error") problems.push(`${name} console: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`${name} page error: ${e.message}`));
    page.on("requestfailed", (r) => problems.push(`${name} request failed: ${r.url()} ${r.failure()?.errorText}`));
    await page.goto(pageUrl);
    return page;
  }
  const logShows = (page, text) => page.locator("#log").getByText(text, { exact: false }).first().waitFor();
  async function signUp(page, name) {
    await page.fill("#username", name);
    await page.fill("#email", `${name}@example.com`);
    await page.fill("#password", `${name}-correct-horse`);
    await page.click("#signup");
    await page.locator("#status", { hasText: `connected as ${name}` }).waitFor();
  }

  // Bob has an account already and logs in (Enter in the form); alice
  // signs up on the page.
  const signup = await fetch(`${api}/v1/auth/signup`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "bob", email: "bob@example.com", password: "bob-correct-horse" }),
  });
  check(signup.status === 201, `signup over REST: ${signup.status}`);
  const bob = await open("bob");
  const alice = await open("alice");
  await bob.fill("#username", "bob");
  await bob.fill("#password", "bob-correct-horse");
  await bob.press("#password", "Enter");
  await bob.locator("#status", { hasText: "connected as bob" }).waitFor();
  await signUp(alice, "alice");

  await alice.fill("#room-name", "general");
  await alice.click("#create-room");
  await logShows(alice, "joined #general");
  await alice.fill("#invite-user", "bob");
  await alice.click("#invite");
  await logShows(alice, "invited bob");
  // Bob's page joins rooms it is added to as the news arrives.
  await logShows(bob, "joined #general");
  await logShows(alice, "alice added bob");

  await alice.fill("#message", "hello from the browser");
  await alice.press("#message", "Enter");
  await logShows(bob, "alice: hello from the browser");
  await logShows(alice, "alice: hello from the browser");

  // Someone else's post, over REST, arrives live in both pages.
  const login = await fetch(`${api}/v1/auth/login`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ login: "bob", password: "bob-correct-horse" }),
  });
  check(login.ok, `login over REST: ${login.status}`);
  const token = (await login.json()).access_token;
  const roomId = await alice.inputValue("#room");
  const posted = await fetch(`${api}/v1/rooms/${roomId}/messages`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ body: "hello from REST" }),
  });
  check(posted.status === 201, `post over REST: ${posted.status}`);
  await logShows(alice, "bob: hello from REST");
  await logShows(bob, "bob: hello from REST");

  // The page can read the request id of its calls (exposed by CORS).
  const requestId = await alice.evaluate(async (server) => {
    const response = await fetch(`${server}/v1/users/me`, { headers: { authorization: `Bearer ${session.token}` } });
    return response.headers.get("x-request-id");
  }, api);
  check(requestId, "x-request-id is not readable from the page");

  // A preflight from the page's origin, as Chromium sent before each post.
  const origin = await alice.evaluate(() => location.origin);
  const preflight = await raw("OPTIONS", `${api}/v1/rooms`, {
    origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type",
  });
  check(preflight.status >= 200 && preflight.status < 300, `preflight from ${origin}: ${preflight.status}`);
  check(preflight.headers["access-control-allow-origin"] === origin, `preflight allow-origin: ${preflight.headers["access-control-allow-origin"]}`);
  const allowed = (preflight.headers["access-control-allow-headers"] || "").toLowerCase();
  check(allowed.includes("authorization") && allowed.includes("content-type"), `preflight allow-headers: ${allowed}`);

  check(problems.length === 0, `the pages reported problems:\n  ${problems.join("\n  ")}`);
  console.log("browser test: passed (two pages, live events, no console errors, preflight ok)");
}

let failed = false;
try {
  await main();
} catch (error) {
  failed = true;
  console.error(`browser test failed: ${error.stack || error}`);
  if (problems.length) console.error(`what the pages reported:\n  ${problems.join("\n  ")}`);
} finally {
  clearTimeout(deadline);
  if (browser) await browser.close().catch(() => {});
  cleanup();
}
process.exit(failed ? 1 : 0);

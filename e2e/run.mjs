// End-to-end runner: serves the test page from its own loopback port, opens it in headless
// Chromium through playwright-core, lets page/scenario.js drive the real OpenReplay tracker against
// the node, and writes every request the page made to the ingest (URL, headers, body as sent and
// gzip-decoded, answer) to a JSON file for the Rust test (tests/e2e_browser.rs) to check against
// what the node stored.
//
//   node e2e/run.mjs --node http://127.0.0.1:PORT --key PROJECT_KEY --out requests.json
//        [--rounds 4] [--pause 300] [--linger 500] [--same-origin] [--timeout 60000]
//        [--chromium /usr/bin/chromium]
//
// By default the page's origin differs from the node's, so the browser does real CORS (a preflight
// before every batch). With --same-origin the page server also passes /ingest/* through to the
// node, as a site that proxies the ingest under its own domain does: no preflights.
//
// Exits 0 once the page has navigated away and the ingest's answers have settled; 1 with a
// message on stderr otherwise. Every browser and server it starts is stopped before it exits.

import { createServer, request as httpRequest } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { gunzipSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));

const { values: opts } = parseArgs({
  options: {
    node: { type: 'string' },
    key: { type: 'string' },
    out: { type: 'string' },
    rounds: { type: 'string', default: '4' },
    pause: { type: 'string', default: '300' },
    linger: { type: 'string', default: '500' },
    'same-origin': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '60000' },
    settle: { type: 'string', default: '3000' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});

function fail(message) {
  console.error(`e2e runner: ${message}`);
  process.exit(1);
}

if (!opts.node || !opts.key || !opts.out) fail('--node, --key and --out are required');
if (!existsSync(opts.chromium)) {
  fail(`no Chromium at ${opts.chromium}: install it with \`apt-get install -y chromium\` (or set CHROMIUM)`);
}
const trackerEntry = join(here, 'node_modules/@openreplay/tracker/dist/lib/entry.js');
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  fail(`playwright-core is not installed: run \`npm ci\` in ${here} (${e.message})`);
}
if (!existsSync(trackerEntry)) fail(`@openreplay/tracker is not installed: run \`npm ci\` in ${here}`);

const node = new URL(opts.node);

// Only these files are served; the tracker is the npm package's ES module, as-is.
const files = new Map([
  ['/tracker/entry.js', [trackerEntry, 'text/javascript']],
  ['/page/index.html', [join(here, 'page/index.html'), 'text/html']],
  ['/page/bye.html', [join(here, 'page/bye.html'), 'text/html']],
  ['/page/scenario.js', [join(here, 'page/scenario.js'), 'text/javascript']],
  ['/page/style.css', [join(here, 'page/style.css'), 'text/css']],
  ['/page/pixel.svg', [join(here, 'page/pixel.svg'), 'image/svg+xml']],
]);

// Passes one request through to the node untouched (same-origin mode), noting what went by: the
// batches a page sends while it unloads come from a dying worker, which Playwright no longer
// reports, so in this mode the pass-through is the complete record of what reached the node.
const passed = [];
function passThrough(req, res) {
  const chunks = [];
  const note = { method: req.method, url: req.url, headers: req.headers, status: null };
  passed.push(note);
  const upstream = httpRequest(
    { host: node.hostname, port: node.port, method: req.method, path: req.url, headers: req.headers },
    (answer) => {
      note.status = answer.statusCode;
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on('error', () => res.destroy());
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    note.body = Buffer.concat(chunks);
  });
  req.pipe(upstream);
}

const pageServer = createServer((req, res) => {
  const path = new URL(req.url, 'http://page').pathname;
  if (opts['same-origin'] && path.startsWith('/ingest/')) {
    passThrough(req, res);
    return;
  }
  const file = files.get(path);
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'Content-Type': file[1], 'Cache-Control': 'no-store' });
  res.end(readFileSync(file[0]));
});
await new Promise((resolve) => pageServer.listen(0, '127.0.0.1', resolve));
const pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
const ingestOrigin = opts['same-origin'] ? pageOrigin : node.origin;
const ingestPoint = `${ingestOrigin}/ingest`;

const started = Date.now();
const entries = new Map(); // Playwright request -> log entry
let context;
const profile = mkdtempSync(join(tmpdir(), 'replay-ingest-e2e-'));

async function cleanUp() {
  if (context) await context.close().catch(() => {});
  context = undefined;
  pageServer.closeAllConnections();
  await new Promise((resolve) => pageServer.close(resolve));
  rmSync(profile, { recursive: true, force: true });
}

// A hung browser must not hang the test: the whole run has a deadline.
const deadline = setTimeout(async () => {
  console.error(`e2e runner: timed out after ${opts.timeout} ms`);
  await cleanUp().catch(() => {});
  process.exit(1);
}, Number(opts.timeout));

function gunzipped(body, headers) {
  if ((headers['content-encoding'] || '').toLowerCase() !== 'gzip') return body;
  try {
    return gunzipSync(body);
  } catch (e) {
    return null;
  }
}

function onRequest(request) {
  if (!request.url().startsWith(ingestPoint)) return;
  const headers = request.headers();
  const body = request.postDataBuffer();
  const entry = {
    n: entries.size + 1,
    t_ms: Date.now() - started,
    method: request.method(),
    url: request.url().slice(ingestOrigin.length),
    headers,
    body_len: body ? body.length : 0,
    status: null,
    failure: null,
  };
  if (entry.url.startsWith('/ingest/v1/web/i')) {
    const plain = body && gunzipped(body, headers);
    entry.body_decoded_hex = plain ? plain.toString('hex') : null;
  }
  if (entry.url.startsWith('/ingest/v1/web/start') && body) {
    try {
      entry.request_json = JSON.parse(gunzipped(body, headers).toString('utf8'));
    } catch (e) {
      entry.request_json = null;
    }
  }
  entry.settled = new Promise((resolve) => {
    entry.settle = resolve;
  });
  entries.set(request, entry);
}

// The status comes from the response event: the tracker cancels every batch answer's body, which
// Playwright then reports as a failed request although the node's answer arrived.
async function onResponse(response) {
  const entry = entries.get(response.request());
  if (!entry) return;
  entry.status = response.status();
  if (entry.url.startsWith('/ingest/v1/web/start')) {
    entry.response_json = await response.json().catch(() => null);
  } else if (entry.status !== 200) {
    entry.response_text = await response.text().catch(() => null);
  }
}

function onDone(request, failed) {
  const entry = entries.get(request);
  if (!entry) return;
  if (failed && entry.status === null) {
    entry.failure = request.failure() ? request.failure().errorText : 'failed';
  }
  entry.settle();
}

let exitCode = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      // Debugging aid: E2E_NETLOG=/tmp/netlog.json records everything the network stack did.
      ...(process.env.E2E_NETLOG ? [`--log-net-log=${process.env.E2E_NETLOG}`] : []),
    ],
  });
  context.on('request', onRequest);
  context.on('response', (response) => {
    onResponse(response).catch(() => {});
  });
  context.on('requestfinished', (request) => onDone(request, false));
  context.on('requestfailed', (request) => onDone(request, true));

  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (msg) => {
    if (msg.text().startsWith('e2e:') || msg.type() === 'error') {
      console.error(`page ${msg.type()}: ${msg.text()}`);
    }
  });
  page.on('pageerror', (err) => console.error(`page error: ${err.message}`));

  const query = new URLSearchParams({
    ingest: ingestPoint,
    key: opts.key,
    rounds: opts.rounds,
    pause: opts.pause,
    linger: opts.linger,
  });
  await page.goto(`${pageOrigin}/page/index.html?${query}`);
  await page.waitForURL(/\/page\/bye\.html/, { timeout: Number(opts.timeout) });
  // The page's last batches leave on pagehide; give their answers a moment to come back.
  await Promise.race([
    Promise.all([...entries.values()].map((e) => e.settled)),
    new Promise((resolve) => setTimeout(resolve, Number(opts.settle))),
  ]);
  if (page.url().includes('failed')) {
    throw new Error('the tracker did not start (see the page log above)');
  }
} catch (e) {
  console.error(`e2e runner: ${e.message}`);
  exitCode = 1;
} finally {
  const requests = [...entries.values()].map(({ settled, settle, ...rest }) => ({
    ...rest,
    seen_by: 'browser',
  }));
  for (const note of passed) {
    const seen = requests.find((r) => r.method === note.method && r.url === note.url);
    if (seen) {
      seen.seen_by = 'both';
      if (seen.status === null) seen.status = note.status;
      continue;
    }
    if (note.method === 'OPTIONS') continue;
    const plain = note.body && gunzipped(note.body, note.headers);
    requests.push({
      n: requests.length + 1,
      t_ms: null,
      method: note.method,
      url: note.url,
      headers: note.headers,
      body_len: note.body ? note.body.length : 0,
      status: note.status,
      failure: null,
      body_decoded_hex: plain ? plain.toString('hex') : null,
      seen_by: 'proxy',
    });
  }
  writeFileSync(
    opts.out,
    JSON.stringify({ page_origin: pageOrigin, ingest_point: ingestPoint, requests }, null, 1),
  );
  clearTimeout(deadline);
  await cleanUp();
}
process.exit(exitCode);

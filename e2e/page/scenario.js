// The user of the test page: starts the real tracker against the node under test, then plays a
// few rounds of clicks, typing, DOM mutations, console logs, scrolling and network calls, forcing
// a flush after each round (the tracker would otherwise wait 30 s), and finally navigates away
// without flushing, so that the last batches can only arrive through the tracker's pagehide path.
//
// Everything comes from the query string, set by run.mjs: ingest (the node's URL + /ingest), key
// (project key), rounds, pause (ms between rounds), linger (ms before leaving).
import Tracker from '/tracker/entry.js';

const params = new URLSearchParams(location.search);
const rounds = Number(params.get('rounds') || 4);
const pause = Number(params.get('pause') || 300);
const linger = Number(params.get('linger') || 500);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const tracker = new Tracker({
  projectKey: params.get('key'),
  ingestPoint: params.get('ingest'),
  // The page is served over plain http from loopback.
  __DISABLE_SECURE_MODE: true,
  respectDoNotTrack: false,
});

const name = document.getElementById('name');
const comment = document.getElementById('comment');
const agree = document.getElementById('agree');
const add = document.getElementById('add');
const items = document.getElementById('items');

let added = 0;
add.addEventListener('click', () => {
  added += 1;
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = `item ${added}: ${name.value}`;
  items.appendChild(li);
  // URL-based attributes and style text are what the tracker routes to assets batches.
  if (added % 2 === 0) {
    const img = document.createElement('img');
    img.src = `/page/pixel.svg?n=${added}`;
    img.alt = `pixel ${added}`;
    li.appendChild(img);
    const style = document.createElement('style');
    style.textContent = `#items li:nth-child(${added}) { background: url("/page/pixel.svg?bg=${added}"); }`;
    document.head.appendChild(style);
  }
  if (added % 3 === 0 && items.firstElementChild) {
    items.removeChild(items.firstElementChild);
  }
});

function type(field, text) {
  for (const ch of text) {
    field.value += ch;
    field.dispatchEvent(new Event('input', { bubbles: true }));
  }
  field.dispatchEvent(new Event('change', { bubbles: true }));
}

async function round(n) {
  type(name, `user ${n}`);
  type(comment, `comment number ${n}, `.repeat(3));
  agree.click();
  add.click();
  add.click();
  console.log(`e2e: round ${n}`, { n, added });
  if (n % 2 === 1) console.warn(`e2e: warning in round ${n}`);
  if (n % 3 === 2) console.error(`e2e: error in round ${n}`);
  window.scrollTo(0, 200 * (n + 1));
  await fetch(`/page/style.css?round=${n}`).then((r) => r.text());
  tracker.event('e2e-round', { n, added });
}

const started = await tracker.start({ userID: 'e2e-user@example.test' });
console.log('e2e: start', JSON.stringify(started));
if (started && started.success) {
  for (let n = 0; n < rounds; n += 1) {
    await round(n);
    tracker.forceFlushBatch();
    await sleep(pause);
  }
  // The last round is never force-flushed: only the page close delivers it. The user lingers
  // a moment, as users do, before following a link away.
  await round(rounds);
  await sleep(linger);
}
location.href = `/page/bye.html${started && started.success ? '' : '?failed'}`;

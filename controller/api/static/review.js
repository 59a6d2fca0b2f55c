// The review page: plain DOM code, no build step. Every text from the API goes in through textContent.
"use strict";

const TOKEN_KEY = "shotline.token";
const REASONS = ["wrong_face", "extra_people", "hands", "outfit", "blur", "style", "other"];
const RECONNECT_MS = 2000;  // a finished batch's stream ends after `done`: reopen it to keep hearing changes

const state = { batch: null, stream: null, lastEvent: "", cards: new Map() };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
function say(text) { $("message").textContent = text || ""; }

function askToken(why) {
  $("token-form").hidden = false;
  $("forget-token").hidden = true;
  if (why) say(why);
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function countsText(counts) {
  return Object.entries(counts).map(([status, n]) => `${status.replace("_", " ")} ${n}`).join(", ") || "no shots";
}

async function loadBatches() {
  const { batches } = await getJson("/api/v1/batches?limit=50");
  const list = $("batches");
  list.replaceChildren();
  for (const batch of batches) {
    const button = el("button", { type: "button", "data-batch": batch.id },
      el("span", { text: `${batch.source} · ${new Date(batch.created_at).toLocaleString()}` }),
      el("span", { class: "counts", text: countsText(batch.counts) }));
    if (batch.id === state.batch) button.classList.add("selected");
    button.addEventListener("click", () => selectBatch(batch.id, batch.source));
    list.append(el("li", {}, button));
  }
}

function selectBatch(id, source) {
  state.batch = id;
  state.lastEvent = "";
  state.cards.clear();
  $("grid").replaceChildren();
  $("batch-title").textContent = `${source} — ${id}`;
  for (const b of document.querySelectorAll("#batches button")) b.classList.toggle("selected", b.dataset.batch === id);
  follow(id);
  refresh();
}

function wanted() {
  return $("show-rejected").checked ? ["needs_review", "rejected"] : ["needs_review"];
}

// one refresh at a time; a request for another while one runs makes one more run after it
let refreshing = null, again = false;
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    do { again = false; await refreshOnce(); } while (again);
  })().finally(() => { refreshing = null; });
  return refreshing;
}

async function refreshOnce() {
  const batch = state.batch;
  if (!batch) return;
  try {
    const { shots } = await getJson(`/api/v1/batches/${batch}/shots`);
    if (batch !== state.batch) return;
    const keep = shots.filter((shot) => wanted().includes(shot.status));
    const ids = new Set(keep.map((shot) => shot.id));
    for (const [id, card] of state.cards) if (!ids.has(id)) { card.node.remove(); state.cards.delete(id); }
    for (const shot of keep) {
      const detail = await getJson(`/api/v1/shots/${shot.id}`);
      const known = state.cards.get(shot.id);
      if (known && known.updated === detail.updated_at) continue;
      const node = card(detail);
      if (known) known.node.replaceWith(node); else $("grid").append(node);
      state.cards.set(shot.id, { node, updated: detail.updated_at });
    }
    if (!keep.length) $("grid").replaceChildren(el("p", { class: "empty", text: "Nothing to review here." }));
    else $("grid").querySelector(".empty")?.remove();
    await loadBatches();
  } catch (error) {
    say(String(error.message || error));
  }
}

function identityOf(attempt) {
  return (attempt.verdicts || []).find((verdict) => verdict && verdict.check === "identity") || null;
}

function thumbnail(attempt) {
  const index = (attempt.outputs || []).findIndex((o) => /\.(png|jpe?g|webp)$/i.test(o.filename));
  if (index < 0) return el("p", { text: "no image output" });
  const img = el("img", { alt: `output of attempt ${attempt.attempt_no}`,
                          src: `/api/v1/attempts/${attempt.id}/outputs/${index}` });
  const frame = el("div", { class: "frame" }, img);
  // face boxes are in pixels of the judged frame (frames[0]); drawn in percent so they follow the scaled image
  img.addEventListener("load", () => {
    const judged = ((identityOf(attempt) || {}).frames || [])[0];
    if (!judged || !img.naturalWidth) return;
    const owners = new Map(Object.entries(judged.characters || {})
      .filter(([, m]) => m && m.face !== null && m.face !== undefined).map(([name, m]) => [m.face, [name, m]]));
    (judged.faces || []).forEach((face, k) => {
      if (!face || !Array.isArray(face.box) || face.box.length !== 4) return;
      const [x0, y0, x1, y1] = face.box.map(Number);
      const owner = owners.get(k);
      const label = owner ? `${owner[0]} ${Number(owner[1].idr).toFixed(2)}` : "unmatched";
      const box = el("div", { class: owner && owner[1].passed ? "box passed" : "box" }, el("span", { text: label }));
      box.style.left = `${(100 * x0) / img.naturalWidth}%`;
      box.style.top = `${(100 * y0) / img.naturalHeight}%`;
      box.style.width = `${(100 * (x1 - x0)) / img.naturalWidth}%`;
      box.style.height = `${(100 * (y1 - y0)) / img.naturalHeight}%`;
      frame.append(box);
    });
  });
  return frame;
}

function scores(attempt) {
  const identity = identityOf(attempt);
  const characters = Object.entries((identity && identity.characters) || {});
  if (!characters.length) return el("p", { text: "no identity verdict" });
  const body = el("tbody");
  for (const [name, result] of characters) {
    const score = result.score === null || result.score === undefined ? "no face" : Number(result.score).toFixed(3);
    body.append(el("tr", { class: result.passed ? "pass" : "fail" }, el("td", { text: name }),
      el("td", { text: score }), el("td", { text: `≥ ${result.threshold}` })));
  }
  return el("table", { class: "scores" },
    el("thead", {}, el("tr", {}, el("th", { text: "character" }), el("th", { text: "score" }),
                       el("th", { text: "threshold" }))), body);
}

function attempts(detail) {
  const list = el("ol", { class: "attempts" });
  for (const attempt of detail.attempts) {
    const correction = attempt.correction
      ? ` — ${attempt.correction.reason || "corrected"}` +
        (attempt.correction.step ? ` (${attempt.correction.step})` : "")
      : "";
    list.append(el("li", { text: `#${attempt.attempt_no} ${attempt.status}` +
                                 `${attempt.outcome ? ` → ${attempt.outcome}` : ""}${correction}` }));
  }
  return list;
}

function card(detail) {
  const last = [...detail.attempts].reverse().find((a) => (a.outputs || []).length) || detail.attempts.at(-1);
  const reason = el("select", { name: "reason", "aria-label": "reason" },
    el("option", { value: "", text: "reason…" }),
    ...REASONS.map((r) => el("option", { value: r, text: r.replace("_", " ") })));
  const note = el("input", { type: "text", name: "note", placeholder: "note", maxlength: "2000" });
  const approve = el("button", { type: "button", class: "approve", text: "Approve" });
  const reject = el("button", { type: "button", class: "reject", text: "Reject" });
  const node = el("article", { class: "card", "data-shot": detail.id },
    el("h3", {}, el("span", { class: "shot-key", text: detail.shot_key }), " ",
       el("span", { class: `status ${detail.status}`, text: detail.status })),
    el("div", { class: "shot-id", text: detail.id }),
    last ? thumbnail(last) : null,
    last ? scores(last) : null,
    attempts(detail),
    el("div", { class: "decide" }, reason, approve, reject, note));
  const decide = async (decision) => {
    if (!token()) return askToken("Enter the service token to approve or reject.");
    const body = { decision, note: note.value };
    if (reason.value) body.reason = reason.value;
    approve.disabled = reject.disabled = true;
    try {
      const response = await fetch(`/api/v1/shots/${detail.id}/review`, {
        method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token()}` } });
      const answer = await response.json().catch(() => ({}));
      if (response.status === 401) { localStorage.removeItem(TOKEN_KEY); return askToken("The token was refused."); }
      if (!response.ok) return say(answer.error || `HTTP ${response.status}`);
      const status = node.querySelector(".status");
      status.textContent = answer.status;
      status.className = `status ${answer.status}`;
      say("");
      setTimeout(refresh, 600);  // long enough to see the new status, then it leaves the grid
    } finally {
      approve.disabled = reject.disabled = false;
    }
  };
  approve.addEventListener("click", () => decide("approve"));
  reject.addEventListener("click", () => decide("reject"));
  return node;
}

// Server-sent events with a header: EventSource cannot send Authorization, so fetch() and read the body.
async function follow(batch) {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  while (state.batch === batch && !controller.signal.aborted) {
    if (!token()) { askToken("Enter the service token to see live updates."); return; }
    try {
      const response = await fetch(`/api/v1/batches/${batch}/events`, {
        headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" }, signal: controller.signal });
      if (response.status === 401) { localStorage.removeItem(TOKEN_KEY); askToken("The token was refused."); return; }
      if (response.ok) {
        $("live").textContent = "live";
        $("live").classList.add("on");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            onEvent(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    $("live").classList.remove("on");
    await new Promise((done) => setTimeout(done, RECONNECT_MS));
  }
}

function onEvent(block) {
  const data = block.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5)).join("\n");
  try {
    const { counts, finished } = JSON.parse(data);
    const signature = JSON.stringify([counts, finished]);
    if (signature === state.lastEvent) return;  // a reopened stream repeats the batch: refresh only on change
    state.lastEvent = signature;
  } catch (error) { /* not a batch: refresh anyway */ }
  refresh();
}

function start() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("token-form").hidden = true;
    $("forget-token").hidden = false;
    say("");
    if (state.batch) follow(state.batch);
  });
  $("forget-token").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); askToken(""); });
  $("show-rejected").addEventListener("change", () => { state.cards.clear(); $("grid").replaceChildren(); refresh(); });
  if (token()) $("forget-token").hidden = false; else askToken("");
  loadBatches().catch((error) => say(String(error.message || error)));
}

start();

// gan-serve's page: the served models, a grid of seeds, one sample large, a walk between two
// seeds and a model card, all from the service's own API (/models, /generate, /interpolate).
// The view lives in the URL's fragment, so a copied link reopens it. No build step, no
// library, nothing loaded from elsewhere.
"use strict";

const SEED_MAX = (1n << 63n) - 1n;
const GRID_SIZES = [4, 6, 8];
const DEFAULT_SIZE = 8;
const STEPS_MIN = 2;
const STEPS_MAX = 16;
const DEFAULT_STEPS = 10;
const CARD_SAMPLES = 64;
const TOKEN_KEY = "gan-serve-token";

const $ = (id) => document.getElementById(id);

// What the URL's fragment holds: the whole view.
const view = {
  model: null,
  version: null,
  label: "any", // "any" or a class index, as text
  seed: 0n,
  size: DEFAULT_SIZE,
  open: null, // the seed shown large, or null
  a: null, // the walk's ends, or null
  b: null,
  steps: DEFAULT_STEPS,
  method: "slerp",
  frame: 0,
};
const served = { list: [], defaultName: null, details: new Map(), maxSamples: 64 };
const errors = new Map(); // panel -> message shown in #error
const tickets = { grid: 0, detail: 0, walk: 0, card: 0 }; // the latest request of each panel
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let picks = null; // seeds clicked while picking the walk's ends, or null
let cardUrl = null;

// --- The API -----------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// JSON with BigInt seeds written as plain integers (seeds go up to 2**63 - 1).
function toJson(value) {
  return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `@big:${v}` : v)).replace(
    /"@big:(\d+)"/g,
    "$1",
  );
}

async function api(path, { body = null, as = "json" } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== null) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method: body === null ? "GET" : "POST", headers, body });
  } catch (e) {
    throw new ApiProblem(0, "unreachable", `the service cannot be reached (${e.message})`);
  }
  if (!response.ok) {
    let code = "http_error";
    let message = response.statusText || "request failed";
    try {
      const data = await response.json();
      if (data && data.error && typeof data.error === "object") {
        code = data.error.code;
        message = data.error.message;
      }
    } catch {
      // not the API's JSON error: keep the status line
    }
    if (response.status === 401) askForToken();
    throw new ApiProblem(response.status, code, message);
  }
  return as === "blob" ? response.blob() : response.json();
}

function setError(panel, what, error) {
  const detail =
    error instanceof ApiProblem
      ? `${error.status ? error.status + " " : ""}${error.code}: ${error.message}`
      : String(error.message || error);
  errors.set(panel, `${what}: ${detail}`);
  showErrors();
}

function clearError(panel) {
  if (errors.delete(panel)) showErrors();
}

function showErrors() {
  const box = $("error");
  box.textContent = [...errors.values()].join("\n");
  box.hidden = errors.size === 0;
}

function askForToken() {
  const form = $("token-form");
  if (form.hidden) {
    form.hidden = false;
    $("token").focus();
  }
}

// --- The URL -----------------------------------------------------------------------------

function seedOf(text) {
  if (text === null || !/^[0-9]{1,19}$/.test(text.trim())) return null;
  const seed = BigInt(text.trim());
  return seed <= SEED_MAX ? seed : null;
}

function intOf(text, min, max, fallback) {
  const value = Number.parseInt(text ?? "", 10);
  return Number.isInteger(value) && value >= min && value <= max ? value : fallback;
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  view.model = p.get("model");
  view.version = intOf(p.get("version"), 1, Number.MAX_SAFE_INTEGER, null);
  view.label = /^[0-9]+$/.test(p.get("label") ?? "") ? p.get("label") : "any";
  view.seed = seedOf(p.get("seed")) ?? 0n;
  view.size = intOf(p.get("size"), 1, 8, DEFAULT_SIZE);
  if (!GRID_SIZES.includes(view.size)) view.size = DEFAULT_SIZE;
  view.open = seedOf(p.get("open"));
  view.a = seedOf(p.get("a"));
  view.b = seedOf(p.get("b"));
  view.steps = intOf(p.get("steps"), STEPS_MIN, STEPS_MAX, DEFAULT_STEPS);
  view.method = p.get("method") === "lerp" ? "lerp" : "slerp";
  view.frame = intOf(p.get("frame"), 0, STEPS_MAX - 1, 0);
}

function writeHash() {
  const p = new URLSearchParams();
  if (view.model !== null) p.set("model", view.model);
  if (view.version !== null) p.set("version", String(view.version));
  if (view.label !== "any") p.set("label", view.label);
  p.set("seed", String(view.seed));
  if (view.size !== DEFAULT_SIZE) p.set("size", String(view.size));
  if (view.open !== null) p.set("open", String(view.open));
  if (view.a !== null && view.b !== null) {
    p.set("a", String(view.a));
    p.set("b", String(view.b));
    p.set("steps", String(view.steps));
    p.set("method", view.method);
    p.set("frame", String(view.frame));
  }
  history.replaceState(null, "", `#${p}`);
  $("share").value = location.href;
}

// --- Models and versions -----------------------------------------------------------------

async function loadModels() {
  try {
    const [list, spec] = await Promise.all([
      api("/models"),
      api("/openapi.json").catch(() => null), // only for the sample limit
    ]);
    const limit = spec?.components?.schemas?.GenerateRequest?.properties?.n?.maximum;
    if (Number.isInteger(limit) && limit > 0) served.maxSamples = limit;
    served.list = list.models;
    served.defaultName = list.default;
    clearError("models");
    if (token) $("token-form").hidden = true; // the token works
  } catch (e) {
    setError("models", "Models", e);
    return;
  }
  fillSizes();
  const select = $("model");
  select.replaceChildren(...served.list.map((m) => new Option(m.name, m.name)));
  if (!served.list.some((m) => m.name === view.model)) {
    view.model = served.defaultName ?? served.list[0]?.name ?? null;
  }
  if (view.model === null) {
    setError("models", "Models", new Error("the service serves no model"));
    return;
  }
  await selectModel(false);
}

function fillSizes() {
  const sizes = GRID_SIZES.filter((s) => s * s <= served.maxSamples);
  if (sizes.length === 0) sizes.push(1);
  if (!sizes.includes(view.size)) view.size = sizes[sizes.length - 1];
  $("size").replaceChildren(...sizes.map((s) => new Option(`${s} × ${s}`, String(s))));
  $("size").value = String(view.size);
  $("walk-steps").max = String(Math.min(STEPS_MAX, served.maxSamples));
}

async function selectModel(resetVersion) {
  $("model").value = view.model;
  let detail = served.details.get(view.model);
  if (detail === undefined) {
    try {
      detail = await api(`/models/${encodeURIComponent(view.model)}`);
    } catch (e) {
      setError("models", `Model ${view.model}`, e);
      return;
    }
    served.details.set(view.model, detail);
  }
  if (resetVersion || !detail.versions.includes(view.version)) view.version = detail.default_version;
  $("version").replaceChildren(
    ...detail.versions.map(
      (v) => new Option(v === detail.default_version ? `${v} (default)` : String(v), String(v)),
    ),
  );
  selectVersion();
}

function meta() {
  const detail = served.details.get(view.model);
  return detail?.metadata.find((m) => m.version === view.version) ?? null;
}

function classes() {
  const m = meta();
  return m && m.conditional && Array.isArray(m.classes) ? m.classes : null;
}

function className(label) {
  const names = classes();
  return names && label !== null && label !== undefined ? names[label] : null;
}

function selectVersion() {
  $("version").value = String(view.version);
  const names = classes();
  $("label-field").hidden = names === null;
  if (names === null || Number(view.label) >= names.length) view.label = "any";
  $("label").replaceChildren(
    new Option("any", "any"),
    ...(names ?? []).map((name, i) => new Option(name, String(i))),
  );
  $("label").value = view.label;
  renderAll();
}

// The labels field of a request: the picked class, or none (seed s then draws s % K).
function withLabels(body) {
  if (view.label !== "any" && classes() !== null) body.labels = Number(view.label);
  return body;
}

function renderAll() {
  writeHash();
  renderGrid();
  renderDetail();
  renderWalk();
  renderCard();
}

// --- The grid ----------------------------------------------------------------------------

const png = (base64) => `data:image/png;base64,${base64}`;

function keyOf(...parts) {
  return [view.model, view.version, view.label, ...parts].join(":");
}

async function renderGrid() {
  const ticket = ++tickets.grid;
  const grid = $("grid");
  const n = view.size * view.size;
  const last = view.seed + BigInt(n - 1);
  const named = className(view.label === "any" ? null : Number(view.label));
  $("grid-title").textContent = `Seeds ${view.seed}–${last}${named === null ? "" : `, class ${named}`}`;
  grid.dataset.status = "loading";
  try {
    const body = withLabels({ model: view.model, version: view.version, seed: view.seed, n });
    const data = await api("/generate", { body: toJson(body) });
    if (ticket !== tickets.grid) return;
    grid.style.setProperty("--cols", String(view.size));
    grid.replaceChildren(
      ...data.images.map((image, i) => tile(view.seed + BigInt(i), data.labels?.[i] ?? null, image)),
    );
    grid.dataset.key = keyOf(view.seed, n);
    grid.dataset.status = "ready";
    clearError("grid");
  } catch (e) {
    if (ticket !== tickets.grid) return;
    grid.replaceChildren();
    grid.dataset.status = "error";
    setError("grid", "Samples", e);
  }
}

function tile(seed, label, image) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tile";
  button.dataset.seed = String(seed);
  const name = className(label);
  if (label !== null) button.dataset.label = String(label);
  const img = document.createElement("img");
  img.src = png(image);
  img.alt = `seed ${seed}${name === null ? "" : `, class ${name}`}`;
  button.title = img.alt;
  button.append(img);
  button.addEventListener("click", () => clickTile(seed, button));
  return button;
}

function clickTile(seed, button) {
  if (picks !== null) {
    picks.push(seed);
    button.classList.add("picked");
    if (picks.length === 2) {
      [view.a, view.b] = picks;
      view.frame = 0;
      stopPicking();
      writeHash();
      renderWalk();
    } else {
      $("pick-hint").textContent = `From seed ${seed}: now click the tile to walk to.`;
    }
    return;
  }
  view.open = seed;
  writeHash();
  renderDetail();
}

function startPicking() {
  picks = [];
  $("pick").setAttribute("aria-pressed", "true");
  $("pick-hint").textContent = "Click the tile to walk from.";
  $("pick-hint").hidden = false;
}

function stopPicking() {
  picks = null;
  $("pick").setAttribute("aria-pressed", "false");
  $("pick-hint").hidden = true;
  for (const t of document.querySelectorAll(".tile.picked")) t.classList.remove("picked");
}

async function download() {
  const n = view.size * view.size;
  const query = new URLSearchParams({
    model: view.model,
    version: String(view.version),
    seed: String(view.seed),
    n: String(n),
  });
  if (view.label !== "any" && classes() !== null) query.set("labels", view.label);
  try {
    const blob = await api(`/generate?${query}`, { as: "blob" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = `${view.model}-v${view.version}-seed${view.seed}-n${n}.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    clearError("download");
  } catch (e) {
    setError("download", "Download", e);
  }
}

// --- One sample --------------------------------------------------------------------------

async function renderDetail() {
  const ticket = ++tickets.detail;
  const panel = $("detail");
  if (view.open === null) {
    panel.hidden = true;
    panel.dataset.status = "empty";
    return;
  }
  panel.hidden = false;
  panel.dataset.status = "loading";
  $("detail-seed").textContent = String(view.open);
  try {
    const body = withLabels({ model: view.model, version: view.version, seeds: [view.open] });
    const data = await api("/generate", { body: toJson(body) });
    if (ticket !== tickets.detail) return;
    const name = className(data.labels?.[0] ?? null);
    $("detail-image").src = png(data.images[0]);
    $("detail-image").alt = `seed ${view.open}`;
    $("detail-class").textContent = name === null ? "unconditional model" : `class ${name}`;
    $("detail-model").textContent = `${data.model} version ${data.version}`;
    $("share").value = location.href;
    panel.dataset.key = keyOf(view.open);
    panel.dataset.status = "ready";
    clearError("detail");
  } catch (e) {
    if (ticket !== tickets.detail) return;
    panel.dataset.status = "error";
    setError("detail", `Seed ${view.open}`, e);
  }
}

async function copyLink() {
  const field = $("share");
  field.value = location.href;
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
    $("copy").textContent = "Copied";
  } catch {
    $("copy").textContent = "Selected: copy it";
  }
  setTimeout(() => ($("copy").textContent = "Copy link"), 2000);
}

// --- The walk ----------------------------------------------------------------------------

let walk = null; // the last interpolation's response

async function renderWalk() {
  const ticket = ++tickets.walk;
  const strip = $("strip");
  $("walk-a").value = view.a === null ? "" : String(view.a);
  $("walk-b").value = view.b === null ? "" : String(view.b);
  $("walk-steps").value = String(view.steps);
  $("walk-method").value = view.method;
  if (view.a === null || view.b === null) {
    strip.replaceChildren();
    strip.dataset.status = "empty";
    $("slider").hidden = true;
    $("frame").hidden = true;
    return;
  }
  strip.dataset.status = "loading";
  try {
    const body = withLabels({
      model: view.model,
      version: view.version,
      seeds: [view.a, view.b],
      steps: view.steps,
      method: view.method,
    });
    const data = await api("/interpolate", { body: toJson(body) });
    if (ticket !== tickets.walk) return;
    walk = data;
    strip.replaceChildren(
      ...data.images.map((image, i) => {
        const img = document.createElement("img");
        img.src = png(image);
        img.alt = `frame ${i + 1} of ${data.images.length}`;
        img.dataset.index = String(i);
        img.addEventListener("click", () => showFrame(i));
        return img;
      }),
    );
    strip.style.setProperty("--frames", String(data.images.length));
    const slider = $("slider");
    slider.max = String(data.images.length - 1);
    slider.hidden = false;
    strip.dataset.key = keyOf(view.a, view.b, view.steps, view.method);
    strip.dataset.status = "ready";
    showFrame(Math.min(view.frame, data.images.length - 1));
    clearError("walk");
  } catch (e) {
    if (ticket !== tickets.walk) return;
    strip.replaceChildren();
    strip.dataset.status = "error";
    $("slider").hidden = true;
    $("frame").hidden = true;
    setError("walk", "Walk", e);
  }
}

function showFrame(i) {
  if (walk === null) return;
  view.frame = i;
  $("slider").value = String(i);
  for (const img of $("strip").children) img.classList.toggle("current", img.dataset.index === String(i));
  $("frame-image").src = png(walk.images[i]);
  $("frame-image").alt = `frame ${i + 1}`;
  $("frame-image").dataset.index = String(i);
  const name = className(walk.labels?.[i] ?? null);
  const ends = i === 0 ? ` (seed ${view.a})` : i === walk.images.length - 1 ? ` (seed ${view.b})` : "";
  $("frame-caption").textContent =
    `Frame ${i + 1} of ${walk.images.length}${ends}, t = ${walk.t[i].toFixed(3)}, ${walk.method}` +
    (name === null ? "" : `, class ${name}`);
  $("frame").hidden = false;
  writeHash();
}

function submitWalk(event) {
  event.preventDefault();
  const a = seedOf($("walk-a").value);
  const b = seedOf($("walk-b").value);
  if (a === null || b === null) {
    setError("walk", "Walk", new Error("give two seeds, integers in [0, 2**63 - 1]"));
    return;
  }
  view.a = a;
  view.b = b;
  view.steps = intOf($("walk-steps").value, STEPS_MIN, Math.min(STEPS_MAX, served.maxSamples), DEFAULT_STEPS);
  view.method = $("walk-method").value;
  view.frame = 0;
  writeHash();
  renderWalk();
}

// --- The model card ----------------------------------------------------------------------

const METRICS = [
  ["fid", "FID", 2],
  ["inception_score", "Inception score", 2],
  ["precision", "Precision", 3],
  ["recall", "Recall", 3],
  ["label_agreement", "Label agreement", 4],
];

function cardRow(list, term, value, code = false) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (code) {
    const c = document.createElement("code");
    c.textContent = value;
    dd.append(c);
  } else {
    dd.textContent = value;
  }
  list.append(dt, dd);
}

async function renderCard() {
  const ticket = ++tickets.card;
  const m = meta();
  const list = $("card");
  list.replaceChildren();
  $("card-title").textContent = m === null ? "" : `${m.name} version ${m.version}`;
  if (m === null) return;
  if (m.created) cardRow(list, "Created", m.created);
  if (m.dataset) {
    const size = Number.isInteger(m.dataset.size) ? `, ${m.dataset.size.toLocaleString("en")} images` : "";
    cardRow(list, "Dataset", `${m.dataset.name ?? "?"}${size}`);
  }
  const latent = m.latent ?? {};
  cardRow(
    list,
    "Generator",
    `${m.architecture ?? "?"}, latent size ${latent.size ?? "?"}` +
      (latent.temperature ? `, temperature ${latent.temperature}` : ""),
  );
  const names = m.conditional && Array.isArray(m.classes) ? m.classes : null;
  cardRow(list, "Classes", names === null ? "none (unconditional)" : names.join(", "));
  const metrics = m.metrics ?? {};
  let shown = 0;
  for (const [key, term, digits] of METRICS) {
    if (typeof metrics[key] !== "number") continue;
    const floor = metrics[`${key}_floor`];
    const text = metrics[key].toFixed(digits) + (typeof floor === "number" ? ` (real images: ${floor.toFixed(digits)})` : "");
    cardRow(list, term, text);
    shown += 1;
  }
  if (typeof metrics.class_share_min === "number" && typeof metrics.class_share_max === "number") {
    const pct = (x) => `${(100 * x).toFixed(1)}%`;
    cardRow(list, "Class shares", `${pct(metrics.class_share_min)} to ${pct(metrics.class_share_max)}`);
    shown += 1;
  }
  if (shown === 0) cardRow(list, "Metrics", "none recorded");
  else if (Number.isInteger(metrics.samples)) cardRow(list, "Scored on", `${metrics.samples.toLocaleString("en")} samples`);
  const training = m.training ?? {};
  if (training.command) cardRow(list, "Trained with", training.command, true);
  for (const again of training.resumed ?? []) cardRow(list, "Resumed with", again, true);

  const n = Math.min(CARD_SAMPLES, served.maxSamples);
  const query = new URLSearchParams({ model: m.name, version: String(m.version), seed: "0", n: String(n) });
  $("card-grid-note").textContent = names === null ? "" : ", seed s of class s % " + names.length;
  try {
    const blob = await api(`/generate?${query}`, { as: "blob" });
    if (ticket !== tickets.card) return;
    if (cardUrl !== null) URL.revokeObjectURL(cardUrl);
    cardUrl = URL.createObjectURL(blob);
    $("card-grid").src = cardUrl;
    clearError("card");
  } catch (e) {
    if (ticket !== tickets.card) return;
    setError("card", "Model card", e);
  }
}

// --- Events ------------------------------------------------------------------------------

function changeSeed() {
  const seed = seedOf($("seed").value);
  if (seed === null) {
    setError("seed", "Seed", new Error(`${JSON.stringify($("seed").value)} is not an integer in [0, 2**63 - 1]`));
    return;
  }
  clearError("seed");
  if (seed === view.seed) return;
  view.seed = seed;
  writeHash();
  renderGrid();
}

function bind() {
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    changeSeed();
  });
  $("seed").addEventListener("change", changeSeed);
  $("random").addEventListener("click", () => {
    // Any seed below 2**32: short to read and to type back.
    $("seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
    changeSeed();
  });
  $("model").addEventListener("change", () => {
    view.model = $("model").value;
    view.label = "any";
    selectModel(true);
  });
  $("version").addEventListener("change", () => {
    view.version = Number($("version").value);
    selectVersion();
  });
  $("label").addEventListener("change", () => {
    view.label = $("label").value;
    renderAll();
  });
  $("size").addEventListener("change", () => {
    view.size = Number($("size").value);
    writeHash();
    renderGrid();
  });
  $("download").addEventListener("click", download);
  $("close").addEventListener("click", () => {
    view.open = null;
    writeHash();
    renderDetail();
  });
  $("copy").addEventListener("click", copyLink);
  $("as-a").addEventListener("click", () => {
    $("walk-a").value = String(view.open);
    if (seedOf($("walk-b").value) !== null) $("walk-form").requestSubmit();
  });
  $("as-b").addEventListener("click", () => {
    $("walk-b").value = String(view.open);
    if (seedOf($("walk-a").value) !== null) $("walk-form").requestSubmit();
  });
  $("walk-form").addEventListener("submit", submitWalk);
  $("pick").addEventListener("click", () => (picks === null ? startPicking() : stopPicking()));
  $("slider").addEventListener("input", () => showFrame(Number($("slider").value)));
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    errors.clear();
    showErrors();
    served.details.clear();
    loadModels();
  });
  window.addEventListener("hashchange", () => {
    readHash();
    $("seed").value = String(view.seed);
    loadModels();
  });
}

readHash();
$("seed").value = String(view.seed);
bind();
loadModels();

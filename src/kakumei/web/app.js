// kakumei web UI: one page over the native API (/api/v1). No framework and no build step:
// the server serves this file as is, and the page loads nothing from other origins.
"use strict";

const KEY_STORE = "kakumei.apiKey";
// What the stored key is: "guest" (taken by this page on a first visit), "account" (from
// signing up or in; signing out revokes it) or "key" (pasted, e.g. one the operator gave).
const KIND_STORE = "kakumei.keyKind";
const FORM_STORE = "kakumei.lastRequest";
const GALLERY_LIMIT = 60;
// A browser opens at most six connections to one server over HTTP/1.1, and each event
// stream holds one; past this many jobs, the others are polled so the page stays responsive.
const MAX_STREAMS = 3;
const POLL_MS = 4000;
const $ = (id) => document.getElementById(id);

// ---- languages -----------------------------------------------------------------------------

// The page's words live in /web/i18n/<lang>.json, one file per language: `strings` maps each
// English text (as index.html and this file write it, with {name} for what is filled in) to
// the language's, and `server_sentences` maps the server's usual sentences by pattern. A
// missing string shows in English; a third language is one more file and one more entry here.
const LANG_STORE = "kakumei.lang";
const DRAFT_STORE = "kakumei.draft";
const LANGUAGES = { en: "English", ja: "日本語" };
let LANG = "en";
let STRINGS = {};
let SENTENCES = [];

function t(text, vars = {}) {
  const template = Object.prototype.hasOwnProperty.call(STRINGS, text) ? STRINGS[text] : text;
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

// A sentence from the server (refusals, reasons) in the page's language where the strings
// file knows its pattern; as the server said it otherwise.
function serverSentence(text) {
  for (const [pattern, replacement] of SENTENCES) {
    if (pattern.test(text)) return text.replace(pattern, replacement);
  }
  return text;
}

// The language chosen on this page before, else the one the server picked from the
// browser's Accept-Language (it writes it into <html lang>), else English.
function chosenLanguage() {
  const stored = localStorage.getItem(LANG_STORE);
  if (stored && LANGUAGES[stored]) return stored;
  const served = document.documentElement.lang;
  return LANGUAGES[served] ? served : "en";
}

async function loadLanguage() {
  LANG = chosenLanguage();
  try {
    const res = await fetch(`/web/i18n/${LANG}.json`);
    if (!res.ok) throw new Error(String(res.status));
    const data = await res.json();
    STRINGS = data.strings || {};
    SENTENCES = (data.server_sentences || []).map(([pattern, replacement]) => [new RegExp(pattern), replacement]);
  } catch (err) {
    STRINGS = {};
    SENTENCES = [];
  }
  document.documentElement.lang = LANG;
  translateTree(document.body);
  for (const template of document.querySelectorAll("template")) translateTree(template.content);
  const select = $("lang");
  select.value = LANG;
  select.addEventListener("change", () => {
    localStorage.setItem(LANG_STORE, select.value);
    // What is typed survives the reload that redraws the page in the other language.
    sessionStorage.setItem(DRAFT_STORE, JSON.stringify({ prompt: $("prompt").value, negative_prompt: $("negative_prompt").value }));
    window.location.reload();
  });
}

const TRANSLATED_ATTRIBUTES = ["placeholder", "title", "aria-label", "alt"];

// index.html's words: each text and attribute whose English the strings file knows.
function translateTree(root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const key = node.nodeValue.replace(/\s+/g, " ").trim();
    if (key && Object.prototype.hasOwnProperty.call(STRINGS, key)) {
      const lead = node.nodeValue.match(/^\s*/)[0];
      const tail = node.nodeValue.match(/\s*$/)[0];
      node.nodeValue = lead + STRINGS[key] + tail;
    }
  }
  for (const el of root.querySelectorAll("*")) {
    for (const name of TRANSLATED_ATTRIBUTES) {
      const value = el.getAttribute(name);
      if (value && Object.prototype.hasOwnProperty.call(STRINGS, value)) el.setAttribute(name, STRINGS[value]);
    }
  }
}

// ---- Japanese prompts: the English that will be encoded --------------------------------------

// What the server translates (kana, kanji, half-width katakana, CJK and full-width
// punctuation); the same classes as kakumei/translate/text.py.
const JAPANESE = /[\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\u3000-\u303f\uff01-\uff65]/;
const translation = { timer: null, seq: 0, source: {}, edited: {} };

function wireTranslation() {
  if (!state.options || state.options.translator === "off") return;
  for (const name of TEXT_FIELDS) {
    $(name).addEventListener("input", () => scheduleTranslation());
    $(`${name}_english`).addEventListener("input", () => { translation.edited[name] = true; });
  }
  scheduleTranslation(0);
}

function scheduleTranslation(delay = 300) {
  clearTimeout(translation.timer);
  translation.timer = setTimeout(previewTranslation, delay);
}

function hideEnglish(name) {
  $(`${name}-english-box`).hidden = true;
  $(`${name}_english`).value = "";
  translation.source[name] = null;
  translation.edited[name] = false;
}

// The English of the prompts as they are now, from the server's own translator, shown under
// each; English the user edited is kept until the Japanese above it changes.
async function previewTranslation() {
  const body = { prompt: $("prompt").value, negative_prompt: $("negative_prompt").value };
  const needed = TEXT_FIELDS.filter((name) => JAPANESE.test(body[name]));
  for (const name of TEXT_FIELDS) if (!needed.includes(name)) hideEnglish(name);
  if (!needed.length) {
    $("translation-note").textContent = "";
    return;
  }
  const seq = ++translation.seq;
  let out;
  try {
    out = await api("POST", "/api/v1/translate", body);
  } catch (err) {
    if (seq === translation.seq) $("translation-note").textContent = err.message;
    return;
  }
  if (seq !== translation.seq) return; // a newer edit's translation is on its way
  for (const name of needed) {
    if (translation.source[name] !== body[name]) translation.edited[name] = false;
    if (!translation.edited[name]) $(`${name}_english`).value = out[name];
    translation.source[name] = body[name];
    $(`${name}-english-box`).hidden = false;
  }
  $("translation-note").textContent = out.untranslated.length
    ? t("Not in the dictionary, kept as written: {words}", { words: out.untranslated.join(", ") }) : "";
}

// The request's prompts: the English shown (maybe edited) with the Japanese as written, where
// the preview is for what is in the prompt box now; else the text, which the server translates.
function promptFields() {
  const fields = {};
  for (const name of TEXT_FIELDS) {
    const written = $(name).value;
    const english = $(`${name}_english`).value;
    if (!$(`${name}-english-box`).hidden && translation.source[name] === written && english.trim()) {
      fields[name] = english;
      fields[`${name}_original`] = written;
    } else {
      fields[name] = written;
    }
  }
  return fields;
}

// A request that recorded what was written shows that in the prompt box, and the English it
// encoded under it, kept as it was (so reusing it draws the same picture).
function setPromptFields(request) {
  let refresh = false;
  for (const name of TEXT_FIELDS) {
    const original = request[`${name}_original`];
    if (original) {
      $(name).value = original;
      $(`${name}_english`).value = request[name];
      translation.source[name] = original;
      translation.edited[name] = true;
      $(`${name}-english-box`).hidden = false;
    } else if (request[name] !== undefined) {
      refresh = true;
    }
  }
  if (refresh && state.options && state.options.translator !== "off") scheduleTranslation(0);
}

function showEnglish(el, request) {
  if (!el || !request.prompt_original) return;
  el.textContent = t("In English: {prompt}", { prompt: request.prompt });
  el.hidden = false;
}

const state = {
  key: localStorage.getItem(KEY_STORE) || "",
  kind: localStorage.getItem(KIND_STORE) || (localStorage.getItem(KEY_STORE) ? "key" : ""),
  name: "", // the account's name, once /api/v1/me has said it
  options: null,
  jobs: new Map(), // job id -> {card, abort, done}
  imageUrls: new Map(), // image id -> blob URL (images never change, so they are cached)
  submitting: false,
  streams: 0, // open event streams
  waiting: [], // ids of tracked jobs without a stream (polled)
};

// Fields of GenerationRequest the form edits, by how their value is read.
const TEXT_FIELDS = ["prompt", "negative_prompt"];
const CHOICE_FIELDS = ["model", "sampler_name", "scheduler", "hr_upscaler"];
const INT_FIELDS = ["steps", "width", "height", "seed", "batch_size", "n_iter", "clip_skip", "hr_second_pass_steps"];
const FLOAT_FIELDS = ["cfg_scale", "hr_scale", "denoising_strength"];
const BOOL_FIELDS = ["enable_hr"];
const ADVANCED_FIELDS = ["n_iter", "clip_skip", "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "denoising_strength"];

// ---- talking to the server -------------------------------------------------------------

function authHeaders(key = state.key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, message, errors) {
    super(message);
    this.status = status;
    this.errors = errors || [];
  }
}

// The API answers errors with a sentence in `detail`; that sentence is what the user sees.
// `key` is the key to send: this browser's by default, none ("") where a key is being taken.
async function api(method, path, body, extraHeaders = {}, key = state.key) {
  const headers = { ...authHeaders(key), ...extraHeaders };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, t("The server cannot be reached; check your connection and try again."));
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    data = null;
  }
  if (!res.ok) {
    const fieldErrors = data && Array.isArray(data.errors)
      ? data.errors.map((e) => ({ ...e, message: e.message && serverSentence(e.message) })) : [];
    throw new ApiError(res.status, errorSentence(res, data, text), fieldErrors);
  }
  return data;
}

function errorSentence(res, data, text) {
  if (data && typeof data.detail === "string") return serverSentence(data.detail);
  if (data && Array.isArray(data.detail)) {
    return data.detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  }
  const retry = res.headers.get("Retry-After");
  const suffix = retry ? ` ${t("Try again in {s} s.", { s: formatNumber(retry) })}` : "";
  return t("The server answered {status} {text}.", { status: res.status, text: res.statusText }) + suffix;
}

function randomKey() {
  // crypto.randomUUID needs a secure context; a server shared on a LAN over plain HTTP is not one.
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Server-Sent Events over fetch, because EventSource cannot send the Authorization header.
// Reconnects with Last-Event-ID after a dropped connection, so no event is missed.
async function streamEvents(path, signal, onEvent) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    let finished = false;
    try {
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const res = await fetch(path, { headers, signal });
      if (res.status === 204) return; // the job had finished and its last event was seen
      if (!res.ok) {
        const text = await res.text();
        let data = null;
        try { data = JSON.parse(text); } catch (err) { data = null; }
        onEvent("error", { reason: errorSentence(res, data, text), status: res.status });
        if (res.status >= 400 && res.status < 500) return;
        throw new Error("retry");
      }
      failures = 0;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id !== null) lastId = event.id;
          if (onEvent(event.kind, event.data) === "final") finished = true;
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    if (finished) return;
    failures += 1;
    await sleep(Math.min(10000, 500 * 2 ** Math.min(failures, 5)));
  }
}

function parseEvent(block) {
  let kind = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  try {
    return { kind, id, data: JSON.parse(data.join("\n")) };
  } catch (err) {
    return null;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the form ----------------------------------------------------------------------------

function fillSelect(select, values, labelOf) {
  select.replaceChildren(
    ...values.map((v) => {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = labelOf ? labelOf(v) : v;
      return option;
    }),
  );
}

function setForm(request) {
  for (const name of [...TEXT_FIELDS, ...CHOICE_FIELDS, ...INT_FIELDS, ...FLOAT_FIELDS]) {
    if (request[name] === undefined || request[name] === null) continue;
    const input = $(name);
    if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === String(request[name]))) {
      // A value this server does not offer (e.g. a model it no longer has): show it, so the
      // user sees why the server refuses it, rather than silently picking another.
      const option = document.createElement("option");
      option.value = option.textContent = String(request[name]);
      input.append(option);
    }
    input.value = String(request[name]);
  }
  for (const name of BOOL_FIELDS) {
    if (request[name] !== undefined) $(name).checked = Boolean(request[name]);
  }
  setPromptFields(request);
  if (ADVANCED_FIELDS.some((n) => request[n] !== undefined && request[n] !== state.options.defaults[n])) {
    $("advanced").open = true;
  }
  updateSchedules();
  clearFieldErrors();
}

function readForm() {
  const request = {};
  for (const name of CHOICE_FIELDS) request[name] = $(name).value;
  Object.assign(request, promptFields());
  // An empty or unreadable number goes to the server as null, which answers with the field
  // and what it allows; the form never substitutes a value the user did not choose.
  for (const name of INT_FIELDS) request[name] = $(name).value === "" ? null : Number.parseInt($(name).value, 10);
  for (const name of FLOAT_FIELDS) request[name] = $(name).value === "" ? null : Number.parseFloat($(name).value);
  for (const name of BOOL_FIELDS) request[name] = $(name).checked;
  return { ...request, ...img2imgFields() };
}

function updateSchedules() {
  if (!state.options) return;
  const sampler = state.options.samplers.find((s) => s.name === $("sampler_name").value);
  const sigma = new Set(state.options.sigma_schedules);
  for (const option of $("scheduler").options) {
    option.disabled = Boolean(sampler && !sampler.sigma_schedules && sigma.has(option.value));
  }
}

function clearFieldErrors() {
  clearErrors($("generate-form"));
}

// The generate form's fields by the name the API gives them in its errors; the picture's
// strength slider stands for denoising_strength while a picture is chosen.
function generateFields() {
  const fields = {};
  for (const name of [...TEXT_FIELDS, ...CHOICE_FIELDS, ...INT_FIELDS, ...FLOAT_FIELDS, ...BOOL_FIELDS]) fields[name] = name;
  Object.assign(fields, { resize_mode: "resize_mode", mask_blur: "mask_blur", inpainting_fill: "inpainting_fill",
    inpaint_full_res: "inpaint_full_res", init_images: "init-file", mask: "mask-canvas" });
  if (init.picture) fields.denoising_strength = "img2img-strength";
  return fields;
}

function showFormError(err) {
  const first = showErrors($("generate-form"), err, generateFields());
  if (!first) return;
  if (first.closest("#advanced")) $("advanced").open = true;
  first.focus();
}

// ---- errors next to their fields (the generate form and the account forms) --------------

function clearErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of form.querySelectorAll(".field-error")) {
    const input = $(el.dataset.for);
    if (input) {
      const rest = (input.getAttribute("aria-describedby") || "").split(" ").filter((t) => t && t !== el.id);
      if (rest.length) input.setAttribute("aria-describedby", rest.join(" "));
      else input.removeAttribute("aria-describedby");
    }
    el.remove();
  }
  form.querySelector(":scope > .error").textContent = "";
}

// The field is marked, and the API's sentence about it (if it gave one) goes right below it
// and is read out with it.
function markField(input, message) {
  input.setAttribute("aria-invalid", "true");
  if (!message) return;
  const note = document.createElement("p");
  note.className = "field-error";
  note.id = `${input.id}-error`;
  note.dataset.for = input.id;
  note.textContent = message;
  const holder = input.closest(".field");
  if (holder) holder.append(note);
  else (input.closest(".row, .paint") || input).after(note);
  const ids = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  input.setAttribute("aria-describedby", [...ids, note.id].join(" "));
}

// The server's sentence goes at the foot of the form; the fields a 422 names (`errors`:
// [{field, message}]) are marked, each with its message. Without such a list, `guess` picks
// the field the sentence is about ("a password needs at least 10 characters": the first it
// mentions), then `fallback`. Returns the first field marked, for the caller to focus.
function showErrors(form, err, fields, { guess = false, fallback = null } = {}) {
  form.querySelector(":scope > .error").textContent = err.message;
  const named = new Map();
  for (const e of err.errors || []) {
    const name = String(e.field || "").split(".")[0].replace(/\[\d+\]$/, "");
    if (!fields[name] || !$(fields[name])) continue;
    named.set(name, [...(named.get(name) || []), e.message].filter(Boolean));
  }
  if (!named.size && guess) {
    const text = err.message.toLowerCase();
    const at = (n) => text.search(new RegExp(`\\b${n}`));
    const found = Object.keys(fields).filter((n) => at(n) >= 0).sort((a, b) => at(a) - at(b));
    if (found.length) named.set(found[0], []);
  }
  if (!named.size && fallback) named.set(fallback, []);
  let first = null;
  for (const [name, messages] of named) {
    const input = $(fields[name]);
    markField(input, messages.join(" "));
    first = first || input;
  }
  return first;
}

async function generate() {
  if (state.submitting) return;
  clearFieldErrors();
  const request = readForm();
  const button = $("generate");
  // Not `disabled`: a disabled button drops the keyboard focus to the top of the page.
  state.submitting = true;
  button.setAttribute("aria-disabled", "true");
  const key = randomKey();
  try {
    let job;
    try {
      job = await api("POST", "/api/v1/jobs", request, { "Idempotency-Key": key });
    } catch (err) {
      if (err.status !== 0) throw err;
      // A lost answer may mean a queued job: the same Idempotency-Key returns it, not a second one.
      job = await api("POST", "/api/v1/jobs", request, { "Idempotency-Key": key });
    }
    // Pictures and masks stay out of localStorage: they would fill its few megabytes. The
    // picture's strength and the hires fix switch it turned off are not the form's own.
    const kept = { ...request };
    delete kept.init_images;
    delete kept.mask;
    // The prompt box is remembered as written; its English is made again when it is shown.
    for (const name of TEXT_FIELDS) {
      if (kept[`${name}_original`]) kept[name] = kept[`${name}_original`];
      delete kept[`${name}_original`];
    }
    if (request.init_images) {
      const hrStrength = $("denoising_strength").value;
      kept.denoising_strength = hrStrength === "" ? null : Number.parseFloat(hrStrength);
      kept.enable_hr = $("enable_hr").checked;
    }
    localStorage.setItem(FORM_STORE, JSON.stringify(kept));
    trackJob(job);
    announce(job.queue_position ? t("Queued, {jobs} ahead.", { jobs: plural(job.queue_position, "job") }) : t("Queued."));
  } catch (err) {
    showFormError(err);
  } finally {
    state.submitting = false;
    button.removeAttribute("aria-disabled");
  }
}

// ---- image to image and inpainting ---------------------------------------------------------

// The picture to start from ({b64, width, height}) while one is chosen; null for text to image.
const init = { picture: null, painting: false, last: null, cursor: null, painted: false };
const INPUT_TYPES = ["image/png", "image/jpeg", "image/webp"];

// The output size a picture suggests: its own, rounded down to a multiple of 8 within the
// server's limits.
function suggestedSide(side) {
  const limits = (state.options && state.options.limits) || { min_side: 64, max_side: 2048 };
  return Math.min(limits.max_side, Math.max(limits.min_side, Math.floor(side / 8) * 8));
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function loadedImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("unreadable"));
    img.src = src;
  });
}

async function choosePicture(file) {
  $("init-error").textContent = "";
  if (!file) return;
  let url;
  let img;
  try {
    url = await readAsDataUrl(file);
    img = await loadedImage(url);
  } catch (err) {
    $("init-error").textContent = t("This file is not a picture this browser can read.");
    return;
  }
  if (!INPUT_TYPES.includes(file.type)) {
    // The server takes PNG, JPEG and WebP: anything else the browser can show goes as PNG.
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.getContext("2d").drawImage(img, 0, 0);
    url = canvas.toDataURL("image/png");
  }
  init.picture = { b64: url.slice(url.indexOf(",") + 1), width: img.naturalWidth, height: img.naturalHeight };
  $("init-preview").src = url;
  const canvas = $("mask-canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  clearMask();
  $("brush-size").max = String(Math.max(8, Math.round(Math.max(img.naturalWidth, img.naturalHeight) / 2)));
  $("width").value = String(suggestedSide(img.naturalWidth));
  $("height").value = String(suggestedSide(img.naturalHeight));
  $("init-part").hidden = false;
  announce(t("Picture of {w}×{h} chosen: generating starts from it.", { w: img.naturalWidth, h: img.naturalHeight }));
}

function clearPicture() {
  init.picture = null;
  init.painted = false;
  $("init-file").value = "";
  $("init-preview").removeAttribute("src");
  $("init-part").hidden = true;
  $("init-error").textContent = "";
  announce(t("Picture cleared: back to text to image."));
  $("init-file").focus();
}

function maskContext() {
  return $("mask-canvas").getContext("2d");
}

function clearMask() {
  const canvas = $("mask-canvas");
  maskContext().clearRect(0, 0, canvas.width, canvas.height);
  init.painted = false;
}

// Picture pixels per CSS pixel of the canvas as shown.
function maskScale() {
  const canvas = $("mask-canvas");
  const rect = canvas.getBoundingClientRect();
  return rect.width ? canvas.width / rect.width : 1;
}

function brushRadius() {
  return Number($("brush-size").value) / 2;
}

// Strokes are opaque; the canvas is shown see-through over the picture.
function paintLine(from, to) {
  const ctx = maskContext();
  ctx.globalCompositeOperation = "source-over";
  ctx.strokeStyle = ctx.fillStyle = "#ff2d55";
  ctx.lineWidth = brushRadius() * 2;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (from && (from.x !== to.x || from.y !== to.y)) {
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  } else {
    ctx.arc(to.x, to.y, brushRadius(), 0, Math.PI * 2);
    ctx.fill();
  }
  init.painted = true;
}

function pointOf(event) {
  const rect = $("mask-canvas").getBoundingClientRect();
  const scale = maskScale();
  return { x: (event.clientX - rect.left) * scale, y: (event.clientY - rect.top) * scale };
}

function invertMask() {
  const canvas = $("mask-canvas");
  const ctx = maskContext();
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const painted = px[i + 3] >= 128;
    px[i] = 255; px[i + 1] = 45; px[i + 2] = 85;
    px[i + 3] = painted ? 0 : 255;
  }
  ctx.putImageData(data, 0, 0);
  init.painted = hasPaint();
  announce(t("Mask inverted."));
}

function hasPaint() {
  const canvas = $("mask-canvas");
  const px = maskContext().getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < px.length; i += 4) if (px[i] >= 128) return true;
  return false;
}

// The mask as the API takes it: a black and white PNG of the picture's size, white where
// painted (edges of strokes are cut at half cover, so the mask is strictly two-tone).
function maskPng() {
  const canvas = $("mask-canvas");
  const painted = maskContext().getImageData(0, 0, canvas.width, canvas.height);
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const ctx = out.getContext("2d");
  const data = ctx.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < data.data.length; i += 4) {
    const v = painted.data[i + 3] >= 128 ? 255 : 0;
    data.data[i] = data.data[i + 1] = data.data[i + 2] = v;
    data.data[i + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  const url = out.toDataURL("image/png");
  return url.slice(url.indexOf(",") + 1);
}

function showCursor() {
  const cursor = $("mask-cursor");
  if (!init.cursor) {
    cursor.hidden = true;
    return;
  }
  const scale = maskScale();
  const size = (brushRadius() * 2) / scale;
  cursor.style.left = `${init.cursor.x / scale}px`;
  cursor.style.top = `${init.cursor.y / scale}px`;
  cursor.style.width = cursor.style.height = `${size}px`;
  cursor.hidden = false;
}

function onMaskKey(event) {
  const canvas = $("mask-canvas");
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  if (!init.cursor) init.cursor = { x: canvas.width / 2, y: canvas.height / 2 };
  if (event.key === " " || event.key === "Enter") {
    event.preventDefault();
    paintLine(null, init.cursor);
  } else if (moves[event.key]) {
    event.preventDefault();
    const step = Math.max(1, brushRadius());
    const [dx, dy] = moves[event.key];
    const from = { ...init.cursor };
    init.cursor = {
      x: Math.min(canvas.width - 1, Math.max(0, from.x + dx * step)),
      y: Math.min(canvas.height - 1, Math.max(0, from.y + dy * step)),
    };
    if (event.shiftKey) paintLine(from, init.cursor);
  } else {
    return;
  }
  showCursor();
}

// What the form adds to a request for the chosen picture (nothing without one).
function img2imgFields() {
  if (!init.picture) return {};
  const fields = {
    init_images: [init.picture.b64],
    denoising_strength: Number.parseFloat($("img2img-strength").value),
    resize_mode: Number.parseInt($("resize_mode").value, 10),
    // Hires fix is for text to image; the server refuses it with a picture.
    enable_hr: false,
  };
  if (init.painted && hasPaint()) {
    Object.assign(fields, {
      mask: maskPng(),
      mask_blur: $("mask_blur").value === "" ? null : Number.parseInt($("mask_blur").value, 10),
      inpainting_fill: Number.parseInt($("inpainting_fill").value, 10),
      inpaint_full_res: $("inpaint_full_res").checked,
    });
  }
  return fields;
}

function wireImg2img() {
  $("init-file").addEventListener("change", () => choosePicture($("init-file").files[0]));
  const drop = $("init-drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) choosePicture(file);
  });
  $("init-clear").addEventListener("click", clearPicture);
  $("mask-clear").addEventListener("click", () => {
    clearMask();
    announce(t("Mask cleared."));
  });
  $("mask-invert").addEventListener("click", invertMask);
  const strength = $("img2img-strength");
  strength.addEventListener("input", () => { $("img2img-strength-value").textContent = strength.value; });
  const brush = $("brush-size");
  brush.addEventListener("input", () => {
    $("brush-size-value").textContent = brush.value;
    showCursor();
  });

  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    init.painting = true;
    init.last = pointOf(event);
    paintLine(null, init.last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!init.painting) return;
    const point = pointOf(event);
    paintLine(init.last, point);
    init.last = point;
  });
  for (const kind of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(kind, () => {
      init.painting = false;
      init.last = null;
    });
  }
  canvas.addEventListener("keydown", onMaskKey);
  canvas.addEventListener("focus", showCursor);
  canvas.addEventListener("blur", () => { $("mask-cursor").hidden = true; });
}

// ---- jobs in progress ------------------------------------------------------------------

function trackJob(job) {
  if (state.jobs.has(job.id)) return;
  const card = $("job-template").content.firstElementChild.cloneNode(true);
  card.dataset.jobId = job.id;
  card.querySelector(".job-prompt").textContent = job.request.prompt_original || job.request.prompt || t("(no prompt)");
  showEnglish(card.querySelector(".job-english"), job.request);
  if ((job.notes || []).length) card.querySelector(".job-notes").textContent = job.notes.map(serverSentence).join(" ");
  const abort = new AbortController();
  const entry = { card, abort, done: false };
  state.jobs.set(job.id, entry);
  card.querySelector(".job-cancel").addEventListener("click", () => cancelJob(job.id));
  card.querySelector(".job-dismiss").addEventListener("click", () => dismissJob(job.id));
  $("jobs").prepend(card);
  $("jobs-section").hidden = false;
  if (job.state === "queued") showQueued(card, job);
  else if (job.state === "leased" || job.state === "running") setJobState(card, t("Generating…"));
  if (job.progress && job.progress.total) showProgress(card, job.progress);
  entry.eventsUrl = job.events_url;
  if (state.streams < MAX_STREAMS) openStream(job.id);
  else {
    state.waiting.push(job.id);
    if (state.waiting.length === 1) setTimeout(pollWaiting, POLL_MS);
  }
}

function openStream(jobId) {
  const entry = state.jobs.get(jobId);
  state.streams += 1;
  streamEvents(entry.eventsUrl, entry.abort.signal, (kind, data) => onJobEvent(jobId, kind, data)).finally(() => {
    state.streams -= 1;
    while (state.streams < MAX_STREAMS && state.waiting.length) {
      const next = state.waiting.shift();
      const waiting = state.jobs.get(next);
      if (waiting && !waiting.done) openStream(next);
    }
  });
}

// Jobs beyond MAX_STREAMS are polled now and then instead: their place in the queue is what
// changes while they wait, and a finished one is reported as the stream would.
async function pollWaiting() {
  state.waiting = state.waiting.filter((id) => state.jobs.has(id) && !state.jobs.get(id).done);
  for (const id of [...state.waiting]) {
    let job;
    try {
      job = await api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      continue;
    }
    const entry = state.jobs.get(id);
    if (!entry || entry.done) continue;
    if (job.state === "queued") showQueued(entry.card, job);
    else if (job.state === "succeeded") onJobEvent(id, "succeeded", { images: job.images });
    else if (job.state === "failed") onJobEvent(id, "failed", { reason: job.error });
    else if (job.state === "cancelled") onJobEvent(id, "cancelled", { images: job.images });
    else setJobState(entry.card, t("Generating…"));
  }
  state.waiting = state.waiting.filter((id) => state.jobs.has(id) && !state.jobs.get(id).done);
  if (state.waiting.length) setTimeout(pollWaiting, POLL_MS);
}

function onJobEvent(jobId, kind, data) {
  const entry = state.jobs.get(jobId);
  if (!entry) return "final";
  const card = entry.card;
  switch (kind) {
    case "queued":
      showQueued(card, data);
      return null;
    case "started":
      setJobState(card, t("Generating…"));
      card.querySelector(".job-detail").textContent = "";
      return null;
    case "progress":
      showProgress(card, data);
      return null;
    case "succeeded":
      finishJob(jobId, t("Done."));
      announce(t("Finished: {images}.", { images: plural((data.images || []).length, "image") }));
      dismissJob(jobId);
      loadGallery();
      return "final";
    case "failed":
      finishJob(jobId, t("Failed: {reason}", { reason: serverSentence(data.reason || data.error || t("no reason given")) }), true);
      announce(t("A job failed."));
      return "final";
    case "cancelled":
      finishJob(jobId, t("Cancelled."));
      announce(t("Cancelled."));
      if ((data.images || []).length) loadGallery();
      return "final";
    case "error":
      finishJob(jobId, data.reason, true);
      return "final";
    default:
      return null;
  }
}

function setJobState(card, text) {
  const el = card.querySelector(".job-state");
  // Only changes are written, so that screen readers announce each state once.
  if (el.textContent !== text) el.textContent = text;
}

function showQueued(card, data) {
  const ahead = data.queue_position;
  if (ahead === 0) setJobState(card, t("Queued: next in line."));
  else if (typeof ahead === "number") setJobState(card, t("Queued: {jobs} ahead.", { jobs: plural(ahead, "job") }));
  else setJobState(card, t("Queued."));
  card.querySelector(".job-detail").textContent =
    typeof data.eta_seconds === "number" ? t("Ready in about {time}.", { time: duration(data.eta_seconds) }) : "";
}

function showProgress(card, data) {
  setJobState(card, "Generating…");
  if (data.total) {
    const bar = card.querySelector(".job-progress");
    bar.max = data.total;
    bar.value = data.step || 0;
    card.querySelector(".job-detail").textContent = t("Step {step} of {total}", { step: formatNumber(data.step), total: formatNumber(data.total) });
  }
  const img = card.querySelector(".job-preview");
  if (img.hidden) card.querySelector(".job-placeholder").hidden = false;
  if (data.preview) showPreview(card, data.preview);
}

// The first frames of a run decode to a flat dark square: the placeholder stays until a
// frame shows something. Once one has, every later frame is shown as it comes.
async function showPreview(card, src) {
  const img = card.querySelector(".job-preview");
  card.dataset.preview = src;
  if (img.hidden) {
    let frame;
    try {
      frame = await loadedImage(src);
    } catch (err) {
      return;
    }
    if (card.dataset.preview !== src || !hasContent(frame)) return;
  }
  img.src = src;
  img.alt = t("preview of the image being generated");
  img.hidden = false;
  card.querySelector(".job-placeholder").hidden = true;
}

function hasContent(image) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 16;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, 16, 16);
  const px = ctx.getImageData(0, 0, 16, 16).data;
  for (let i = 0; i < px.length; i += 4) {
    if (Math.max(px[i], px[i + 1], px[i + 2]) > 24) return true;
  }
  return false;
}

function finishJob(jobId, text, isError) {
  const entry = state.jobs.get(jobId);
  if (!entry) return;
  entry.done = true;
  const card = entry.card;
  const hadFocus = card.contains(document.activeElement);
  setJobState(card, text);
  card.classList.toggle("failed", Boolean(isError));
  card.querySelector(".job-cancel").hidden = true;
  card.querySelector(".job-dismiss").hidden = false;
  card.querySelector(".job-progress").hidden = true;
  card.querySelector(".job-placeholder").hidden = true;
  // Cancel is gone: a keyboard user who was on it lands on Dismiss, not at the top of the page.
  if (hadFocus) card.querySelector(".job-dismiss").focus();
}

function dismissJob(jobId) {
  const entry = state.jobs.get(jobId);
  if (!entry) return;
  entry.abort.abort();
  const hadFocus = entry.card.contains(document.activeElement);
  entry.card.remove();
  state.jobs.delete(jobId);
  if (!state.jobs.size) $("jobs-section").hidden = true;
  if (hadFocus) $("generate").focus();
}

async function cancelJob(jobId) {
  const entry = state.jobs.get(jobId);
  if (!entry) return;
  const button = entry.card.querySelector(".job-cancel");
  if (button.getAttribute("aria-disabled") === "true") return;
  button.setAttribute("aria-disabled", "true"); // not `disabled`, which would drop the focus
  try {
    const job = await api("DELETE", `/api/v1/jobs/${encodeURIComponent(jobId)}`);
    // A queued job is cancelled at once; a running one stops at its next step (the stream says when).
    if (job.state === "cancelled") onJobEvent(jobId, "cancelled", { images: job.images });
    else setJobState(entry.card, "Cancelling…");
  } catch (err) {
    entry.card.querySelector(".job-detail").textContent = err.message;
    button.removeAttribute("aria-disabled");
  }
}

async function resumeJobs() {
  try {
    const data = await api("GET", "/api/v1/jobs?limit=20");
    for (const job of data.jobs.reverse()) {
      if (["queued", "leased", "running"].includes(job.state)) trackJob(job);
    }
  } catch (err) {
    // A stored key the server no longer knows: say so where the key is entered. (Without a
    // key on a server that needs one, the sign-in panel already says so.)
    if (err.status === 401 && state.key) {
      $("signin").hidden = false;
      if (state.kind === "key") $("key-details").open = true;
      $(state.kind === "key" ? "signin-error" : "login-error").textContent = err.message;
    }
  }
}

// ---- gallery ---------------------------------------------------------------------------

async function loadGallery() {
  $("gallery-error").textContent = "";
  let data;
  try {
    data = await api("GET", `/api/v1/images?limit=${GALLERY_LIMIT}`);
  } catch (err) {
    if (err.status !== 401) $("gallery-error").textContent = err.message;
    $("gallery").replaceChildren();
    $("gallery-empty").hidden = false;
    return;
  }
  // Redrawing must not throw a keyboard user out of the gallery: remember which control of
  // which image had the focus, and give it back.
  const focused = document.activeElement;
  const focusedCard = focused && focused.closest ? focused.closest("#gallery > li") : null;
  const restore = focusedCard ? [focusedCard.dataset.imageId, focused.className] : null;
  const items = data.images.map(imageCard);
  $("gallery").replaceChildren(...items);
  $("gallery-empty").hidden = items.length > 0;
  if (restore) {
    const card = items.find((c) => c.dataset.imageId === restore[0]);
    const control = card && restore[1] ? card.querySelector(`.${restore[1].split(" ")[0]}`) : null;
    if (control) control.focus();
  }
}

function summary(item) {
  const r = item.request;
  const parts = [t("seed {seed}", { seed: item.seed }), t("{n} steps", { n: formatNumber(r.steps) }), r.sampler_name];
  if (r.scheduler && r.scheduler !== "Automatic") parts.push(r.scheduler);
  parts.push(`CFG ${r.cfg_scale}`, `${r.width}×${r.height}`, item.model);
  return parts.join(" · ");
}

function imageCard(item) {
  const card = $("image-template").content.firstElementChild.cloneNode(true);
  card.dataset.imageId = item.id;
  const prompt = item.request.prompt_original || item.request.prompt || t("(no prompt)");
  card.querySelector(".image-prompt").textContent = prompt;
  showEnglish(card.querySelector(".image-english"), item.request);
  card.querySelector(".image-summary").textContent = summary(item);
  card.querySelector(".image-infotext").textContent = item.infotext;
  const img = card.querySelector(".image-img");
  img.alt = prompt;
  img.width = item.request.width;
  img.height = item.request.height;
  const download = card.querySelector(".image-download");
  download.download = `kakumei-${item.seed}.png`;
  download.setAttribute("aria-label", t("Download the image of seed {seed}", { seed: item.seed }));
  loadImage(item, [img], card.querySelector(".image-open"), download);
  card.querySelector(".image-reuse").addEventListener("click", () => {
    setForm({ ...item.request, seed: item.seed, model: item.model });
    $("prompt").focus();
    announce(t("Settings copied into the form."));
  });
  card.querySelector(".image-same-seed").addEventListener("click", () => {
    setForm({ ...item.request, seed: item.seed, model: item.model, prompt: "", prompt_original: null });
    $("prompt").focus();
    announce(t("Seed {seed} kept; write a new prompt.", { seed: item.seed }));
  });
  card.querySelector(".image-delete").addEventListener("click", () => deleteImage(item, card));
  return card;
}

// Images are fetched with the API key (an <img src> cannot send it) and shown as blob URLs.
async function loadImage(item, imgs, ...links) {
  let url = state.imageUrls.get(item.id);
  if (!url) {
    try {
      const res = await fetch(item.url, { headers: authHeaders() });
      if (!res.ok) throw new Error(String(res.status));
      url = URL.createObjectURL(await res.blob());
      state.imageUrls.set(item.id, url);
    } catch (err) {
      for (const img of imgs) img.alt = `${img.alt} ${t("(could not be loaded)")}`;
      return;
    }
  }
  for (const img of imgs) img.src = url;
  for (const a of links) a.href = url;
}

async function deleteImage(item, card) {
  if (!window.confirm(t("Delete this image? This cannot be undone."))) return;
  const next = card.nextElementSibling || card.previousElementSibling;
  try {
    await api("DELETE", `/api/v1/images/${encodeURIComponent(item.id)}`);
  } catch (err) {
    $("gallery-error").textContent = err.message;
    return;
  }
  const url = state.imageUrls.get(item.id);
  if (url) URL.revokeObjectURL(url);
  state.imageUrls.delete(item.id);
  card.remove();
  $("gallery-empty").hidden = $("gallery").children.length > 0;
  // Keep keyboard users in the gallery rather than dropping focus to the top of the page.
  if (next) next.querySelector("button").focus();
  else $("prompt").focus();
  announce(t("Image deleted."));
}

// ---- account: guest key, sign-up, sign-in, keys, /me, terms -----------------------------

// Sentences of the account panels, in one place.
const SAY = {
  get guest() { return t("guest"); },
  get anonymous() { return t("anonymous"); },
  get signedIn() { return t("signed in"); },
  get enterName() { return t("Enter your name."); },
  get enterPassword() { return t("Enter your password."); },
  get enterKey() { return t("Enter the API key the server's operator gave you."); },
  signedUp: (name) => t("Welcome, {name}: your account is ready.", { name }),
  signedInAs: (name) => t("Signed in as {name}.", { name }),
  get signedOut() { return t("Signed out."); },
  credits: (n) => t("You have {n} credits, earned by running a worker and spent as you generate.", { n }),
  get noCredits() {
    return t("No credits yet: you are served all the same, and running a worker for this server earns credits and a larger share.");
  },
  share: (pct) => t("While you have images waiting, about {pct} of the machine is yours.", { pct }),
  sources: {
    get merit() { return t("Your share grows with what your workers contribute."); },
    get admin() { return t("The operator set your share."); },
    get anonymous() { return t("Visitors without a key share one place in line."); },
  },
  freeCaps: (caps) => t("Free tier for now: up to {pixels} pixels, {steps} steps and {images} per job.", {
    pixels: formatNumber(caps.max_pixels), steps: formatNumber(caps.max_steps), images: plural(caps.max_images, "image") }),
  get unnamedKey() { return t("unnamed key"); },
  keyMade: (when) => t("made {when}", { when }),
  get keyCreated() { return t("Key created: copy it now."); },
  get keyCopied() { return t("Key copied."); },
  get keyRevoked() { return t("Key revoked."); },
  revokeKey: (label) => t("Revoke the key {label}", { label }),
  confirmRevoke: (label) => t("Revoke the key \"{label}\"? Programs that use it stop working.", { label }),
};

// Fields of the account forms, by the name the API gives them in its errors.
const ACCOUNT_FIELDS = {
  "login-form": { name: "login-name", password: "login-password" },
  "signup-form": { name: "signup-name", password: "signup-password", invite: "signup-invite" },
  "signin-form": { key: "api-key" },
};

function setKey(key, kind) {
  state.key = key;
  state.kind = key ? kind : "";
  if (key) {
    localStorage.setItem(KEY_STORE, key);
    localStorage.setItem(KIND_STORE, kind);
  } else {
    localStorage.removeItem(KEY_STORE);
    localStorage.removeItem(KIND_STORE);
  }
}

const isMember = () => Boolean(state.key) && state.kind !== "guest";

// A first visit takes a guest key, so that the visitor's images are theirs alone (not shared
// with everyone behind the same address) and can later move into an account. Where the server
// has no guests (403, or 404 on an older server) or this network started too many (429), the
// page works without a key as before, if the server allows that; showAccount says if not.
async function takeGuestKey() {
  try {
    const guest = await api("POST", "/api/v1/guests", undefined, {}, "");
    setKey(guest.key, "guest");
  } catch (err) {
    setKey("", "");
  }
}

// At start: a stored guest key the server no longer knows (a new database) is replaced by a
// new one; a missing key is taken. An unknown account key is left for the user to see.
async function settleKey() {
  if (state.key && state.kind === "guest") {
    try {
      await api("GET", "/api/v1/jobs?limit=1");
    } catch (err) {
      if (err.status === 401) setKey("", "");
    }
  }
  if (!state.key) await takeGuestKey();
  await refreshAccount();
}

function signupMode() {
  // "off", "invite" or "open"; a server that does not say has no sign-up.
  return (state.options && state.options.signup) || "off";
}

function showAccount() {
  const member = isMember();
  const guest = Boolean(state.key) && !member;
  $("who").textContent = member ? state.name || SAY.signedIn : guest ? SAY.guest : SAY.anonymous;
  const mode = signupMode();
  $("signup-open").hidden = member || mode === "off";
  $("signin-open").hidden = member;
  $("signout").hidden = !member;
  $("signup-invite-field").hidden = mode !== "invite";
  $("signup-keeps").hidden = !guest;
  $("signin-guest-note").hidden = !guest || mode === "off";
  if (member || mode === "off") $("signup").hidden = true;
  if (member) $("signin").hidden = true;
  const needKey = !state.key && state.options && !state.options.allow_anonymous;
  $("signin-needed").hidden = !needKey;
  if (needKey) {
    $("signin").hidden = false;
    // Without sign-up, a key from the operator is the likely way in.
    if (mode === "off") $("key-details").open = true;
  }
  $("keys").hidden = !member;
  if (!member) {
    $("key-new").hidden = true;
    $("key-new-value").textContent = "";
  }
}

function clearAccountErrors(formId) {
  clearErrors($(formId));
}

// The fields a 422 names, else the field the sentence is about; "wrong name or password"
// (401) is about neither on its own.
function showAccountError(formId, err, fallbackField) {
  const form = $(formId);
  const first = showErrors(form, err, ACCOUNT_FIELDS[formId], { guess: err.status !== 401, fallback: fallbackField });
  (first || form.querySelector("input")).focus();
}

function openPanel(id, focusId) {
  for (const other of ["signin", "signup"]) {
    if (other !== id && $("signin-needed").hidden) $(other).hidden = true;
  }
  $(id).hidden = false;
  $(focusId).focus();
}

function closePanel(id) {
  $(id).hidden = true;
  clearAccountErrors(id === "signin" ? "login-form" : "signup-form");
  const opener = $(`${id}-open`);
  (opener.hidden ? $("prompt") : opener).focus();
}

async function signedIn(key, kind, name, message) {
  setKey(key, kind);
  state.name = name || "";
  for (const form of ["login-form", "signup-form", "signin-form"]) {
    for (const input of $(form).querySelectorAll("input")) input.value = "";
    clearAccountErrors(form);
  }
  $("signin").hidden = true;
  $("signup").hidden = true;
  await refreshAccount();
  if (message) announce(message);
  $("prompt").focus();
}

async function signUp(event) {
  event.preventDefault();
  clearAccountErrors("signup-form");
  const body = { name: $("signup-name").value.trim(), password: $("signup-password").value };
  if (!body.name) return showAccountError("signup-form", new ApiError(0, SAY.enterName), "name");
  if (!body.password) return showAccountError("signup-form", new ApiError(0, SAY.enterPassword), "password");
  if (signupMode() === "invite") body.invite = $("signup-invite").value.trim();
  // From a guest session the guest's key goes along: the server turns that guest into the
  // account, so the images made so far stay.
  const key = state.kind === "guest" ? state.key : "";
  let account;
  try {
    account = await api("POST", "/api/v1/accounts", body, {}, key);
  } catch (err) {
    const aboutInvite = err.status === 403 && signupMode() === "invite" ? "invite" : null;
    return showAccountError("signup-form", err, aboutInvite);
  }
  await signedIn(account.key, "account", account.name || body.name, SAY.signedUp(account.name || body.name));
}

async function logIn(event) {
  event.preventDefault();
  clearAccountErrors("login-form");
  const body = { name: $("login-name").value.trim(), password: $("login-password").value };
  if (!body.name) return showAccountError("login-form", new ApiError(0, SAY.enterName), "name");
  if (!body.password) return showAccountError("login-form", new ApiError(0, SAY.enterPassword), "password");
  let session;
  try {
    session = await api("POST", "/api/v1/sessions", body, {}, "");
  } catch (err) {
    return showAccountError("login-form", err);
  }
  await signedIn(session.key, "account", body.name, SAY.signedInAs(body.name));
}

async function useKey(event) {
  event.preventDefault();
  clearAccountErrors("signin-form");
  const key = $("api-key").value.trim();
  if (!key) return showAccountError("signin-form", new ApiError(0, SAY.enterKey), "key");
  try {
    await api("GET", "/api/v1/jobs?limit=1", undefined, {}, key); // any authenticated read tells whether the key is known
  } catch (err) {
    return showAccountError("signin-form", err, "key");
  }
  await signedIn(key, "key", "", null);
}

async function signOut() {
  // A key from signing in is this browser's alone: revoke it rather than leave it working.
  // A pasted key may be in use elsewhere, so it is only forgotten.
  if (state.kind === "account") {
    try {
      const current = (await listKeys()).find((k) => k.current);
      if (current) await api("DELETE", `/api/v1/me/keys/${encodeURIComponent(current.id)}`);
    } catch (err) {
      // Forgetting the key is what signing out needs; a server that cannot revoke it now
      // leaves it listed under the account's keys.
    }
  }
  setKey("", "");
  state.name = "";
  $("me").hidden = true;
  await takeGuestKey();
  await refreshAccount();
  announce(SAY.signedOut);
  $("signin-open").focus();
}

// ---- API keys of an account ----

async function listKeys() {
  const data = await api("GET", "/api/v1/me/keys");
  return Array.isArray(data) ? data : (data && data.keys) || [];
}

async function loadKeys() {
  if (!isMember()) return;
  $("keys-error").textContent = "";
  let keys;
  try {
    keys = await listKeys();
  } catch (err) {
    // A pasted key of a user without keys of their own (or an older server): no panel.
    if ([403, 404].includes(err.status)) $("keys").hidden = true;
    else $("keys-error").textContent = err.message;
    return;
  }
  $("keys-list").replaceChildren(...keys.map(keyItem));
}

function keyItem(key) {
  const item = $("key-template").content.firstElementChild.cloneNode(true);
  const label = key.label || SAY.unnamedKey;
  item.dataset.keyId = key.id;
  item.querySelector(".key-label").textContent = label;
  const made = key.created_at ? whenOf(key.created_at) : null;
  item.querySelector(".key-created").textContent = made && !Number.isNaN(made.getTime()) ? SAY.keyMade(made.toLocaleDateString(LANG)) : "";
  if (!key.current) item.querySelector(".key-current").remove();
  const revoke = item.querySelector(".key-revoke");
  // The key this browser signs in with goes with "Sign out", not from this list.
  revoke.hidden = Boolean(key.current);
  revoke.setAttribute("aria-label", SAY.revokeKey(label));
  revoke.addEventListener("click", () => revokeKey(key, label));
  return item;
}

async function revokeKey(key, label) {
  if (!window.confirm(SAY.confirmRevoke(label))) return;
  try {
    await api("DELETE", `/api/v1/me/keys/${encodeURIComponent(key.id)}`);
  } catch (err) {
    $("keys-error").textContent = err.message;
    return;
  }
  await loadKeys();
  announce(SAY.keyRevoked);
  $("key-label").focus();
}

async function mintKey(event) {
  event.preventDefault();
  $("keys-error").textContent = "";
  const label = $("key-label").value.trim();
  let minted;
  try {
    minted = await api("POST", "/api/v1/me/keys", label ? { label } : {});
  } catch (err) {
    $("keys-error").textContent = err.message;
    $("key-label").focus();
    return;
  }
  $("key-label").value = "";
  $("key-new-value").textContent = minted.key;
  $("key-new").hidden = false;
  await loadKeys();
  announce(SAY.keyCreated);
  $("key-copy").focus();
}

async function copyNewKey() {
  const text = $("key-new-value").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    // No clipboard API outside a secure context (a LAN server over plain HTTP): select the
    // key, so that the user's own copy takes it.
    const range = document.createRange();
    range.selectNodeContents($("key-new-value"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    if (!document.execCommand("copy")) return;
  }
  announce(SAY.keyCopied);
}

// ---- /me: in words first, the numbers on request ----

async function loadMe() {
  // /api/v1/me (balance, share, group, terms) exists only on servers that have it: a 404
  // hides the panel rather than showing an error.
  const panel = $("me");
  let me;
  try {
    me = await api("GET", "/api/v1/me");
  } catch (err) {
    panel.hidden = true;
    $("terms").hidden = true;
    return;
  }
  me = me || {};
  if (isMember() && me.name) {
    state.name = me.name;
    $("who").textContent = me.name;
  }
  const member = isMember() && !me.anonymous;
  const group = me.group && me.group.sentence ? serverSentence(me.group.sentence) : "";
  $("me-group").textContent = group;
  let balance = "";
  if (member && typeof me.balance === "number") balance = me.balance > 0 ? SAY.credits(formatNumber(me.balance)) : SAY.noCredits;
  $("me-balance").textContent = balance;

  const notes = [];
  if (typeof me.share === "number" && me.share > 0 && me.share <= 1) notes.push(SAY.share(`${formatNumber(me.share * 100)} %`));
  // Where the share comes from, for those who can change it (a guest runs no workers) and
  // where the group's sentence has not said it already.
  const source = SAY.sources[me.weight_source];
  if (source && state.kind !== "guest" && !(me.weight_source === "anonymous" && group)) notes.push(source);
  const caps = me.free_tier && me.limits && me.limits.free_caps;
  if (caps) notes.push(SAY.freeCaps(caps));
  $("me-notes").textContent = notes.join(" ");
  // The server's own sentence on why this account cannot submit now (a ban, a timeout).
  $("me-standing").textContent = me.standing && me.standing.allowed === false ? me.standing.reason || "" : "";

  const figures = [
    ["balance", t("Credits"), formatNumber],
    ["weight", t("Weight (how much your share counts)"), formatNumber],
    ["share", t("Share of the machine"), (v) => (v <= 1 ? `${formatNumber(v * 100)} %` : formatNumber(v))],
    ["virtual_counter", t("Fair-share counter (work served, divided by weight)"), formatNumber],
  ].filter(([key]) => typeof me[key] === "number");
  if (me.group && me.group.network) figures.push(["network", t("Network"), String, me.group.network]);
  if (me.group && typeof me.group.others === "number") figures.push(["others", t("Others sharing your group"), formatNumber, me.group.others]);
  $("me-figures").replaceChildren(
    ...figures.map(([key, label, format, value]) => {
      const pair = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.dataset.field = key;
      dd.textContent = format(value === undefined ? me[key] : value);
      pair.append(dt, dd);
      return pair;
    }),
  );
  $("me-numbers").hidden = figures.length === 0;
  panel.hidden = !(group || balance || notes.length || $("me-standing").textContent || figures.length);
  showTerms(me.terms);
}

function showTerms(terms) {
  const needed = terms && terms.required && !terms.accepted;
  $("terms").hidden = !needed;
  if (!needed) return;
  $("terms-text").textContent = terms.text || "";
  const link = $("terms-link");
  link.hidden = !terms.url;
  if (terms.url) link.href = terms.url;
  $("terms-accept").onclick = async () => {
    $("terms-error").textContent = "";
    try {
      await api("POST", terms.accept_url || "/api/v1/me/terms", { accepted: true, version: terms.version });
      await loadMe();
      $("prompt").focus();
    } catch (err) {
      $("terms-error").textContent = err.message;
    }
  };
}

async function refreshAccount() {
  for (const id of [...state.jobs.keys()]) dismissJob(id);
  showAccount();
  await Promise.all([loadMe(), loadGallery(), resumeJobs(), loadKeys()]);
}

function wireAccount() {
  $("signin-open").addEventListener("click", () => openPanel("signin", "login-name"));
  $("signup-open").addEventListener("click", () => openPanel("signup", "signup-name"));
  $("signin").querySelector(".panel-cancel").addEventListener("click", () => closePanel("signin"));
  $("signup").querySelector(".panel-cancel").addEventListener("click", () => closePanel("signup"));
  $("login-form").addEventListener("submit", logIn);
  $("signup-form").addEventListener("submit", signUp);
  $("signin-form").addEventListener("submit", useKey);
  $("signout").addEventListener("click", signOut);
  $("key-form").addEventListener("submit", mintKey);
  $("key-copy").addEventListener("click", copyNewKey);
}

// ---- small helpers -----------------------------------------------------------------------

function announce(text) {
  $("status").textContent = text;
}

// "1 job", "3 jobs": each form is a string of its own, so a language without plurals (or
// with more of them) says it its own way.
const PLURALS = {
  job: ["{n} job", "{n} jobs"],
  image: ["{n} image", "{n} images"],
};

function plural(n, word) {
  const [one, many] = PLURALS[word];
  return t(n === 1 ? one : many, { n: formatNumber(n) });
}

function duration(seconds) {
  if (seconds < 1) return t("a second");
  if (seconds < 90) return t("{n} s", { n: formatNumber(Math.round(seconds)) });
  if (seconds < 5400) return t("{n} min", { n: formatNumber(Math.round(seconds / 60)) });
  return t("{n} h", { n: formatNumber(Number((seconds / 3600).toFixed(1))) });
}

// The API gives times as seconds since 1970 (or as ISO text).
function whenOf(value) {
  return new Date(typeof value === "number" ? value * 1000 : value);
}

function formatNumber(v) {
  return Number(v).toLocaleString(LANG, { maximumFractionDigits: 2 });
}

// ---- start -------------------------------------------------------------------------------

async function start() {
  await loadLanguage();
  try {
    state.options = await api("GET", "/api/v1/options");
  } catch (err) {
    $("form-error").textContent = err.message;
    return;
  }
  const o = state.options;
  fillSelect($("model"), o.models);
  fillSelect($("sampler_name"), o.samplers.map((s) => s.name));
  fillSelect($("scheduler"), o.schedules);
  fillSelect($("hr_upscaler"), o.hr_upscalers);
  $("steps").max = o.limits.max_steps;
  $("cfg_scale").max = o.limits.max_cfg_scale;
  for (const side of ["width", "height"]) {
    $(side).min = o.limits.min_side;
    $(side).max = o.limits.max_side;
  }
  $("batch_size").max = o.limits.max_batch_size;
  $("n_iter").max = o.limits.max_n_iter;
  $("seed").min = -1;
  $("seed").max = o.limits.max_seed;
  setForm({ ...o.defaults, model: o.default_model });
  $("advanced").open = false;
  const last = localStorage.getItem(FORM_STORE);
  if (last) {
    try {
      const saved = JSON.parse(last);
      if (!o.models.includes(saved.model)) delete saved.model;
      setForm(saved);
    } catch (err) {
      localStorage.removeItem(FORM_STORE);
    }
  }

  $("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.target.closest(".account-form")) {
      event.preventDefault();
      generate();
    }
  });
  $("sampler_name").addEventListener("change", updateSchedules);
  // Following the link alone moves the scroll position, not always the keyboard focus.
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    $("prompt").focus();
  });
  $("seed-random").addEventListener("click", () => {
    $("seed").value = "-1";
  });
  wireImg2img();
  // The shortcut is worth a word only where there is a keyboard, which a fine pointer that
  // can hover suggests (not a phone or tablet).
  $("generate-hint").hidden = !window.matchMedia("(hover: hover) and (pointer: fine)").matches;
  wireAccount();
  const draft = sessionStorage.getItem(DRAFT_STORE);
  if (draft) {
    sessionStorage.removeItem(DRAFT_STORE);
    try {
      const typed = JSON.parse(draft);
      for (const name of TEXT_FIELDS) if (typeof typed[name] === "string") $(name).value = typed[name];
    } catch (err) {
      // a damaged draft is only lost typing
    }
  }
  wireTranslation();
  await settleKey();
  document.body.dataset.ready = "true";
}

start();

// The shopper's page: send a photo (or a box of it) to /api/search, narrow by facets, click a result for "more like
// this".
"use strict";

const $ = (id) => document.getElementById(id);
const MIN_BOX = 0.04; // a drag smaller than this share of the photo's width or height is a tap, not a box
// A phone's photo is 3 to 5 MB; the search reads 224 px (448 for six views), and a box of a quarter of the photo
// still has that at this side. So the page sends the photo upright, as a JPEG of at most UPLOAD_SIDE px: about
// 150 KB, a second on a slow mobile link instead of half a minute.
const UPLOAD_SIDE = 1024;
const UPLOAD_QUALITY = 0.9;
let lastPhoto = null; // what is sent: the shrunk JPEG, or the file itself when the browser cannot read it
let photoSize = null; // [width, height] of the upright photo the shopper chose, when the browser could read it
let box = null; // the crop as fractions [left, top, right, bottom] of the photo, or null for the whole photo
let facetColumns = [];
let queryId = null; // the query_id of the results shown: what a click on one of them is reported against

// A random id this browser keeps (never the shopper's name or address): it links a search to the clicks on its
// results, and keeps the shopper in one arm of an A/B test on every visit.
const CLIENT_KEY = "visual-search-client-id";
function clientId() {
  try {
    let id = localStorage.getItem(CLIENT_KEY);
    if (!id) {
      id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
      localStorage.setItem(CLIENT_KEY, id);
    }
    return id;
  } catch (err) {
    return null; // storage blocked (private mode in some browsers): searches stay anonymous
  }
}
const CLIENT_ID = clientId();

// Report what the shopper did with the result at `rank` of the query shown (UBI's event shape). sendBeacon
// outlives the page and never delays what the shopper does next.
function report(action, productId, rank) {
  if (!queryId) return;
  const event = { action_name: action, query_id: queryId, client_id: CLIENT_ID,
                  event_attributes: { object: { object_id: String(productId) }, position: { ordinal: rank } } };
  const body = new Blob([JSON.stringify(event)], { type: "application/json" });
  if (!(navigator.sendBeacon && navigator.sendBeacon("/api/events", body))) {
    fetch("/api/events", { method: "POST", body, keepalive: true }).catch(() => {});
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function filters() {
  const params = new URLSearchParams({ k: $("k").value });
  for (const column of facetColumns) {
    const value = $(`facet-${column}`).value;
    if (value) params.set(column, value);
  }
  if ($("min-score").value) params.set("min_score", $("min-score").value);
  if (!$("collapse-label").hidden) params.set("collapse", $("collapse").checked ? "true" : "false");
  return params;
}

// "baseColour" -> "Base colour", "masterCategory" -> "Master category"
function label(column) {
  const words = column.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/[_-]+/g, " ").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function render(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of results) {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.productId = r.product_id;
    const open = document.createElement("button");
    open.className = "open";
    open.type = "button";
    open.title = `More like ${r.name}`;
    const img = document.createElement("img");
    img.src = r.image_url;
    img.alt = r.name;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = r.name;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `${r.category} · ${(r.score * 100).toFixed(1)}% match`;
    meta.append(name, score);
    open.append(img, meta);
    open.addEventListener("click", () => {
      report("more_like_this", r.product_id, r.rank);
      moreLike(r.product_id, r.name);
    });
    card.append(open);
    if (r.images && r.images.length > 1) card.append(flipper(r, img));
    grid.append(card);
  }
}

// A product with several photos opens on the one that matched; the arrows flip through the others.
function flipper(r, img) {
  const n = r.images.length;
  let at = r.matched_image || 0;
  const bar = document.createElement("div");
  bar.className = "flip";
  const prev = document.createElement("button");
  const next = document.createElement("button");
  const count = document.createElement("span");
  count.className = "count";
  prev.type = next.type = "button";
  prev.textContent = "‹";
  next.textContent = "›";
  prev.setAttribute("aria-label", `Previous photo of ${r.name}`);
  next.setAttribute("aria-label", `Next photo of ${r.name}`);
  const show = () => {
    img.src = r.images[at];
    count.textContent = `photo ${at + 1}/${n}${at === r.matched_image ? " · matched" : ""}`;
  };
  prev.addEventListener("click", () => { at = (at + n - 1) % n; show(); });
  next.addEventListener("click", () => { at = (at + 1) % n; show(); });
  show();
  bar.append(prev, count, next);
  return bar;
}

async function call(url, options = {}) {
  const headers = CLIENT_ID ? { "X-Client-Id": CLIENT_ID } : {};
  const response = await fetch(url, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

// The photo upright (EXIF orientation applied) at most UPLOAD_SIDE px, as a JPEG on white (transparency would turn
// black); a file already that small is sent as it is. A format the browser cannot decode (HEIC outside Safari) is
// sent as it is too: the service decodes it.
async function shrink(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return { blob: file, size: null };
  }
  const size = [bitmap.width, bitmap.height];
  const scale = Math.min(1, UPLOAD_SIDE / Math.max(...size));
  if (scale === 1 && file.size <= 300 * 1024 && /^image\/(jpeg|png|webp)$/.test(file.type)) {
    bitmap.close();
    return { blob: file, size };
  }
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(size[0] * scale));
  canvas.height = Math.max(1, Math.round(size[1] * scale));
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((done) => canvas.toBlob(done, "image/jpeg", UPLOAD_QUALITY));
  return { blob: blob || file, size };
}

async function newPhoto(file) {
  setStatus("Reading the photo…");
  const { blob, size } = await shrink(file);
  lastPhoto = blob;
  photoSize = size;
  const url = URL.createObjectURL(blob);
  $("preview").src = url;
  $("preview").hidden = false;
  $("crop-image").src = url;
  $("crop").hidden = false;
  setBox(null);
  searchPhoto();
}

// The box's size in the pixels of the photo the shopper chose (the box is fractions, the same on any size of it).
function boxPixels(crop) {
  if (!photoSize) return crop.size;
  return [Math.round((box[2] - box[0]) * photoSize[0]), Math.round((box[3] - box[1]) * photoSize[1])];
}

async function searchPhoto() {
  if (!lastPhoto) return;
  $("similar-to").hidden = true;
  setStatus("Searching…");
  const form = new FormData();
  form.append("image", lastPhoto, lastPhoto.name || "photo.jpg");
  const params = filters();
  if (box) params.set("bbox", box.map((v) => v.toFixed(4)).join(","));
  try {
    const body = await call(`/api/search?${params}`, { method: "POST", body: form });
    queryId = body.query_id;
    render(body.results);
    const ms = Math.round(body.timings_ms.embed + body.timings_ms.search);
    const what = body.crop ? ` for the area you selected (${boxPixels(body.crop).join("×")} px of your photo)` : "";
    setStatus(`${body.results.length} similar products${what} (${ms} ms)`);
  } catch (err) {
    queryId = null;
    render([]);
    setStatus(err.message, true);
  }
}

// The crop box: drawn with Pointer Events, so a finger and a mouse work the same way.
function setBox(fractions) {
  box = fractions;
  const shown = $("crop-box");
  shown.hidden = !box;
  $("clear-crop").hidden = !box;
  $("crop-hint").textContent = box ? "Searching the area in the box. Drag again to change it."
    : "Drag a box over the product you want (finger or mouse) to search only that part.";
  if (box) drawBox(box);
}

function drawBox([left, top, right, bottom]) {
  const style = $("crop-box").style;
  style.left = `${left * 100}%`;
  style.top = `${top * 100}%`;
  style.width = `${(right - left) * 100}%`;
  style.height = `${(bottom - top) * 100}%`;
  $("crop-box").hidden = false;
}

function fraction(event) {
  const rect = $("crop-image").getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
}

let dragStart = null;
$("crop-frame").addEventListener("pointerdown", (e) => {
  e.preventDefault();
  dragStart = fraction(e);
  $("crop-frame").setPointerCapture?.(e.pointerId);
});
$("crop-frame").addEventListener("pointermove", (e) => {
  if (!dragStart) return;
  const [x, y] = fraction(e);
  drawBox([Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x), Math.max(dragStart[1], y)]);
});
for (const type of ["pointerup", "pointercancel"]) {
  $("crop-frame").addEventListener(type, (e) => {
    if (!dragStart) return;
    const [x, y] = fraction(e);
    const drawn = [Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x), Math.max(dragStart[1], y)];
    dragStart = null;
    if (type === "pointerup" && drawn[2] - drawn[0] >= MIN_BOX && drawn[3] - drawn[1] >= MIN_BOX) {
      setBox(drawn);
      searchPhoto();
    } else {
      setBox(box); // a tap or a cancelled drag keeps the box there was
    }
  });
}
$("clear-crop").addEventListener("click", () => { setBox(null); searchPhoto(); });

let shownProduct = null; // [product id, name] while "more like this" results are shown

async function moreLike(productId, name) {
  shownProduct = [productId, name];
  setStatus("Finding similar products…");
  try {
    const body = await call(`/api/products/${encodeURIComponent(productId)}/similar?${filters()}`);
    $("similar-name").textContent = name;
    $("similar-to").hidden = false;
    queryId = body.query_id;
    render(body.results);
    setStatus(`${body.results.length} products like “${name}”`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    setStatus(err.message, true);
  }
}

// One select per low-cardinality column of the catalog, each value with its product count: category beside the
// other controls, the rest under "More filters" (folded, so that a phone shows the results first).
async function loadFacets() {
  try {
    const body = await call("/api/filters");
    facetColumns = Object.keys(body.facets).sort((a, b) => (b === "category") - (a === "category"));
    const before = $("facets").firstChild;
    for (const column of facetColumns) {
      const wrap = document.createElement("label");
      wrap.append(`${label(column)} `);
      const select = document.createElement("select");
      select.id = `facet-${column}`;
      select.dataset.column = column;
      const all = document.createElement("option");
      all.value = "";
      all.textContent = "All";
      select.append(all);
      for (const { value, count } of body.facets[column]) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = `${value} (${count})`;
        select.append(option);
      }
      select.addEventListener("change", refresh);
      wrap.append(select);
      if (column === "category") $("facets").insertBefore(wrap, before);
      else $("more-facets").append(wrap);
    }
    $("more-filters").hidden = facetColumns.filter((c) => c !== "category").length === 0;
    $("collapse-label").hidden = !body.collapse;
  } catch (err) {
    setStatus(`The catalog is not ready yet: ${err.message}`, true);
  }
}

function refresh() {
  if (!$("similar-to").hidden && shownProduct) moreLike(...shownProduct);
  else searchPhoto();
}

$("file").addEventListener("change", (e) => e.target.files[0] && newPhoto(e.target.files[0]));
$("drop").addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && $("file").click());
for (const type of ["dragenter", "dragover"]) {
  $("drop").addEventListener(type, (e) => { e.preventDefault(); $("drop").classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  $("drop").addEventListener(type, () => $("drop").classList.remove("over"));
}
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files[0]) newPhoto(e.dataTransfer.files[0]);
});
for (const id of ["k", "min-score", "collapse"]) $(id).addEventListener("change", refresh);
$("back").addEventListener("click", () => { shownProduct = null; searchPhoto(); });
loadFacets();

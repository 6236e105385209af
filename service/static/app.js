// The shopper's page: send a photo to /api/search, show the products found, click one for "more like this".
"use strict";

const $ = (id) => document.getElementById(id);
let lastPhoto = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function filters() {
  const params = new URLSearchParams({ k: $("k").value });
  if ($("category").value) params.set("category", $("category").value);
  return params;
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
    open.addEventListener("click", () => moreLike(r.product_id, r.name));
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

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

async function searchPhoto(file) {
  lastPhoto = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("similar-to").hidden = true;
  setStatus("Searching…");
  const form = new FormData();
  form.append("image", file);
  try {
    const body = await call(`/api/search?${filters()}`, { method: "POST", body: form });
    render(body.results);
    setStatus(`${body.results.length} similar products (${Math.round(body.timings_ms.embed + body.timings_ms.search)} ms)`);
  } catch (err) {
    render([]);
    setStatus(err.message, true);
  }
}

async function moreLike(productId, name) {
  setStatus("Finding similar products…");
  try {
    const body = await call(`/api/products/${encodeURIComponent(productId)}/similar?${filters()}`);
    $("similar-name").textContent = name;
    $("similar-to").hidden = false;
    render(body.results);
    setStatus(`${body.results.length} products like “${name}”`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function loadCategories() {
  try {
    const body = await call("/api/filters");
    for (const { value, count } of body.facets.category || []) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = `${value} (${count})`;
      $("category").append(option);
    }
  } catch (err) {
    setStatus(`The catalog is not ready yet: ${err.message}`, true);
  }
}

$("file").addEventListener("change", (e) => e.target.files[0] && searchPhoto(e.target.files[0]));
$("drop").addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && $("file").click());
for (const type of ["dragenter", "dragover"]) {
  $("drop").addEventListener(type, (e) => { e.preventDefault(); $("drop").classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  $("drop").addEventListener(type, () => $("drop").classList.remove("over"));
}
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files[0]) searchPhoto(e.dataTransfer.files[0]);
});
$("category").addEventListener("change", () => lastPhoto && searchPhoto(lastPhoto));
$("k").addEventListener("change", () => lastPhoto && searchPhoto(lastPhoto));
$("back").addEventListener("click", () => lastPhoto && searchPhoto(lastPhoto));
loadCategories();

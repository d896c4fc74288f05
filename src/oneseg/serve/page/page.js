// The oneseg page: send an image to POST /v1/segment, draw the segments over it with a legend,
// offer the results as files. Plain browser JavaScript, nothing fetched from elsewhere.
"use strict";

const TASKS = ["panoptic", "instance", "semantic"];
const state = { file: null, image: null, results: null, classes: [], keyRequired: false };
const $ = (id) => document.getElementById(id);

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function chosenTask() {
  return document.querySelector("input[name=task]:checked").value;
}

function threshold() {
  return parseFloat($("threshold").value);
}

function headers(extra = {}) {
  const key = $("api-key").value;
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function loadModel() {
  const health = await (await fetch("/healthz")).json();
  state.keyRequired = health.api_key_required;
  $("key-box").hidden = !state.keyRequired;
  const response = await fetch("/v1/model", { headers: headers() });
  if (!response.ok) {
    $("model-name").textContent = state.keyRequired ? "enter the API key" : "model unavailable";
    return;
  }
  const model = await response.json();
  state.classes = model.classes;
  $("model-name").textContent =
    `${model.source} · ${model.kind} · ${model.tasks.join(", ")} · ${model.classes.length} classes`;
  for (const input of document.querySelectorAll("input[name=task]")) {
    input.disabled = input.value !== "all" && !model.tasks.includes(input.value);
  }
}

function takeFile(file) {
  if (!file) return;
  state.file = file;
  state.results = null;
  $("file-name").textContent = `${file.name || "pasted image"} (${Math.round(file.size / 1024)} KiB)`;
  segment();
}

async function segment() {
  if (!state.file) return;
  const task = chosenTask();
  document.body.dataset.state = "working";
  showMessage(`segmenting (${task})…`, "info");
  try {
    const response = await fetch(`/v1/segment?task=${task}&png=true`, {
      method: "POST",
      body: state.file,
      headers: headers({ "Content-Type": state.file.type || "application/octet-stream" }),
    });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) {
      state.results = null;
      $("results").replaceChildren();
      showMessage(`The server refused this image (${response.status}): ${body.error}`);
      document.body.dataset.state = "refused";
      return;
    }
    state.image = await decodeImage(state.file, body);
    state.results = body;
    showMessage("");
    render();
    document.body.dataset.state = "done";
  } catch (err) {
    showMessage(`No answer from the server: ${err}`);
    document.body.dataset.state = "refused";
  }
}

async function decodeImage(file, body) {
  // the browser may not show every format the server reads (16-bit TIFF): fall back to grey
  const first = Object.values(body)[0];
  try {
    return await createImageBitmap(file);
  } catch {
    const canvas = new OffscreenCanvas(first.width, first.height);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, first.width, first.height);
    return canvas.transferToImageBitmap();
  }
}

function render() {
  const panels = Object.entries(state.results).map(([task, result]) => makePanel(task, result));
  $("results").replaceChildren(...panels);
}

function segmentColor(segment, index) {
  const cls = state.classes.find((c) => c.category_id === segment.category_id);
  const base = cls ? cls.color : [200, 80, 80];
  if (!segment.isthing) return base;
  const shift = ((index * 37) % 60) - 30; // instances of a class: nearby shades
  return base.map((v) => Math.max(0, Math.min(255, v + shift)));
}

function makePanel(task, result) {
  const panel = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
  panel.dataset.task = task;
  panel.querySelector("h2").textContent = task;
  const visible = result.segments.filter((s) => s.score === null || s.score >= threshold());
  visible.forEach((s) => {
    s.color = segmentColor(s, result.segments.indexOf(s));
    s.mask = s.mask || rleDecode(s.segmentation);
    s.border = s.border || border(s.mask, result.width, result.height);
  });
  const canvas = panel.querySelector("canvas");
  canvas.width = result.width;
  canvas.height = result.height;
  draw(canvas, visible, null);
  const body = panel.querySelector("tbody");
  const total = result.width * result.height;
  for (const s of visible) {
    const row = document.createElement("tr");
    row.dataset.segmentId = s.id;
    const score = s.score === null ? "—" : s.score.toFixed(2);
    const share = ((100 * s.area) / total).toFixed(1);
    row.innerHTML = `<td><span class="swatch"></span></td><td class="name"></td>
      <td class="score">${score}</td><td class="area" data-area="${s.area}">${s.area} px (${share}%)</td>`;
    row.querySelector(".swatch").style.background = `rgb(${s.color.join(",")})`;
    row.querySelector(".name").textContent = s.name;
    row.addEventListener("mouseenter", () => { row.classList.add("hot"); draw(canvas, visible, s); });
    row.addEventListener("mouseleave", () => { row.classList.remove("hot"); draw(canvas, visible, null); });
    body.appendChild(row);
  }
  panel.querySelector(".empty").hidden = visible.length > 0;
  panel.querySelector(".downloads").replaceChildren(...downloads(task, result));
  return panel;
}

/** 1 on the mask's pixels that touch a pixel outside it (4-neighbours, image edge apart). */
function border(mask, width, height) {
  const edge = new Uint8Array(mask.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      if (!mask[i]) continue;
      edge[i] = (x > 0 && !mask[i - 1]) || (x < width - 1 && !mask[i + 1]) ||
        (y > 0 && !mask[i - width]) || (y < height - 1 && !mask[i + width]) ? 1 : 0;
    }
  }
  return edge;
}

function draw(canvas, segments, hot) {
  const ctx = canvas.getContext("2d");
  ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  const picture = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = picture.data;
  for (const s of segments) {
    const alpha = hot === null ? 0.5 : s === hot ? 0.8 : 0.12;
    const [r, g, b] = s === hot ? [255, 220, 0] : s.color;
    const { mask, border: edge } = s;
    const lit = hot === null || s === hot;
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      const j = 4 * i;
      if (edge[i] && lit) { // outlined, so that a segment of the image's own colour shows
        px[j] = 255; px[j + 1] = 255; px[j + 2] = 255;
        continue;
      }
      px[j] = px[j] * (1 - alpha) + r * alpha;
      px[j + 1] = px[j + 1] * (1 - alpha) + g * alpha;
      px[j + 2] = px[j + 2] * (1 - alpha) + b * alpha;
    }
  }
  ctx.putImageData(picture, 0, 0);
}

function link(name, blob, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.textContent = text;
  a.className = "download";
  return a;
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function jsonBlob(value) {
  return new Blob([JSON.stringify(value)], { type: "application/json" });
}

function stem() {
  return (state.file.name || "image").replace(/\.[^.]*$/, "") || "image";
}

function downloads(task, result) {
  const name = stem();
  const strip = (s) => {
    const { mask, color, segmentation, ...rest } = s;
    return rest;
  };
  if (task === "panoptic") {
    const info = {
      file_name: `${name}.png`, height: result.height, width: result.width,
      segments_info: result.segments.map((s) => ({ ...strip(s), iscrowd: 0 })),
    };
    return [
      link(`${name}_panoptic.png`, pngBlob(result.png), "panoptic PNG"),
      link(`${name}_panoptic.json`, jsonBlob(info), "panoptic JSON"),
    ];
  }
  if (task === "instance") {
    const coco = result.segments.map((s) => ({
      image_id: 0, category_id: s.category_id, segmentation: s.segmentation,
      score: s.score, bbox: s.bbox,
    }));
    return [link(`${name}_instance.json`, jsonBlob(coco), "instance RLE JSON")];
  }
  return [link(`${name}_semantic.png`, pngBlob(result.png), "semantic PNG")];
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => takeFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    takeFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.kind === "file");
    if (item) takeFile(item.getAsFile());
  });
  for (const input of document.querySelectorAll("input[name=task]")) {
    input.addEventListener("change", segment);
  }
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = threshold().toFixed(2);
    if (state.results) render();
  });
  $("api-key").addEventListener("change", loadModel);
}

wire();
loadModel();

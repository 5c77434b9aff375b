// zoo serve's web page: pick a model, drop an image, see the top-k and the model card.
// Self-contained (no CDN); talks to GET /zoo/models and POST /zoo/models/NAME/classify.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let current = null;   // the image (a File or Blob) last chosen

function percent(p) { return (100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 1 : 2) + "%"; }

function field(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  dl.append(dt, dd);
}

function showCard(m) {
  $("card-title").textContent = m.name;
  $("version").textContent = "version " + m.version;
  const dl = $("card-fields");
  dl.replaceChildren();
  field(dl, "architecture", m.architecture);
  field(dl, "parameters", m.parameters.toLocaleString("en"));
  field(dl, "dataset", m.dataset);
  if (m.accuracy !== null) {
    field(dl, "accuracy", percent(m.accuracy) + (m.accuracy_split ? " on " + m.accuracy_split : ""));
  } else {
    field(dl, "accuracy", "not measured (exported without a run)");
  }
  field(dl, "training", m.epochs ? m.epochs + " epochs on " + m.train_images + " images" : "");
  field(dl, "input", m.input.channels + " × " + m.input.height + " × " + m.input.width);
  field(dl, "classes", m.classes.join(", "));
  const hp = Object.entries(m.hparams).map(([k, v]) => k + "=" + v).join(", ");
  field(dl, "hyperparameters", hp);
  field(dl, "plugin", m.plugin);
  field(dl, "graph", "ONNX opset " + m.opset + " (" + m.exporter + " exporter)");
  field(dl, "bundle sha256", m.sha256.slice(0, 16) + "…");
  dl.lastElementChild.title = m.sha256;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showResults(answer) {
  const list = $("results");
  list.replaceChildren();
  answer.predictions.forEach((p, i) => {
    const li = document.createElement("li");
    li.dataset.label = p.label;
    li.dataset.probability = String(p.probability);
    if (i === 0) li.id = "top1";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p.probability).toFixed(2) + "%";
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(p.probability);
    li.append(label, bar, pct);
    list.append(li);
  });
}

async function classify() {
  const model = models.find((m) => m.name === $("model").value);
  if (!current || !model) return;
  showError("");
  $("status").textContent = "classifying…";
  const k = Math.min(5, model.classes.length);
  const started = performance.now();
  try {
    const response = await fetch(
      "/zoo/models/" + encodeURIComponent(model.name) + "/classify?top_k=" + k,
      { method: "POST", body: current,
        headers: { "Content-Type": current.type || "application/octet-stream" } });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    showResults(answer);
    const ms = (performance.now() - started).toFixed(0);
    $("status").textContent = model.name + " (" + answer.model_version + "), " + ms + " ms";
  } catch (err) {
    $("results").replaceChildren();
    $("status").textContent = "";
    showError(String(err.message || err));
  }
}

function choose(file) {
  if (!file) return;
  current = file;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.hidden = !(file.type || "image/").startsWith("image/");
  $("hint").hidden = true;
  classify();
}

async function start() {
  const drop = $("drop");
  drop.addEventListener("click", (e) => { if (e.target.tagName !== "LABEL") $("file").click(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  $("model").addEventListener("change", () => {
    showCard(models.find((m) => m.name === $("model").value));
    classify();
  });
  try {
    const response = await fetch("/zoo/models");
    models = (await response.json()).models;
  } catch (err) {
    showError("cannot list the models: " + err);
    return;
  }
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name + " (" + m.architecture + ")";
    $("model").append(option);
  }
  if (models.length) showCard(models[0]);
  document.body.dataset.ready = "true";
}

start();

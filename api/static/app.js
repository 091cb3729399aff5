// The Backdrop web page: only the public /v1 API, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("job-form");
const imageInput = $("image-input");
const dropZone = $("drop-zone");
const apiKeyInput = $("api-key");
let photo = null;

// Plain words for the API's error codes; anything else shows the service's own message.
const FRIENDLY = {
  unsupported_format: "This file isn't a photo we can read. Please use a JPEG, PNG or WebP image.",
  corrupt_image: "This photo seems damaged or incomplete. Try exporting or downloading it again.",
  animated_image: "Animated images aren't supported. Please send a still photo.",
  empty_image: "The file is empty.",
  image_too_large: "This photo is too large for the service.",
  request_too_large: "This upload is too large for the service.",
  queue_full: "The service is busy right now. Please try again in a few seconds.",
  broker_unavailable: "The service is temporarily unavailable. Please try again shortly.",
  storage_unavailable: "The service is temporarily unavailable. Please try again shortly.",
  unauthorized: "This service needs an API key: enter it under \u201cAPI key\u201d.",
  timeout: "Processing took too long and was stopped.",
  worker_lost: "Processing stopped unexpectedly. Please try again.",
  invalid_color: "Please pick a colour.",
};

function headers() {
  const key = apiKeyInput.value.trim();
  localStorage.setItem("backdrop-api-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  } catch (err) {
    throw new Error("The service can't be reached. Check your connection and try again.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || {};
    const text = FRIENDLY[error.code] || error.message || `The service answered ${response.status}.`;
    const err = new Error(error.code === "image_too_large" ? `${text} (${error.message})` : text);
    err.code = error.code;
    err.retryAfter = Number(response.headers.get("Retry-After") || 0);
    throw err;
  }
  return { body, retryAfter: Number(response.headers.get("Retry-After") || 0) };
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStep(step, text) {
  const order = ["queued", "running", "done"];
  document.querySelectorAll("#steps li").forEach((li) => {
    const index = order.indexOf(li.dataset.step);
    li.classList.toggle("active", li.dataset.step === step);
    li.classList.toggle("complete", index < order.indexOf(step));
  });
  $("status-text").textContent = text;
}

function choosePhoto(file) {
  if (!file) return;
  photo = file;
  showError("");
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = file.name;
}

imageInput.addEventListener("change", () => choosePhoto(imageInput.files[0]));
["dragenter", "dragover"].forEach((type) =>
  dropZone.addEventListener(type, (event) => { event.preventDefault(); dropZone.classList.add("over"); }));
["dragleave", "drop"].forEach((type) =>
  dropZone.addEventListener(type, (event) => { event.preventDefault(); dropZone.classList.remove("over"); }));
dropZone.addEventListener("drop", (event) => choosePhoto(event.dataTransfer.files[0]));

function effect() {
  return form.querySelector("input[name=effect]:checked").value;
}
form.addEventListener("change", () => {
  document.querySelectorAll(".option").forEach((el) => { el.hidden = el.dataset.for !== effect(); });
});
$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
$("divider").addEventListener("input", () => {
  $("after-clip").style.clipPath = `inset(0 0 0 ${$("divider").value}%)`;
  $("split-line").style.left = `${$("divider").value}%`;
});

async function loadTargets() {
  try {
    const { body } = await api("/v1/models");
    const classes = [...new Set(body.models.flatMap((m) => m.classes))].sort();
    $("targets").innerHTML = classes.map((name) =>
      `<label><input type="checkbox" name="targets" value="${name}"${name === "person" ? " checked" : ""}> ${name}</label>`
    ).join("");
  } catch (err) {
    showError(err.message);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForJob(id) {
  for (;;) {
    const { body, retryAfter } = await api(`/v1/jobs/${id}`);
    if (body.status === "succeeded") return body;
    if (body.status === "failed") {
      const error = body.error || {};
      throw new Error(FRIENDLY[error.code] || error.message || "Processing failed.");
    }
    if (body.status === "cancelled") throw new Error("The job was cancelled.");
    setStep(body.status, body.status === "queued" ? "Waiting for a free worker\u2026" : "Finding the subject\u2026");
    await sleep(Math.min(1000, Math.max(250, retryAfter * 250)));
  }
}

function describeFound(job) {
  const detected = job.detected || {};
  const names = Object.keys(detected);
  if (!job.found) return `No ${names.join(" or ")} found: the whole picture was treated as background.`;
  return "Found: " + names.map((n) => `${n} (${Math.round(detected[n] * 100)}% of the picture)`).join(", ") + ".";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  if (!photo) { showError("Please choose a photo first."); return; }
  const targets = [...form.querySelectorAll("input[name=targets]:checked")].map((el) => el.value);
  if (!targets.length) { showError("Pick at least one thing to keep sharp."); return; }
  const data = new FormData();
  data.append("image", photo);
  data.append("effect", effect());
  data.append("targets", targets.join(","));
  if (effect() === "blur") { data.append("strength", $("strength").value); data.append("bokeh", $("bokeh").value); }
  if (effect() === "color") data.append("color", $("color").value);
  if (effect() === "replace") {
    const background = $("background-input").files[0];
    if (!background) { showError("Please choose a background image."); return; }
    data.append("background", background);
  }
  if ($("format").value) data.append("format", $("format").value);

  const button = $("submit");
  button.disabled = true;
  $("result").hidden = true;
  $("progress").hidden = false;
  setStep("queued", "Uploading\u2026");
  try {
    let submitted;
    for (let attempt = 0; ; attempt++) {
      try {
        submitted = await api("/v1/jobs", { method: "POST", body: data });
        break;
      } catch (err) {
        if (err.code !== "queue_full" || attempt >= 5) throw err;
        setStep("queued", "The service is busy; trying again\u2026");
        await sleep(Math.max(1, err.retryAfter) * 1000);
      }
    }
    const job = await waitForJob(submitted.body.id);
    setStep("done", "Done.");
    $("before").src = URL.createObjectURL(photo);
    $("after").src = job.result.url;
    $("download").href = job.result.download_url;
    $("detected").textContent = describeFound(job);
    $("result").hidden = false;
  } catch (err) {
    $("progress").hidden = true;
    showError(err.message);
  } finally {
    button.disabled = false;
  }
});

apiKeyInput.value = localStorage.getItem("backdrop-api-key") || "";
apiKeyInput.addEventListener("change", () => { showError(""); loadTargets(); });
loadTargets();

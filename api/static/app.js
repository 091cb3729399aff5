// The Backdrop web page: only the public /v1 API, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("job-form");
const imageInput = $("image-input");
const dropZone = $("drop-zone");
const apiKeyInput = $("api-key");
let photo = null;
let photoKind = "image";

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
  corrupt_video: "This video seems damaged or incomplete: not one frame could be read.",
  video_too_long: "This video is longer than the service accepts.",
  unsupported_output: "This effect needs another format: a cut-out video is WebM.",
};

const VIDEO_NAME = /\.(mp4|mov|m4v|webm|mkv|avi)$/i;
function kindOf(file) {
  return file.type.startsWith("video/") || file.type === "image/gif" || VIDEO_NAME.test(file.name) ? "video" : "image";
}

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
  photoKind = kindOf(file);
  showError("");
  const isVideo = photoKind === "video";
  const preview = $(isVideo ? "preview-video" : "preview");
  preview.src = URL.createObjectURL(file);
  $("preview").hidden = isVideo;
  $("preview-video").hidden = !isVideo;
  $("drop-text").textContent = file.name;
  // The formats that fit what was chosen: photos keep their own by default, videos are MP4 or WebM.
  const format = $("format");
  for (const option of format.options) option.hidden = option.dataset.kind !== photoKind;
  format.value = isVideo ? (effect() === "cutout" ? "webm" : "mp4") : "";
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
form.addEventListener("change", (event) => {
  document.querySelectorAll(".option").forEach((el) => { el.hidden = el.dataset.for !== effect(); });
  if (event.target.name === "effect" && photoKind === "video") $("format").value = effect() === "cutout" ? "webm" : "mp4";
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
    if (body.kind === "video" && body.progress) showProgress(body.progress);
    await sleep(Math.min(1000, Math.max(250, retryAfter * 250)));
  }
}

function showProgress(progress) {
  const percent = progress.total ? Math.min(100, Math.round((100 * progress.done) / progress.total)) : 0;
  $("video-progress-box").hidden = false;
  $("video-progress").value = percent;
  $("video-progress-text").textContent = `${percent}% (${progress.done} of ${progress.total} frames)`;
}

function showVideoResult(job) {
  const before = $("before-video");
  const after = $("after-video");
  before.src = URL.createObjectURL(photo);
  after.src = job.result.url;
  // Before plays along with after: the same moment, side by side.
  after.onplay = () => { before.currentTime = after.currentTime; before.play(); };
  after.onpause = () => before.pause();
  after.onseeked = () => { before.currentTime = after.currentTime; };
  $("video-compare").hidden = false;
  $("compare").hidden = true;
  const result = job.result;
  $("detected").textContent =
    `${result.frames} frames, ${result.duration_s.toFixed(1)} s at ${result.fps.toFixed(1)} fps, ` +
    (result.audio ? "with its sound." : "no sound.");
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
  data.append(photoKind, photo);
  data.append("effect", effect());
  data.append("targets", targets.join(","));
  data.append("subjects", form.querySelector("input[name=subjects]:checked").value);
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
  $("video-progress-box").hidden = true;
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
    if (job.kind === "video") {
      showProgress(job.progress);
      showVideoResult(job);
    } else {
      $("before").src = URL.createObjectURL(photo);
      $("after").src = job.result.url;
      $("compare").hidden = false;
      $("video-compare").hidden = true;
      $("detected").textContent = describeFound(job);
    }
    $("download").href = job.result.download_url;
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

// --- Tabs -----------------------------------------------------------------------------------------

function showTab(name) {
  for (const [tab, panel] of [["tab-jobs", "jobs"], ["tab-live", "live"]]) {
    const chosen = panel === name;
    $(tab).setAttribute("aria-selected", String(chosen));
    $(panel).hidden = !chosen;
  }
  if (name !== "live") stopLive();
}
$("tab-jobs").addEventListener("click", () => showTab("jobs"));
$("tab-live").addEventListener("click", () => showTab("live"));

// --- Live mode: the camera through the service's WebSocket, frame by frame -------------------------

const LIVE_IN_FLIGHT = 2;  // frames sent ahead of the answers: the round trip overlaps the work
const LIVE_CLOSED = {
  1001: "The live session was idle too long and was closed.",
  1008: "The live session was closed: frames were sent too far ahead.",
  1009: "A camera frame was larger than the service accepts.",
  1013: "The live service is busy right now. Please try again in a moment.",
  4401: "This service needs an API key: enter it under \u201cAPI key\u201d on the other tab.",
};
const live = { socket: null, stream: null, inFlight: 0, sentAt: [], shown: [], running: false, background: null };

function liveStatus(text, bad = false) {
  $("live-status").textContent = text;
  $("live-status").classList.toggle("bad", bad);
}

function liveEffect() {
  return document.querySelector("input[name=live-effect]:checked").value;
}

async function liveSettings() {
  const settings = {
    effect: liveEffect(),
    strength: Number($("live-strength").value),
    color: $("live-color").value,
    subjects: document.querySelector("input[name=live-subjects]:checked").value,
  };
  const file = $("live-background").files[0];
  if (file && live.backgroundFile !== file) {
    live.backgroundFile = file;
    live.background = await new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.readAsDataURL(file);
    });
    settings.background = live.background;
  }
  if (settings.effect === "replace" && !live.background) return null;  // wait for a background image
  return settings;
}

async function sendLiveSettings() {
  document.querySelectorAll(".live-option").forEach((el) => { el.hidden = el.dataset.for !== liveEffect(); });
  $("live-strength-value").textContent = $("live-strength").value;
  if (!live.socket || live.socket.readyState !== WebSocket.OPEN) return;
  const settings = await liveSettings();
  if (settings) live.socket.send(JSON.stringify(settings));
  else liveStatus("Choose a background image for Replace.");
}
$("live-form").addEventListener("change", sendLiveSettings);
$("live-strength").addEventListener("input", () => { $("live-strength-value").textContent = $("live-strength").value; });

async function startLive() {
  liveStatus("Connecting\u2026");
  let info;
  try {
    ({ body: info } = await api("/v1/live"));
  } catch (err) {
    liveStatus(err.code === "not_found" ? "Live mode is not available on this service." : err.message, true);
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    liveStatus("This browser cannot use a camera here (a camera needs https or localhost).", true);
    return;
  }
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: false });
  } catch (err) {
    const text = err.name === "NotAllowedError" ? "The camera permission was denied: allow the camera for this page and try again."
      : err.name === "NotFoundError" ? "No camera was found on this device."
      : `The camera could not be started (${err.name}).`;
    liveStatus(text, true);
    return;
  }
  const camera = $("live-camera");
  camera.srcObject = live.stream;
  await camera.play();
  const key = apiKeyInput.value.trim();
  const url = info.websocket_url + (key ? `?api_key=${encodeURIComponent(key)}` : "");
  const socket = new WebSocket(url);
  socket.binaryType = "blob";
  live.socket = socket;
  live.inFlight = 0;
  live.sentAt = [];
  socket.onopen = async () => {
    live.running = true;
    $("live-start").textContent = "Stop";
    liveStatus("Live.");
    await sendLiveSettings();
    pumpLive();
  };
  socket.onmessage = async (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.error) {
        live.inFlight = Math.max(0, live.inFlight - 1);  // a refused frame is still an answer
        liveStatus(FRIENDLY[message.error.code] || message.error.message, true);
        pumpLive();
      }
      return;
    }
    live.inFlight = Math.max(0, live.inFlight - 1);
    const sent = live.sentAt.shift();
    if (sent) $("live-latency").textContent = Math.round(performance.now() - sent);
    const picture = await createImageBitmap(event.data);
    const canvas = $("live-canvas");
    if (canvas.width !== picture.width) { canvas.width = picture.width; canvas.height = picture.height; }
    canvas.getContext("2d").drawImage(picture, 0, 0);
    const now = performance.now();
    live.shown.push(now);
    while (live.shown.length && now - live.shown[0] > 1000) live.shown.shift();
    $("live-fps").textContent = String(live.shown.length);
    pumpLive();
  };
  socket.onclose = (event) => {
    const wasRunning = live.running;
    stopLive();
    if (wasRunning && event.code !== 1000) liveStatus(LIVE_CLOSED[event.code] || `The live session ended (${event.code}).`, true);
  };
}

const grabber = document.createElement("canvas");

function pumpLive() {
  const camera = $("live-camera");
  while (live.running && live.inFlight < LIVE_IN_FLIGHT && camera.videoWidth) {
    grabber.width = camera.videoWidth;
    grabber.height = camera.videoHeight;
    grabber.getContext("2d").drawImage(camera, 0, 0);
    live.inFlight += 1;
    grabber.toBlob((blob) => {
      if (live.socket && live.socket.readyState === WebSocket.OPEN) {
        live.sentAt.push(performance.now());
        live.socket.send(blob);
      } else {
        live.inFlight -= 1;
      }
    }, "image/jpeg", 0.8);
  }
  if (live.running && !camera.videoWidth) setTimeout(pumpLive, 50);
}

function stopLive() {
  live.running = false;
  if (live.socket) { live.socket.onclose = null; live.socket.close(); live.socket = null; }
  if (live.stream) { live.stream.getTracks().forEach((track) => track.stop()); live.stream = null; }
  $("live-start").textContent = "Start the camera";
}

$("live-start").addEventListener("click", () => (live.running ? (stopLive(), liveStatus("Stopped.")) : startLive()));

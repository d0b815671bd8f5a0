// The classifier page: reads an image, POSTs it as base64 JSON to <API>/predict with
// "explain": true (and "segment": true where /health says the model has a lesion map),
// shows the class, the probabilities, the heat map and the lesion outline, and a warning
// above the class where the answer's input_check flagged the image. No dependencies.
// API: the page's own origin, or ?api=https://...; ?key=... is sent as x-api-key.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SIDE = 512; // canvas pixels of the square view
  // Image bytes per request: what GET /health says (limits.image_bytes); until it has, or for an
  // API that does not say, MAX_IMAGE_BYTES of busi_classifier/serving/api.py. The page sends the file
  // base64 in JSON, and the API's limit is on the decoded bytes, i.e. the file's size.
  const DEFAULT_IMAGE_BYTES = 4400000;
  // The heat-map colours, low -> high: the ramp of busi_classifier/serving/explain.py ("inferno"-like)
  const RAMP = [[0, 0, 4], [66, 10, 104], [147, 38, 103], [221, 81, 58], [252, 165, 10], [252, 255, 164]];
  const LESION_COLOUR = "rgb(255, 48, 48)"; // the lesion outline (test.py --segment-out draws the same red)

  const params = new URLSearchParams(location.search);
  const key = params.get("key") || "";
  const api = apiBase(params.get("api"));
  const noApi = params.get("api")
    ? `The api parameter must be an http:// or https:// address, not "${params.get("api")}".`
    : "No API to call: open this page through the local server (python -m busi_classifier serve) " +
      "or add ?api=https://... (the API's address) to the page's address.";
  let classes = null; // from /health
  let explainAvailable = null; // true/false from /health; null: not known
  let segmentAvailable = false; // /health's model.segment; asked only where it is true
  let checkFlagRate = null; // /health's model.input_check.flag_rate: the share of genuine scans flagged
  let imageBytes = DEFAULT_IMAGE_BYTES; // the API's limit on the image (limits.image_bytes of /health)
  let current = 0; // the latest request; older answers are dropped
  let pictureUrl = null;

  function apiBase(given) {
    if (given) {
      try {
        const url = new URL(given);
        if (url.protocol === "http:" || url.protocol === "https:") return url.href.replace(/\/+$/, "");
      } catch (_) { /* not a URL */ }
      return null; // an ?api= that is not an http(s) URL
    }
    if (location.protocol === "http:" || location.protocol === "https:") return location.origin;
    return null; // file:// without ?api=
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (key) h["x-api-key"] = key;
    return h;
  }

  function setState(state, status) {
    document.body.dataset.state = state;
    if (status !== undefined) $("status").textContent = status;
  }

  function showError(message, code) {
    const el = $("error");
    el.textContent = message;
    if (code) el.dataset.code = code; else delete el.dataset.code;
    el.hidden = false;
  }

  function clearError() {
    const el = $("error");
    el.textContent = "";
    delete el.dataset.code;
    el.hidden = true;
  }

  function fail(message, code) {
    showError(message, code);
    $("result").hidden = true;
    $("view").hidden = true;
    setState("error", "Error: see the message below.");
  }

  // fetch, then the body as JSON when it is JSON
  async function call(url, options) {
    const response = await fetch(url, { mode: "cors", credentials: "omit", cache: "no-store", ...options });
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    return { ok: response.ok, status: response.status, statusText: response.statusText, body, text };
  }

  // The API's error message ({"error": {"code", "message"}}); else API Gateway's own ({"message"}); else the status
  function errorMessage(res) {
    const body = res.body;
    if (body && typeof body === "object" && body.error && typeof body.error.message === "string") return body.error.message;
    if (body && typeof body === "object" && typeof body.message === "string") return `HTTP ${res.status}: ${body.message}`;
    if (res.ok) return `the API's answer is not a prediction (HTTP ${res.status})`;
    const text = (res.text || "").trim().slice(0, 200);
    return `HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}${text ? ": " + text : ""}`;
  }

  function errorCode(res) {
    const body = res.body;
    return body && typeof body === "object" && body.error && typeof body.error.code === "string" ? body.error.code : "";
  }

  function unreachable(error) {
    return `Could not reach the API at ${api} (${(error && error.message) || "network error"}): check the address ` +
      "and your connection, and that the API allows requests from this page (CORS).";
  }

  function showSegmentNote(known) {
    $("segment-available").textContent = segmentAvailable ? "available (the page asks for it)"
      : known ? "not available for this model" : "not known (the page does not ask for it)";
  }

  // /health's model.input_check: whether the answers say if an image looks like the training images
  function showInputCheckNote(model) {
    const check = model && typeof model === "object" ? model.input_check : null;
    let text = "not known";
    checkFlagRate = check && typeof check === "object" && typeof check.flag_rate === "number" ? check.flag_rate : null;
    if (check && typeof check === "object" && typeof check.available === "boolean") {
      text = !check.available ? "not available for this model"
        : check.action === "refuse" ? "on: the API refuses images unlike the training images"
        : "on: images unlike the training images are flagged";
    }
    $("input-check-available").textContent = text;
  }

  function showExplainNote() {
    $("explain-available").textContent = explainAvailable === true ? "available (the page asks for it)"
      : explainAvailable === false ? "not available for this model" : "not known (the page asks for it)";
  }

  async function loadHealth() {
    $("api-url").textContent = api ? api + (key ? " (with an API key)" : "") : "none";
    if (!api) {
      showError(noApi);
      setState("idle", "No API.");
      return;
    }
    try {
      const res = await call(api + "/health", { headers: headers(false) });
      if (!res.ok || !res.body || typeof res.body !== "object") {
        showError(`The API's /health check failed: ${errorMessage(res)}`, errorCode(res));
        showModelSummary(null);
        setState("idle", "Ready (the API's health check failed; you can still try an image).");
        return;
      }
      if (typeof res.body.model_version === "string") $("model-version").textContent = res.body.model_version;
      if (Array.isArray(res.body.classes)) classes = res.body.classes.filter((c) => typeof c === "string");
      if (typeof res.body.explain === "boolean") explainAvailable = res.body.explain;
      const model = res.body.model;
      const segmentKnown = Boolean(model && typeof model === "object" && typeof model.segment === "boolean");
      segmentAvailable = segmentKnown && model.segment === true;
      showSegmentNote(segmentKnown);
      const limits = res.body.limits;
      if (limits && typeof limits === "object" && Number.isInteger(limits.image_bytes) && limits.image_bytes > 0) {
        imageBytes = limits.image_bytes;
      }
      showExplainNote();
      showInputCheckNote(model);
      showModelSummary(res.body.model);
      setState("idle", "Ready: drop or choose an image.");
    } catch (error) {
      showError(unreachable(error));
      showModelSummary(null);
      setState("idle", "Ready (the API did not answer its health check; you can still try an image).");
    }
  }

  // How good the model is (the "model" of /health, from its model.json): a line under the
  // class, and the demo-model notice at the top of the page where it applies
  function showModelSummary(summary) {
    const figures = $("model-figures");
    const notice = $("demo-notice");
    if (!summary || typeof summary !== "object" || typeof summary.text !== "string") {
      figures.replaceChildren("How good this model is: not known (the API's health check did not say).");
      figures.dataset.known = "false";
      notice.hidden = true;
      return;
    }
    const parts = [summary.text + "."];
    if (typeof summary.report === "string" && summary.report) {
      parts.push(" Full report: ");
      const isUrl = /^https?:\/\//.test(summary.report);
      const report = document.createElement(isUrl ? "a" : "code"); // else a path in the project's repository
      if (isUrl) {
        report.href = summary.report;
        report.rel = "noopener";
      }
      report.id = "model-report";
      report.textContent = summary.report;
      parts.push(report, isUrl ? "." : " in the project's repository.");
    }
    figures.replaceChildren(...parts);
    figures.dataset.known = "true";
    if (typeof summary.notice === "string" && summary.notice) {
      $("demo-notice-text").textContent = summary.notice.charAt(0).toUpperCase() + summary.notice.slice(1) + ".";
      notice.hidden = false;
    } else {
      notice.hidden = true;
    }
  }

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = String(reader.result);
        const comma = url.indexOf(",");
        resolve(comma >= 0 ? url.slice(comma + 1) : "");
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // The image as the browser decodes it (null when it cannot)
  function loadPicture(file) {
    if (pictureUrl) URL.revokeObjectURL(pictureUrl);
    pictureUrl = URL.createObjectURL(file);
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => resolve(null);
      img.src = pictureUrl;
    });
  }

  function postPredict(image, explain, segment) {
    const payload = { image };
    if (explain) payload.explain = true;
    if (segment) payload.segment = true;
    return call(api + "/predict", { method: "POST", headers: headers(true), body: JSON.stringify(payload) });
  }

  function percent(p) {
    return typeof p === "number" && isFinite(p) ? (p * 100).toFixed(1) + " %" : "?";
  }

  // The warning above the class: shown exactly when the answer's input_check says in_distribution false
  function showInputCheck(answer) {
    const check = answer.input_check;
    const flagged = Boolean(check && typeof check === "object" && check.in_distribution === false);
    const warning = $("ood-warning");
    warning.hidden = !flagged;
    $("result").dataset.flagged = String(flagged);
    if (!flagged) {
      $("ood-detail").textContent = "";
      return;
    }
    const score = typeof check.score === "number" && isFinite(check.score) ? check.score.toFixed(1) : null;
    const threshold = typeof check.threshold === "number" && isFinite(check.threshold) ? check.threshold.toFixed(1) : "?";
    const rate = checkFlagRate === null ? ""
      : ` (set so that ${(checkFlagRate * 100).toFixed(0)} % of genuine scans are flagged: it can be wrong)`;
    $("ood-detail").textContent = score === null
      ? "Its input-check score could not be computed."
      : `Its input-check score is ${score}, above the threshold of ${threshold}${rate}.`;
  }

  function showAnswer(answer) {
    showInputCheck(answer);
    $("prediction").textContent = String(answer.prediction);
    const probabilities = answer.probabilities;
    const names = Object.keys(probabilities);
    const order = classes && names.every((n) => classes.includes(n)) ? classes.filter((c) => c in probabilities) : names;
    const box = $("probabilities");
    box.replaceChildren();
    for (const name of order) {
      const p = probabilities[name];
      const row = document.createElement("div");
      row.className = "bar" + (name === answer.prediction ? " top" : "");
      row.dataset.class = name;
      row.dataset.probability = String(p);
      const label = document.createElement("span");
      label.className = "bar-name";
      label.textContent = name;
      const track = document.createElement("div");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("div");
      fill.className = "bar-fill";
      fill.style.width = (typeof p === "number" && isFinite(p) ? Math.min(100, Math.max(0, p * 100)) : 0) + "%";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);
      row.append(label, track, value);
      box.append(row);
    }
    if (typeof answer.model_version === "string") $("model-version").textContent = answer.model_version;
    $("result").hidden = false;
  }

  // The uploaded image as the model sees it: fitted into the square, centred, black padding
  function drawPicture(img) {
    const canvas = $("image-canvas");
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, SIDE, SIDE);
    if (!img || !img.naturalWidth || !img.naturalHeight) {
      ctx.fillStyle = "#ccc";
      ctx.font = "20px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("(this browser cannot display the image)", SIDE / 2, SIDE / 2);
      return;
    }
    const scale = SIDE / Math.max(img.naturalWidth, img.naturalHeight);
    const w = Math.max(1, Math.round(img.naturalWidth * scale));
    const h = Math.max(1, Math.round(img.naturalHeight * scale));
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, Math.floor((SIDE - w) / 2), Math.floor((SIDE - h) / 2), w, h);
  }

  function validGrid(grid) {
    return Array.isArray(grid) && grid.length > 0 && Array.isArray(grid[0]) && grid[0].length > 0 &&
      grid.every((row) => Array.isArray(row) && row.length === grid[0].length &&
        row.every((v) => typeof v === "number" && isFinite(v)));
  }

  function colour(v) {
    const position = Math.min(1, Math.max(0, v)) * (RAMP.length - 1);
    const low = Math.min(RAMP.length - 2, Math.floor(position));
    const t = position - low;
    return RAMP[low].map((c, i) => Math.round(c * (1 - t) + RAMP[low + 1][i] * t));
  }

  // The grid (rows top to bottom, 0..1, over the square model input), bilinearly
  // upsampled to the canvas (cell centres at the centres of their squares), then coloured
  function drawHeatmap(grid) {
    const rows = grid.length, cols = grid[0].length;
    const ctx = $("heatmap").getContext("2d");
    const pixels = ctx.createImageData(SIDE, SIDE);
    const data = pixels.data;
    const axis = (n, i) => {
      const s = Math.min(n - 1, Math.max(0, ((i + 0.5) * n) / SIDE - 0.5));
      const a = Math.min(n - 1, Math.floor(s));
      return [a, Math.min(n - 1, a + 1), s - a];
    };
    const xs = Array.from({ length: SIDE }, (_, x) => axis(cols, x));
    for (let y = 0; y < SIDE; y++) {
      const [y0, y1, ty] = axis(rows, y);
      for (let x = 0; x < SIDE; x++) {
        const [x0, x1, tx] = xs[x];
        const top = grid[y0][x0] * (1 - tx) + grid[y0][x1] * tx;
        const bottom = grid[y1][x0] * (1 - tx) + grid[y1][x1] * tx;
        const [r, g, b] = colour(top * (1 - ty) + bottom * ty);
        const k = (y * SIDE + x) * 4;
        data[k] = r; data[k + 1] = g; data[k + 2] = b; data[k + 3] = 255;
      }
    }
    ctx.putImageData(pixels, 0, 0);
  }

  function showHeatmap(answer, explained) {
    const explanation = answer.explanation;
    const heat = $("heatmap");
    const controls = $("heatmap-controls");
    const note = $("no-heatmap");
    const link = $("overlay-link");
    heat.getContext("2d").clearRect(0, 0, SIDE, SIDE);
    if (explanation && typeof explanation === "object" && validGrid(explanation.grid)) {
      drawHeatmap(explanation.grid);
      const rows = explanation.grid.length, cols = explanation.grid[0].length;
      const cls = typeof explanation.class === "string" ? explanation.class : String(answer.prediction);
      $("heatmap-caption").textContent = `Class activation map of "${cls}" (a ${rows}x${cols} grid over the model ` +
        "input, smoothly upscaled): dark = little evidence, bright yellow = the most.";
      if (typeof explanation.overlay_png === "string" && explanation.overlay_png) {
        link.href = "data:image/png;base64," + explanation.overlay_png;
        link.hidden = false;
      } else {
        link.hidden = true;
        link.removeAttribute("href");
      }
      heat.hidden = false;
      controls.hidden = false;
      note.hidden = true;
      return;
    }
    heat.hidden = true;
    controls.hidden = true;
    link.hidden = true;
    link.removeAttribute("href");
    note.textContent = explained ? "No heat map: the API's answer has no explanation."
      : "No heat map is available: this model was exported without class activation maps.";
    note.hidden = false;
  }

  // Where the upright image lands on the square canvas (as drawPicture draws it): the scale
  // from the image's own pixels and the offset; null when the browser cannot show the image
  function pictureGeometry(img) {
    if (!img || !img.naturalWidth || !img.naturalHeight) return null;
    const scale = SIDE / Math.max(img.naturalWidth, img.naturalHeight);
    const w = Math.max(1, Math.round(img.naturalWidth * scale));
    const h = Math.max(1, Math.round(img.naturalHeight * scale));
    return { sx: w / img.naturalWidth, sy: h / img.naturalHeight, x: Math.floor((SIDE - w) / 2), y: Math.floor((SIDE - h) / 2) };
  }

  function validOutline(outline) {
    return Array.isArray(outline) && outline.length >= 2 && outline.every((p) => Array.isArray(p) && p.length === 2 &&
      p.every((v) => typeof v === "number" && isFinite(v)));
  }

  // The answer's lesion (outline in the uploaded image's own upright pixels), scaled onto
  // the square view and drawn on its own canvas, over the image and the heat map
  function drawLesion(outline, geometry) {
    const canvas = $("lesion");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, SIDE, SIDE);
    const points = outline.map(([x, y]) => [geometry.x + x * geometry.sx, geometry.y + y * geometry.sy]);
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    ctx.lineJoin = "round";
    ctx.lineWidth = 3;
    ctx.strokeStyle = LESION_COLOUR;
    ctx.stroke();
    canvas.dataset.outline = JSON.stringify(points.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]));
  }

  function showLesion(answer, img, asked) {
    const lesion = answer.lesion;
    const canvas = $("lesion");
    const controls = $("lesion-controls");
    const toggle = $("lesion-toggle");
    canvas.getContext("2d").clearRect(0, 0, SIDE, SIDE);
    delete canvas.dataset.outline;
    canvas.hidden = true;
    if (!asked || !lesion || typeof lesion !== "object" || typeof lesion.found !== "boolean") {
      controls.hidden = true;
      return;
    }
    controls.hidden = false;
    const threshold = typeof lesion.threshold === "number" ? ` (${lesion.threshold})` : "";
    if (!lesion.found) {
      $("lesion-area").textContent = "no lesion found";
      $("lesion-caption").textContent = "No pixel of the image reaches the model's lesion threshold" + threshold + ".";
      toggle.disabled = true;
      return;
    }
    const regions = Number.isInteger(lesion.regions) && lesion.regions > 1
      ? `, ${lesion.regions} regions (the outline is the largest's)` : "";
    $("lesion-area").textContent = `lesion: ${percent(lesion.area_fraction)} of the image${regions}`;
    const geometry = pictureGeometry(img);
    if (!validOutline(lesion.outline) || !geometry) {
      $("lesion-caption").textContent = geometry ? "The answer has no outline to draw."
        : "The outline cannot be drawn: this browser cannot display the image.";
      toggle.disabled = true;
      return;
    }
    drawLesion(lesion.outline, geometry);
    $("lesion-caption").textContent = "Outline of the largest region where the model's lesion map is at or above " +
      `its threshold${threshold}, drawn in red over the image.`;
    toggle.disabled = false;
    canvas.hidden = !toggle.checked;
  }

  async function classify(file) {
    const id = ++current;
    clearError();
    $("result").hidden = true;
    $("view").hidden = true;
    setState("busy", `Working... reading ${file.name}`);
    if (!api) {
      fail(noApi);
      return;
    }
    await health; // explain or not, and the size limit: what /health says
    if (id !== current) return;
    if (file.size > imageBytes) {
      fail(`This file is ${file.size.toLocaleString("en")} bytes (${(file.size / 1e6).toFixed(2)} MB); the API ` +
        `takes at most ${imageBytes.toLocaleString("en")} bytes (${(imageBytes / 1e6).toFixed(2)} MB) of image ` +
        "per request (a Lambda request is at most 6 MB, and base64 makes the image a third larger). " +
        "Send a smaller or more compressed file.");
      return;
    }
    let image;
    try {
      image = await readBase64(file);
    } catch (_) {
      if (id === current) fail("The browser could not read this file.");
      return;
    }
    if (id !== current) return;
    const picture = loadPicture(file);
    setState("busy", `Working... sending ${file.name} to the API`);
    let explain = explainAvailable !== false;
    let segment = segmentAvailable;
    let res;
    try {
      res = await postPredict(image, explain, segment);
      if (explain && res.status === 501 && errorCode(res) === "explain_unavailable") {
        explainAvailable = false; // an API whose /health did not say: ask again without explain
        showExplainNote();
        explain = false;
        res = await postPredict(image, false, segment);
      }
      if (segment && res.status === 501 && errorCode(res) === "segment_unavailable") {
        segmentAvailable = false; // /health said it could: ask again without segment
        showSegmentNote(true);
        segment = false;
        res = await postPredict(image, explain, false);
      }
    } catch (error) {
      if (id === current) fail(unreachable(error));
      return;
    }
    if (id !== current) return;
    const answer = res.body;
    if (!res.ok || !answer || typeof answer !== "object" || !answer.probabilities || typeof answer.probabilities !== "object") {
      fail(errorMessage(res), errorCode(res));
      return;
    }
    showAnswer(answer);
    const img = await picture;
    if (id !== current) return;
    $("view").hidden = false;
    drawPicture(img);
    showHeatmap(answer, explain);
    showLesion(answer, img, segment);
    setState("done", `Done: ${answer.prediction}`);
  }

  function pick(files) {
    if (files && files.length > 0) classify(files[0]);
  }

  // --- wiring -----------------------------------------------------------------------
  const drop = $("drop");
  const opacity = $("opacity");
  $("file").addEventListener("change", (event) => pick(event.target.files));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      drop.classList.add("dragging");
    });
  }
  drop.addEventListener("dragleave", (event) => {
    if (!drop.contains(event.relatedTarget)) drop.classList.remove("dragging");
  });
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    pick(event.dataTransfer.files);
  });
  // a file dropped outside the zone must not replace the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  const showOpacity = () => {
    $("heatmap").style.opacity = String(Number(opacity.value) / 100);
    $("opacity-value").textContent = `${opacity.value} %`;
  };
  opacity.addEventListener("input", showOpacity);
  showOpacity();
  $("lesion-toggle").addEventListener("change", (event) => {
    $("lesion").hidden = !event.target.checked || event.target.disabled;
  });

  setState("idle", "Loading...");
  const health = loadHealth();
})();

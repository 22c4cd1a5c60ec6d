// Upload page: classify photos chosen, dropped or pasted, through the JSON API, without a reload.
// Each photo gets its own card and its own request, so one refused file does not hold up the others.
// Previews are object URLs of the user's own files: nothing uploaded comes back from the server.
// "Take a photo" captures a camera frame into a canvas and classifies it as an uploaded JPEG;
// "Why?" on a card lays the server's saliency overlay (a PNG it drew) over the card's thumbnail.
"use strict";

(function () {
  document.documentElement.classList.add("js");
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("image-input");
  const results = document.getElementById("results");
  const statusLine = document.getElementById("upload-status");
  const errorBox = document.getElementById("upload-error");
  const clearButton = document.getElementById("clear-results");
  const apiUrl = form.dataset.api;
  const explainUrl = form.dataset.explain;
  const maxBytes = Number(form.dataset.maxBytes);
  // Choosing files classifies them at once and clears the picker (so choosing the same file again
  // still fires `change`); "Classify" then classifies the last photos chosen, dropped or pasted again.
  let lastFiles = [];

  function percent(p) {
    return (p * 100).toFixed(1) + "%";
  }

  function wholePercent(p) {
    return (p * 100).toFixed(0) + "%";
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function newCard(file) {
    const name = file.name || "pasted image";
    const card = element("article", "card pending");
    const image = element("img", "card-image");
    image.alt = "Your photo " + name;
    image.width = 128;
    image.height = 128;
    const url = URL.createObjectURL(file);
    image.addEventListener("load", () => {
      URL.revokeObjectURL(url);
      if (image.naturalWidth < 128) image.classList.add("pixelated");  // tiny photos stay crisp
    });
    image.addEventListener("error", () => { URL.revokeObjectURL(url); image.classList.add("broken"); });
    image.src = url;
    // the thumbnail crops the photo's centre square, as the model's input does, so the map lines up
    const overlay = element("img", "saliency-overlay pixelated");
    overlay.alt = "";
    overlay.hidden = true;
    const thumb = element("div", "card-thumb");
    thumb.append(image, overlay);
    const body = element("div", "card-body");
    body.append(element("h3", "card-title", name), element("p", "verdict", "Classifying…"));
    card.append(thumb, body);
    return card;
  }

  function scoreList(prediction) {
    const list = element("ol", "scores");
    list.setAttribute("aria-label", "Top " + prediction.top.length + " classes for " + prediction.filename);
    const candidates = prediction.candidates || [];
    for (const entry of prediction.top) {
      const item = element("li", candidates.includes(entry.label) ? "score candidate" : "score");
      const bar = element("meter", "score-bar");
      bar.min = 0;
      bar.max = 1;
      bar.value = entry.probability;
      bar.setAttribute("aria-hidden", "true");
      item.append(element("span", "score-label", entry.label), bar,
                  element("span", "score-value", percent(entry.probability)));
      list.append(item);
    }
    return list;
  }

  // The same sentences as templates/_prediction.html. `recognised: false` means the photo is none of
  // the classes: the label is only the closest guess, so it is said as such, the top-5 still shown.
  function writeVerdict(verdict, prediction) {
    if (prediction.recognised === false) {
      verdict.classList.add("unrecognised");
      verdict.textContent = "This doesn't look like any of the ten things I know. Closest: ";
      verdict.append(element("strong", null, prediction.label), ", " + wholePercent(prediction.confidence));
      return;
    }
    const candidates = prediction.candidates && prediction.candidates.length ? prediction.candidates : [prediction.label];
    verdict.textContent = capitalise(article(candidates[0])) + " ";
    verdict.append(element("strong", null, candidates[0]));
    if (candidates.length === 1) {
      verdict.append(" ", element("span", "muted", "(" + percent(prediction.confidence) + " sure)"));
      return;
    }
    // unsure: every class of the prediction set, most probable first ("A cat, or maybe a dog")
    verdict.classList.add("unsure");
    verdict.append(", or maybe ");
    candidates.slice(1).forEach((label, i, others) => {
      if (i > 0) verdict.append(i === others.length - 1 ? " or " : ", ");
      verdict.append(article(label) + " ", element("strong", null, label));
    });
  }

  function article(label) {
    return "aeiou".includes(label.charAt(0)) ? "an" : "a";
  }

  function capitalise(word) {
    return word.charAt(0).toUpperCase() + word.slice(1);
  }

  function showPrediction(card, prediction, model, file) {
    writeVerdict(card.querySelector(".verdict"), prediction);
    if (prediction.recognised === false) card.classList.add("unrecognised");
    else if (prediction.answer === "unsure") card.classList.add("unsure");
    card.classList.add("explainable");
    card.querySelector(".card-body").append(
      whyControl(card, file), scoreList(prediction),
      element("p", "answered-by", "Answered by " + model.name + " version " + model.version));
    card.classList.remove("pending");
    document.getElementById("model-name").textContent = model.name;
    document.getElementById("model-version").textContent = model.version;
  }

  function showCardError(card, message) {
    card.querySelector(".verdict").textContent = message;
    card.classList.remove("pending");
    card.classList.add("failed");
  }

  async function classify(file, card) {
    if (file.size > maxBytes) {
      showCardError(card, "This file is larger than the upload limit of " + (maxBytes / 1048576) + " MB.");
      return null;
    }
    const body = new FormData();
    body.append("image", file, file.name || "pasted-image.png");
    try {
      const response = await fetch(apiUrl, { method: "POST", body: body, headers: { Accept: "application/json" } });
      const data = await response.json();
      if (!response.ok) {
        showCardError(card, data.error ? data.error.message : "The server refused this photo.");
        return null;
      }
      showPrediction(card, data.predictions[0], data.model, file);
      // static/feedback.js adds "Wrong? Tell us what it is" with this very file
      card.dispatchEvent(new CustomEvent("classified", { bubbles: true, detail: { file: file, prediction: data.predictions[0], model: data.model } }));
      return data.predictions[0];
    } catch (error) {
      showCardError(card, "The server could not be reached; try again.");
      return null;
    }
  }

  function whyControl(card, file) {
    const box = element("div", "why");
    const button = element("button", "why-toggle", "Why?");
    button.type = "button";
    button.setAttribute("aria-pressed", "false");
    const note = element("p", "why-note");
    note.hidden = true;
    button.addEventListener("click", () => toggleWhy(card, file, button, note));
    box.append(button, note);
    return box;
  }

  function showWhy(card, button, note, shown) {
    card.querySelector(".saliency-overlay").hidden = !shown;
    note.hidden = !shown;
    button.setAttribute("aria-pressed", String(shown));
    button.textContent = shown ? "Hide why" : "Why?";
  }

  // The first press asks the server; later presses only show or hide what it answered.
  async function toggleWhy(card, file, button, note) {
    const overlay = card.querySelector(".saliency-overlay");
    if (overlay.getAttribute("src")) {
      showWhy(card, button, note, button.getAttribute("aria-pressed") !== "true");
      return;
    }
    button.disabled = true;
    button.textContent = "Working out why…";
    const answer = await explain(file);
    button.disabled = false;
    if (answer.error) {
      button.textContent = "Why?";
      note.textContent = answer.error;
      note.hidden = false;
      return;
    }
    overlay.src = answer.overlay;
    note.textContent = "Red marks the pixels of the 32×32 picture it looked at that counted most for ";
    note.append(element("strong", null, answer.label), ".");
    showWhy(card, button, note, true);
  }

  async function explain(file) {
    const body = new FormData();
    body.append("image", file, file.name || "pasted-image.png");
    try {
      const response = await fetch(explainUrl, { method: "POST", body: body, headers: { Accept: "application/json" } });
      const data = await response.json();
      if (!response.ok) return { error: data.error ? data.error.message : "The server could not explain this photo." };
      return data;
    } catch (error) {
      return { error: "The server could not be reached; try again." };
    }
  }

  function summary(outcomes) {
    const done = outcomes.filter(Boolean);
    if (outcomes.length === 1) {
      if (!done.length) return "The photo could not be classified.";
      const answer = done[0];
      return answer.recognised === false
        ? answer.filename + ": none of the ten classes (closest: " + answer.label + ", " + wholePercent(answer.confidence) + ")"
        : answer.filename + ": " + answer.label + ", " + percent(answer.confidence);
    }
    const refused = outcomes.length - done.length;
    const tail = refused ? ", " + refused + " refused." : ".";
    const unknown = done.filter((answer) => answer.recognised === false).length;
    const none = unknown ? " " + unknown + (unknown === 1 ? " looks" : " look") + " like none of the ten classes." : "";
    return done.length + " of " + outcomes.length + " photos classified" + tail + none;
  }

  async function handleFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) {
      showError("Choose, drop or paste a photo first.");
      return;
    }
    lastFiles = files;
    errorBox.hidden = true;
    const cards = files.map(newCard);
    const batch = document.createDocumentFragment();
    batch.append(...cards);
    results.prepend(batch);
    clearButton.hidden = false;
    results.setAttribute("aria-busy", "true");
    statusLine.textContent = "Classifying " + files.length + (files.length === 1 ? " photo…" : " photos…");
    const outcomes = await Promise.all(files.map((file, i) => classify(file, cards[i])));
    results.setAttribute("aria-busy", "false");
    statusLine.textContent = summary(outcomes);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    handleFiles(input.files.length ? input.files : lastFiles);
    input.value = "";
  });
  input.addEventListener("change", () => {
    if (!input.files.length) return;
    handleFiles(input.files);
    input.value = "";
  });

  // The whole page accepts dropped files; the drop zone lights up while something is dragged over.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    form.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) form.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    form.classList.remove("dragging");
    handleFiles(event.dataTransfer && event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData && event.clipboardData.files;
    if (files && files.length) {
      event.preventDefault();
      handleFiles(files);
    }
  });

  // --- "Take a photo": the camera through getUserMedia --------------------------------------
  const cameraButton = document.getElementById("camera-button");
  const cameraPanel = document.getElementById("camera-panel");
  const cameraMessage = document.getElementById("camera-message");
  const preview = document.getElementById("camera-preview");
  let stream = null;

  const KEEP_GOING = " You can still choose, drop or paste photos.";

  function cameraProblem(error) {
    if (!error) return "This browser offers no camera to this page (it needs https:// or localhost)." + KEEP_GOING;
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      return "Camera access was not allowed, so there is nothing to take a photo with." + KEEP_GOING;
    }
    if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      return "No camera was found on this device." + KEEP_GOING;
    }
    if (error.name === "NotReadableError") return "The camera is busy in another program." + KEEP_GOING;
    return "The camera could not be started (" + error.name + ")." + KEEP_GOING;
  }

  function showCameraMessage(text) {
    cameraMessage.textContent = text;
    cameraMessage.hidden = false;
  }

  async function openCamera() {
    cameraMessage.hidden = true;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showCameraMessage(cameraProblem(null));
      return;
    }
    try {
      // "environment" is a preference: a phone's back camera, any camera elsewhere
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (error) {
      showCameraMessage(cameraProblem(error));
      return;
    }
    preview.srcObject = stream;
    cameraPanel.hidden = false;
    cameraButton.setAttribute("aria-expanded", "true");
    document.getElementById("camera-capture").focus();
  }

  function stopCamera() {
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    preview.srcObject = null;
    cameraPanel.hidden = true;
    cameraButton.setAttribute("aria-expanded", "false");
  }

  function cameraFileName() {
    return "camera-" + new Date().toTimeString().slice(0, 8).replace(/:/g, "-") + ".jpg";
  }

  function capturePhoto() {
    if (!preview.videoWidth) {
      showCameraMessage("The camera is still starting; try again in a moment.");
      return;
    }
    const canvas = document.createElement("canvas");
    canvas.width = preview.videoWidth;
    canvas.height = preview.videoHeight;
    canvas.getContext("2d").drawImage(preview, 0, 0);
    canvas.toBlob((blob) => {
      if (!blob) {
        showCameraMessage("The photo could not be captured; try again.");
        return;
      }
      cameraMessage.hidden = true;
      handleFiles([new File([blob], cameraFileName(), { type: "image/jpeg" })]);
    }, "image/jpeg", 0.92);
  }

  cameraButton.setAttribute("aria-expanded", "false");
  cameraButton.addEventListener("click", () => (stream ? stopCamera() : openCamera()));
  document.getElementById("camera-capture").addEventListener("click", capturePhoto);
  document.getElementById("camera-close").addEventListener("click", () => {
    stopCamera();
    cameraButton.focus();
  });
  window.addEventListener("pagehide", stopCamera);  // the camera light goes off with the page

  clearButton.addEventListener("click", () => {
    results.replaceChildren();
    clearButton.hidden = true;
    statusLine.textContent = "Results cleared.";
    input.focus();
  });
})();

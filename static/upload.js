// Upload page: classify photos chosen, dropped or pasted, through the JSON API, without a reload.
// Each photo gets its own card and its own request, so one refused file does not hold up the others.
// Previews are object URLs of the user's own files: nothing uploaded comes back from the server.
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
    const body = element("div", "card-body");
    body.append(element("h3", "card-title", name), element("p", "verdict", "Classifying…"));
    card.append(image, body);
    return card;
  }

  function scoreList(prediction) {
    const list = element("ol", "scores");
    list.setAttribute("aria-label", "Top " + prediction.top.length + " classes for " + prediction.filename);
    for (const entry of prediction.top) {
      const item = element("li", "score");
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
    verdict.textContent = "Looks like ";
    verdict.append(element("strong", null, prediction.label), " ",
                   element("span", "muted", "(" + percent(prediction.confidence) + " sure)"));
  }

  function showPrediction(card, prediction, model) {
    writeVerdict(card.querySelector(".verdict"), prediction);
    if (prediction.recognised === false) card.classList.add("unrecognised");
    card.querySelector(".card-body").append(
      scoreList(prediction), element("p", "answered-by", "Answered by " + model.name + " version " + model.version));
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
      showPrediction(card, data.predictions[0], data.model);
      // static/feedback.js adds "Wrong? Tell us what it is" with this very file
      card.dispatchEvent(new CustomEvent("classified", { bubbles: true, detail: { file: file, prediction: data.predictions[0], model: data.model } }));
      return data.predictions[0];
    } catch (error) {
      showCardError(card, "The server could not be reached; try again.");
      return null;
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

  clearButton.addEventListener("click", () => {
    results.replaceChildren();
    clearButton.hidden = true;
    statusLine.textContent = "Results cleared.";
    input.focus();
  });
})();

// Upload page: "Wrong? Tell us what it is" under each result. upload.js announces each classified
// photo with a "classified" event; the form from <template id="feedback-template"> joins its card
// and, only when the user sends it, posts the user's own file and answer to /api/v1/feedback.
"use strict";

(function () {
  const template = document.getElementById("feedback-template");
  const results = document.getElementById("results");
  if (!template || !results) return;

  async function send(form, file) {
    const status = form.querySelector(".feedback-status");
    const button = form.querySelector("button");
    const body = new FormData(form);
    body.append("image", file, file.name || "pasted-image.png");
    button.disabled = true;
    status.textContent = "Sending…";
    try {
      const response = await fetch(form.dataset.api, { method: "POST", body: body, headers: { Accept: "application/json" } });
      const data = await response.json();
      if (!response.ok) {
        status.textContent = data.error ? data.error.message : "The server refused the feedback.";
        button.disabled = false;
        return;
      }
      status.textContent = data.duplicate ? "We already had this photo; it is kept once. Thank you."
        : "Thank you: your photo and answer were kept for review.";
      form.elements.label.disabled = true;
    } catch (error) {
      status.textContent = "The server could not be reached; try again.";
      button.disabled = false;
    }
  }

  results.addEventListener("classified", (event) => {
    const { file, prediction, model } = event.detail;
    const details = template.content.firstElementChild.cloneNode(true);
    const form = details.querySelector("form");
    form.elements.predicted.value = prediction.recognised === false ? "none" : prediction.label;
    form.elements.version.value = model.version;
    form.addEventListener("submit", (submitEvent) => {
      submitEvent.preventDefault();
      send(form, file);
    });
    event.target.append(details);
  });
})();

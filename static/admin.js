// Job page: polls the job's JSON once a second and updates the progress bar, the loss and
// accuracy charts (SVG), the per-epoch table and the log tail without reloading. When the job
// ends, the page reloads once to show the server-rendered result (new version, gate, error).
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) { return; }
  var SVG = "http://www.w3.org/2000/svg";
  var ACTIVE = ["queued", "running"];
  var url = root.dataset.statusUrl;
  var since = 0;
  var steps = [];
  var epochs = [];
  var wasActive = ACTIVE.indexOf(root.dataset.status) >= 0;

  function text(id, value) { document.getElementById(id).textContent = value; }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) { return "–"; }
    seconds = Math.round(seconds);
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m ? m + " min " + s + " s" : s + " s";
  }

  function el(name, attrs, content) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (content !== undefined) { node.textContent = content; }
    return node;
  }

  // Draws series [{points: [[x, y]...], cls, dots}] into an SVG with axes and tick labels.
  function chart(svg, series, xLabel, yFixed) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 480, H = 260, L = 52, R = 12, T = 12, B = 40;
    var all = [];
    series.forEach(function (s) { all = all.concat(s.points); });
    svg.dataset.points = String(all.length);
    if (!all.length) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty"}, "waiting for data"));
      return;
    }
    var xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = yFixed ? yFixed[0] : Math.min.apply(null, ys), y1 = yFixed ? yFixed[1] : Math.max.apply(null, ys);
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y1 = y0 + 1; y0 = Math.max(0, y0 - 1); }
    if (!yFixed) { var pad = (y1 - y0) * 0.05; y0 = Math.max(0, y0 - pad); y1 += pad; }
    function px(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
    function py(y) { return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); }
    svg.appendChild(el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis"}));
    svg.appendChild(el("line", {x1: L, y1: T, x2: L, y2: H - B, "class": "axis"}));
    for (var i = 0; i <= 4; i++) {
      var yv = y0 + (y1 - y0) * i / 4, xv = x0 + (x1 - x0) * i / 4;
      svg.appendChild(el("line", {x1: L, y1: py(yv), x2: W - R, y2: py(yv), "class": "grid"}));
      svg.appendChild(el("text", {x: L - 6, y: py(yv) + 4, "text-anchor": "end", "class": "tick"}, yv.toFixed(2)));
      svg.appendChild(el("text", {x: px(xv), y: H - B + 16, "text-anchor": "middle", "class": "tick"},
        String(x1 - x0 >= 8 ? Math.round(xv) : Math.round(xv * 10) / 10)));
    }
    svg.appendChild(el("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "class": "label"}, xLabel));
    series.forEach(function (s) {
      if (!s.points.length) { return; }
      var d = s.points.map(function (p) { return px(p[0]).toFixed(1) + "," + py(p[1]).toFixed(1); }).join(" ");
      svg.appendChild(el("polyline", {points: d, "class": "line " + s.cls}));
      if (s.dots) {
        s.points.forEach(function (p) {
          svg.appendChild(el("circle", {cx: px(p[0]), cy: py(p[1]), r: 3.5, "class": "dot " + s.cls}));
        });
      }
    });
  }

  function epochEndStep(e) {
    var last = null;
    steps.forEach(function (s) { if (s.epoch === e.epoch) { last = s.global_step; } });
    if (last !== null) { return last; }
    var spe = steps.length ? steps[steps.length - 1].steps_per_epoch : 1;
    return e.epoch * spe;
  }

  function drawCharts() {
    chart(document.getElementById("loss-chart"), [
      {points: steps.map(function (s) { return [s.global_step, s.loss]; }), cls: "train"},
      {points: epochs.map(function (e) { return [epochEndStep(e), e.val_loss]; }), cls: "val", dots: true}
    ], "step");
    chart(document.getElementById("acc-chart"), [
      {points: epochs.map(function (e) { return [e.epoch, e.val_accuracy]; }), cls: "val", dots: true},
      {points: epochs.map(function (e) { return [e.epoch, e.train_accuracy]; }), cls: "train", dots: true}
    ], "epoch", [0, 1]);
  }

  function addEpochRow(e) {
    var row = document.createElement("tr");
    [String(e.epoch), e.train_loss.toFixed(4), (e.train_accuracy * 100).toFixed(2) + "%",
     e.val_loss.toFixed(4), (e.val_accuracy * 100).toFixed(2) + "%", duration(e.elapsed_s)
    ].forEach(function (v) { var td = document.createElement("td"); td.textContent = v; row.appendChild(td); });
    document.querySelector("#epochs-table tbody").appendChild(row);
  }

  function update(job) {
    (job.metrics || []).forEach(function (m) {
      if (m.type === "step") { steps.push(m); }
      if (m.type === "epoch") { epochs.push(m); addEpochRow(m); }
    });
    since = job.next_since || since;
    var progress = job.status === "succeeded" ? 1 : (job.progress || 0);
    document.getElementById("progress").value = progress;
    text("progress-pct", Math.round(progress * 100) + "%");
    text("progress-epoch", (job.epoch || 0) + "/" + (job.epochs || "?"));
    text("progress-step", (job.step || 0) + "/" + (job.steps_per_epoch || "?"));
    text("progress-elapsed", duration(job.status === "running" ? job.duration_s : job.elapsed_s));
    text("progress-eta", job.status === "running" ? duration(job.eta_s) : "–");
    var where = document.getElementById("job-where");
    if (where) {
      where.textContent = job.waiting_for_worker ? "Waiting for a worker" : job.host
        ? "Runs on " + job.host + ": " + (job.device || "?") + ", " + (job.processes || 1) + " process(es)"
        : "Not started yet";
    }
    var status = document.getElementById("job-status");
    status.textContent = job.cancel_requested && ACTIVE.indexOf(job.status) >= 0 ? "stopping" : job.status;
    status.className = "badge status-" + job.status;
    var log = document.getElementById("log");
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = (job.log_tail || []).join("\n");
    if (atBottom) { log.scrollTop = log.scrollHeight; }
    drawCharts();
    return ACTIVE.indexOf(job.status) >= 0;
  }

  function poll() {
    fetch(url + "?since=" + since, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
        return r.json();
      })
      .then(function (job) {
        var active = update(job);
        if (active) { window.setTimeout(poll, 1000); }
        else if (wasActive) { window.location.reload(); }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }

  poll();
})();

// tuneloop ui: live loss curves, the playground's streaming, and confirmations. No libraries, no CDN.
"use strict";
const COLORS = ["#47a", "#c63", "#393", "#939", "#996", "#369", "#c36", "#666"];

function svgEl(name, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// Draw every series (one per run and metric) on one set of axes.
function drawChart(svg, series) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 720, H = 300, L = 50, B = 30, T = 10, R = 10;
  const all = series.flatMap((s) => s.points);
  if (!all.length) { svg.appendChild(svgEl("text", {x: L, y: H / 2})).textContent = "no metrics yet"; return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys, 0), y1 = Math.max(...ys, y0 + 1e-9);
  const sx = (x) => L + (W - L - R) * (x - x0) / (x1 - x0), sy = (y) => H - B - (H - B - T) * (y - y0) / (y1 - y0);
  svg.appendChild(svgEl("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis"}));
  svg.appendChild(svgEl("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"}));
  for (const [v, y] of [[y1, T + 4], [y0, H - B]]) svg.appendChild(svgEl("text", {x: 2, y: y})).textContent = v.toPrecision(3);
  svg.appendChild(svgEl("text", {x: L, y: H - 8})).textContent = "step " + x0;
  svg.appendChild(svgEl("text", {x: W - R - 70, y: H - 8})).textContent = "step " + x1;
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgEl("polyline", {points: d, fill: "none", stroke: COLORS[i % COLORS.length],
      "stroke-width": s.dashed ? 1.5 : 2, "stroke-dasharray": s.dashed ? "5,3" : "none",
      "data-series": s.label, "data-count": s.points.length}));
  });
}

// Poll /api/runs/NAME/metrics for each run; redraw as lines arrive; stop once no run is training.
function startCharts() {
  const svg = document.getElementById("loss-chart");
  if (!svg) return;
  const runs = JSON.parse(svg.dataset.runs), poll = Number(svg.dataset.pollMs) || 1000;
  const state = runs.map((name) => ({name, offset: 0, loss: [], val: [], done: false}));
  const legend = document.getElementById("chart-legend");
  async function tick() {
    for (const run of state.filter((r) => !r.done)) {
      try {
        const response = await fetch(`/api/runs/${encodeURIComponent(run.name)}/metrics?offset=${run.offset}`);
        const data = await response.json();
        for (const p of data.points) {
          if (typeof p.loss === "number") run.loss.push([p.step, p.loss]);
          if (typeof p.validation_loss === "number") run.val.push([p.step, p.validation_loss]);
        }
        run.offset = data.offset;
        const status = document.getElementById("run-status");
        if (status && runs.length === 1) { status.textContent = data.status; status.className = "status " + data.status; }
        if (data.status !== "running" && data.points.length === 0) run.done = true;
      } catch (e) { /* a failed poll is retried on the next tick */ }
    }
    const series = state.flatMap((r) => [{label: r.name + " loss", points: r.loss},
                                         {label: r.name + " validation_loss", points: r.val, dashed: true}]);
    drawChart(svg, series);
    svg.dataset.points = String(state.reduce((n, r) => n + r.loss.length, 0));
    legend.textContent = series.filter((s) => s.points.length).map((s) => `${s.label} (${s.points.length})`).join("; ");
    if (state.some((r) => !r.done)) setTimeout(tick, poll);
  }
  tick();
}

// Forms that move an alias ask first; the server refuses a move without confirm=yes.
function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
      form.querySelector("input[name=confirm]").value = "yes";
    });
  }
}

function showFieldError(form, field, text) {
  for (const p of document.querySelectorAll("p.error[data-field]")) { p.hidden = true; p.textContent = ""; }
  const target = document.querySelector(`p.error[data-field="${field}"]`) || document.querySelector('p.error[data-field="model"]');
  target.textContent = `${field || "error"}: ${text}`;
  target.hidden = false;
}

// Read an OpenAI server-sent event stream and append each delta to the column's answer box.
async function streamInto(column, payload) {
  const box = column.querySelector(".answer"), rate = column.querySelector(".rate");
  box.textContent = ""; rate.hidden = true; column.dataset.state = "streaming";
  const response = await fetch("/api/playground", {method: "POST", headers: {"Content-Type": "application/json"},
                                                    body: JSON.stringify(payload)});
  if (!response.ok) {
    const data = await response.json();
    showFieldError(null, data.field, data.error);
    column.dataset.state = "error";
    return;
  }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "", chunks = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        column.dataset.completionId = chunk.id;
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        if (delta.content) { box.textContent += delta.content; chunks += 1; column.dataset.chunks = String(chunks); }
      }
    }
  }
  column.dataset.state = "done";
  rate.hidden = false;
}

function startPlayground() {
  const form = document.getElementById("playground");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const p of document.querySelectorAll("p.error[data-field]")) p.hidden = true;
    const both = document.getElementById("side-by-side").checked;
    const columns = [...document.querySelectorAll(".answer-col")].slice(0, both ? 2 : 1);
    document.querySelectorAll(".answer-col")[1].hidden = !both;
    await Promise.all(columns.map((column, i) => streamInto(column, {
      model: document.getElementById("model" + i).value, prompt: document.getElementById("prompt").value,
      max_tokens: document.getElementById("max_tokens").value, temperature: document.getElementById("temperature").value})));
  });
  for (const column of document.querySelectorAll(".answer-col")) {
    for (const button of column.querySelectorAll("button[data-rating]")) {
      button.addEventListener("click", async () => {
        const response = await fetch("/api/feedback", {method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({completion_id: column.dataset.completionId, rating: Number(button.dataset.rating)})});
        column.querySelector(".rated").textContent = response.ok ? " rated, thanks" : " rating failed: " + (await response.text());
      });
    }
  }
}

document.addEventListener("DOMContentLoaded", () => { startCharts(); confirmForms(); startPlayground(); });

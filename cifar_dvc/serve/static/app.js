// The demo page: send a photo (file or URL) to POST /api/predict and draw the answer with D3.
// Plain script, no build step; D3 is vendored under /static/vendor/d3/ so the page works offline.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let photoUrl = null; // object URL of the last local file, revoked when replaced

  function setState(state) {
    // Tests and screen readers can tell when an answer is on screen.
    document.body.dataset.state = state;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    $("status").textContent = "";
    setState("error");
  }

  async function loadModel() {
    try {
      const response = await fetch("/api/model");
      const info = await response.json();
      $("model-name").textContent = info.model;
      const blur = info.preprocessing.blur_divisor;
      $("model-details").textContent =
        `${info.classes.length} classes (${info.dataset}), input ${info.image_shape.join("x")}; ` +
        `photos are squared (${info.preprocessing.square}) and ` +
        (blur ? `blurred with an s x s Gaussian, s = round(width / ${blur}), before resizing ` +
                `(seed 004's rule).` : "resized without blur.");
    } catch (err) {
      $("model-details").textContent = "The model description could not be loaded.";
    }
  }

  async function predict(body, headers, localPhoto) {
    $("error").hidden = true;
    $("status").textContent = "Classifying\u2026";
    setState("busy");
    let response;
    let answer;
    try {
      response = await fetch("/api/predict", { method: "POST", body, headers });
      answer = await response.json();
    } catch (err) {
      showError("The server could not be reached or did not answer with JSON.");
      return;
    }
    if (!response.ok) {
      showError(answer.error || `The server answered HTTP ${response.status}.`);
      return;
    }
    render(answer, localPhoto);
  }

  function predictFile(file) {
    if (!file) return;
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    const form = new FormData();
    form.append("image", file);
    predict(form, {}, photoUrl);
  }

  function predictUrl(url) {
    predict(JSON.stringify({ url }), { "Content-Type": "application/json" }, null);
  }

  function render(answer, localPhoto) {
    $("result").hidden = false;
    $("photo").src = localPhoto || answer.photo;
    const input = answer.input;
    $("photo-caption").textContent = `the photo, ${input.width}x${input.height}`;
    $("resized").src = answer.images.resized;
    const blurred = answer.images.blurred;
    $("blurred-figure").hidden = !blurred;
    if (blurred) $("blurred").src = blurred;
    // Outline the image whose answer the chart shows.
    $("resized").classList.toggle("model-input", !blurred);
    $("blurred").classList.toggle("model-input", Boolean(blurred));
    $("resized-caption").textContent = blurred ? "resized, no blur" : "resized: what the model sees";
    $("blurred-caption").textContent =
      `blurred (${input.blur_kernel}x${input.blur_kernel} Gaussian), resized: what the model sees`;
    drawChart(answer.predictions);
    const other = answer.predictions_unblurred;
    $("unblurred").hidden = !other;
    if (other) {
      $("unblurred").textContent = "Without the blur: " +
        other.map((p) => `${p.label} ${(100 * p.probability).toFixed(1)}%`).join(", ");
    }
    $("status").textContent = `${answer.model} answered in ${answer.elapsed_ms.toFixed(1)} ms.`;
    setState("done");
  }

  function drawChart(predictions) {
    const barHeight = 28;
    const margin = { top: 4, right: 64, bottom: 4, left: 130 };
    const width = 460;
    const height = margin.top + margin.bottom + barHeight * predictions.length;
    const svg = d3.select("#chart").attr("viewBox", `0 0 ${width} ${height}`)
      .attr("width", width).attr("height", height);
    svg.selectAll("*").remove();

    const x = d3.scaleLinear().domain([0, 1]).range([0, width - margin.left - margin.right]);
    const y = d3.scaleBand().domain(d3.range(predictions.length))
      .range([margin.top, height - margin.bottom]).padding(0.2);
    const rows = svg.selectAll("g.row").data(predictions).join("g")
      .attr("class", "row").attr("transform", (d, i) => `translate(0,${y(i)})`);
    rows.append("text").attr("class", "bar-label")
      .attr("x", margin.left - 8).attr("y", y.bandwidth() / 2).attr("text-anchor", "end")
      .text((d) => d.label);
    rows.append("rect").attr("class", "bar").attr("data-label", (d) => d.label)
      .attr("x", margin.left).attr("height", y.bandwidth())
      .attr("width", (d) => Math.max(1, x(d.probability)))
      .append("title").text((d) => `${d.label}: ${d.probability}`);
    rows.append("text").attr("class", "bar-value")
      .attr("x", (d) => margin.left + Math.max(1, x(d.probability)) + 6).attr("y", y.bandwidth() / 2)
      .text((d) => `${(100 * d.probability).toFixed(1)}%`);
  }

  function init() {
    const drop = $("drop-zone");
    $("file-input").addEventListener("change", (event) => predictFile(event.target.files[0]));
    ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    }));
    ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("dragging")));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      predictFile(event.dataTransfer.files[0]);
    });
    $("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      predictUrl($("url-input").value.trim());
    });
    loadModel();
    setState("ready");
  }

  document.addEventListener("DOMContentLoaded", init);
})();

// The demo page: send a photo (file or URL) to POST /api/predict and draw the answer with D3;
// pick among the trained models (GET /api/models), compare them all (POST /api/compare), and lay
// the chosen model's occlusion map (the API's "occlusion" array) over the input and the photo.
// Plain script, no build step; D3 is vendored under /static/vendor/d3/ so the page works offline.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let photoUrl = null; // object URL of the last local file, revoked when replaced
  let lastPhoto = null; // {file} or {url}: what the picker and "compare" send again
  let currentModel = null;

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

  const percent = (p) => `${(100 * p).toFixed(1)}%`;

  async function getJson(url, options) {
    // Any failure (network, non-JSON, HTTP error) becomes an Error whose message the page shows.
    let response;
    let body;
    try {
      response = await fetch(url, options);
      body = await response.json();
    } catch (err) {
      throw new Error("The server could not be reached or did not answer with JSON.");
    }
    if (!response.ok) throw new Error(body.error || `The server answered HTTP ${response.status}.`);
    return body;
  }

  async function loadModels() {
    let listing;
    try {
      listing = await getJson("/api/models");
    } catch (err) {
      $("model-details").textContent = "The list of models could not be loaded.";
      return;
    }
    const picker = $("model-picker");
    picker.replaceChildren();
    const unavailable = [];
    for (const model of listing.models) {
      const option = document.createElement("option");
      option.value = model.name;
      if (model.status === "unavailable") {
        option.disabled = true;
        option.textContent = `${model.name} (unavailable)`;
        option.title = model.reason;
        unavailable.push(model);
      } else {
        option.textContent = model.name;
      }
      picker.append(option);
    }
    picker.value = listing.default;
    picker.disabled = listing.models.length < 2;
    showUnavailable(unavailable);
    await selectModel(listing.default);
  }

  function showUnavailable(models) {
    $("unavailable").hidden = models.length === 0;
    $("unavailable-summary").textContent =
      `${models.length} model${models.length === 1 ? "" : "s"} unavailable`;
    $("unavailable-list").replaceChildren(...models.map((m) => {
      const item = document.createElement("li");
      item.dataset.model = m.name;
      const name = document.createElement("strong");
      name.textContent = m.name;
      item.append(name, `: ${m.reason}`);
      return item;
    }));
  }

  async function selectModel(name) {
    currentModel = name;
    $("model-name").textContent = name;
    $("model-details").textContent = `Loading ${name}\u2026`;
    try {
      // The first request for a model loads it on the server: this can take a few seconds.
      const info = await getJson(`/api/model?model=${encodeURIComponent(name)}`);
      if (currentModel !== name) return; // the user picked another one meanwhile
      const blur = info.preprocessing.blur_divisor;
      $("model-details").textContent =
        `${info.classes.length} classes (${info.dataset}), input ${info.image_shape.join("x")}; ` +
        `photos are squared (${info.preprocessing.square}) and ` +
        (blur ? `blurred with an s x s Gaussian, s = round(width / ${blur}), before resizing ` +
                `(seed 004's rule).` : "resized without blur.") + ` ${info.tta.note}`;
    } catch (err) {
      if (currentModel === name) $("model-details").textContent = err.message;
    }
  }

  // The request body of the last photo, built afresh (a FormData or a JSON string is single-use).
  function photoRequest() {
    if (lastPhoto.file) {
      const form = new FormData();
      form.append("image", lastPhoto.file);
      return { method: "POST", body: form };
    }
    return { method: "POST", body: JSON.stringify({ url: lastPhoto.url }),
             headers: { "Content-Type": "application/json" } };
  }

  async function predict() {
    $("error").hidden = true;
    $("status").textContent = "Classifying\u2026";
    setState("busy");
    const model = encodeURIComponent(currentModel);
    try {
      render(await getJson(`/api/predict?model=${model}&occlusion=1`, photoRequest()));
    } catch (err) {
      showError(err.message);
    }
  }

  function usePhoto(photo) {
    lastPhoto = photo;
    $("compare-button").disabled = false;
    $("compare").hidden = true; // an old comparison is not about this photo
    predict();
  }

  function predictFile(file) {
    if (!file) return;
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    usePhoto({ file });
  }

  function predictUrl(url) {
    usePhoto({ url });
  }

  function render(answer) {
    $("result").hidden = false;
    $("photo").src = lastPhoto.file ? photoUrl : answer.photo;
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
    drawChart(d3.select("#chart"), answer.predictions, 460);
    const other = answer.predictions_unblurred;
    $("unblurred").hidden = !other;
    if (other) {
      $("unblurred").textContent = "Without the blur: " +
        other.map((p) => `${p.label} ${percent(p.probability)}`).join(", ");
    }
    renderOcclusion(answer.occlusion, blurred || answer.images.resized, input);
    $("status").textContent = `${answer.model} answered in ${answer.elapsed_ms.toFixed(1)} ms.`;
    setState("done");
  }

  // Each input pixel's mean drop over the patches covering it (cifar_dvc.serve.explain.pixel_map).
  function pixelMap(occlusion) {
    const n = occlusion.image_size;
    const p = occlusion.patch;
    const total = new Float64Array(n * n);
    const count = new Uint16Array(n * n);
    occlusion.positions.forEach((top, i) => occlusion.positions.forEach((left, j) => {
      for (let y = top; y < top + p; y++) {
        for (let x = left; x < left + p; x++) {
          total[y * n + x] += occlusion.drop[i][j];
          count[y * n + x] += 1;
        }
      }
    }));
    return Array.from(total, (t, k) => t / Math.max(1, count[k]));
  }

  // Red where covering lowers the class's probability, blue where it raises it; opacity in
  // proportion to the drop, scaled to the largest one but never below 10 points, so a model that
  // no patch moves shows a faint map rather than loud noise.
  function paint(canvas, values, n) {
    canvas.width = n;
    canvas.height = n;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(n, n);
    const scale = Math.max(0.1, d3.max(values, Math.abs));
    values.forEach((v, k) => {
      const [r, g, b] = v >= 0 ? [220, 20, 20] : [20, 80, 220];
      image.data.set([r, g, b, Math.round(210 * Math.min(1, Math.abs(v) / scale))], 4 * k);
    });
    ctx.putImageData(image, 0, 0);
  }

  function renderOcclusion(occlusion, modelInput, input) {
    $("occlusion-figure").hidden = !occlusion;
    $("photo-occlusion").hidden = !occlusion;
    if (!occlusion) return;
    const values = pixelMap(occlusion);
    const n = occlusion.image_size;
    $("occlusion-input").src = modelInput;
    paint($("occlusion-canvas"), values, n);
    // The same map over the photo, on the square the model's input was cut from (with "pad" the
    // square is larger than the photo: the box clips it).
    const region = occlusion.region;
    const overlay = $("photo-occlusion");
    paint(overlay, values, n);
    overlay.style.left = `${100 * region.left / input.width}%`;
    overlay.style.top = `${100 * region.top / input.height}%`;
    overlay.style.width = `${100 * region.side / input.width}%`;
    overlay.style.height = `${100 * region.side / input.height}%`;
    const worst = d3.max(occlusion.drop.flat());
    $("occlusion-caption").textContent =
      `occlusion map: covering red regions (${occlusion.patch}x${occlusion.patch} patch) lowers ` +
      `P(${occlusion.label}) = ${percent(occlusion.probability)} by up to ` +
      `${(100 * Math.max(0, worst)).toFixed(1)} points`;
  }

  async function compareAll() {
    if (!lastPhoto) return;
    document.body.dataset.compare = "busy";
    $("compare-button").disabled = true;
    $("status").textContent = "Asking every model (the first time, each one is loaded)\u2026";
    try {
      const answer = await getJson("/api/compare", photoRequest());
      renderCompare(answer);
      $("status").textContent = `${answer.models.length} models answered in ` +
        `${answer.elapsed_ms.toFixed(0)} ms.`;
      document.body.dataset.compare = "done";
    } catch (err) {
      showError(err.message);
      document.body.dataset.compare = "error";
    } finally {
      $("compare-button").disabled = false;
    }
  }

  function renderCompare(answer) {
    const grid = d3.select("#compare-grid");
    grid.selectAll("*").remove();
    const cards = grid.selectAll("div.compare-card").data(answer.models).join("div")
      .attr("class", "compare-card")
      .classed("current", (d) => d.model === currentModel)
      .attr("data-model", (d) => d.model);
    cards.append("h3").text((d) => d.model);
    cards.filter((d) => d.error).append("p").attr("class", "compare-error").text((d) => d.error);
    cards.filter((d) => !d.error).each(function (d) {
      drawChart(d3.select(this).append("svg").attr("class", "compare-chart"), d.predictions, 260);
    });
    $("compare").hidden = false;
  }

  function drawChart(svg, predictions, width) {
    const barHeight = 28;
    const margin = { top: 4, right: 64, bottom: 4, left: width > 300 ? 130 : 90 };
    const height = margin.top + margin.bottom + barHeight * predictions.length;
    svg.attr("viewBox", `0 0 ${width} ${height}`).attr("width", width).attr("height", height);
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
      .text((d) => percent(d.probability));
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
    $("model-picker").addEventListener("change", async (event) => {
      await selectModel(event.target.value);
      if (lastPhoto) predict(); // the same photo, now through the picked model
    });
    $("compare-button").addEventListener("click", compareAll);
    loadModels().then(() => setState("ready"));
  }

  document.addEventListener("DOMContentLoaded", init);
})();

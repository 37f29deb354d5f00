/* Apiarium homepage: copy buttons, click-a-tile-to-copy and the live model catalog (with
 * each model's status: ready, not configured, demo, cooling down).
 * Everything else on the page works without this file.  Data is only ever inserted
 * with textContent / attributes, never as HTML. */
(function () {
  "use strict";

  var REFRESH_MS = 60000;
  var TYPES = ["chat", "image", "video", "embedding"];
  // GET /v1/models `status` -> what a tile says (as the server renders it: pages.py)
  var LABELS = { ready: "Ready", not_configured: "Not configured", demo: "Demo",
                 cooling_down: "Cooling down" };
  var keyEl = document.getElementById("api-key");
  var apiKey = keyEl ? keyEl.getAttribute("data-key") : "";
  var toast = document.getElementById("toast");
  var statusEl = document.getElementById("catalog-status");
  var refreshBtn = document.getElementById("catalog-refresh");
  var toastTimer = 0;
  var inFlight = false;

  document.documentElement.classList.add("js");

  // ------------------------------------------------------------------ copying
  function notify(text, isError) {
    if (!toast) return;
    toast.textContent = text;
    toast.classList.toggle("toast-error", !!isError);
    toast.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { toast.classList.remove("show"); }, 2400);
  }

  function legacyCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return legacyCopy(text); });
    }
    return legacyCopy(text);
  }

  function flash(el) {
    el.classList.add("copied");
    setTimeout(function () { el.classList.remove("copied"); }, 1600);
  }

  function copyAndConfirm(text, label, el) {
    copyText(text).then(function () {
      notify("Copied " + label);
      if (el) flash(el);
    }, function () {
      notify("Could not copy: select the text and copy it by hand", true);
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("button.copy[data-copy]"), function (btn) {
    btn.hidden = false;
    btn.addEventListener("click", function () {
      var target = document.getElementById(btn.getAttribute("data-copy"));
      if (target) copyAndConfirm(target.textContent, btn.getAttribute("data-what") || "", btn);
    });
  });

  // ------------------------------------------------------------------ the catalog
  var catalog = document.getElementById("catalog");

  function enhanceTile(tile) {
    var id = tile.getAttribute("data-model") || "";
    tile.setAttribute("role", "button");
    tile.setAttribute("tabindex", "0");
    tile.setAttribute("title", "Copy " + id);
    var state = tile.querySelector(".tile-status");      // read out with the id
    tile.setAttribute("aria-label", "Copy model id " + id +
                      (state ? " (" + state.textContent + ")" : ""));
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }

  function clockOf(d) {
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function statusText(model) {
    var label = LABELS[model.status] || String(model.status);
    if (model.status === "not_configured" && model.status_detail) {
      return label + ": " + model.status_detail;
    }
    if (model.status === "cooling_down" && typeof model.available_at === "number") {
      return label + " until " + clockOf(new Date(model.available_at * 1000));
    }
    return label;
  }

  function makeTile(model) {
    var li = document.createElement("li");
    li.className = "tile";
    li.setAttribute("data-model", model.id);
    var id = document.createElement("span");
    id.className = "tile-id";
    id.textContent = model.id;
    var meta = document.createElement("span");
    meta.className = "tile-meta";
    meta.textContent = model.owned_by || "";
    li.appendChild(id);
    li.appendChild(meta);
    if (typeof model.status === "string") {
      li.setAttribute("data-status", model.status);
      var state = document.createElement("span");
      state.className = "tile-status";
      state.textContent = statusText(model);
      li.appendChild(state);
    }
    enhanceTile(li);
    return li;
  }

  // the line above the tiles: a green dot only while some model is ready (as pages.py)
  function summary(models) {
    var ready = 0, demo = 0;
    models.forEach(function (m) {
      if (m.status === "ready") ready += 1;
      else if (m.status === "demo") demo += 1;
    });
    var total = models.length;
    if (ready) {
      return { state: "ok", text: ready === total ? "All " + ready + " models ready"
                                                  : ready + " of " + total + " models ready" };
    }
    if (demo) {
      return { state: "demo", text: "Demo: " + demo + " of " + total + " models give canned " +
               "answers from the built-in demo provider; none is connected to a real one" };
    }
    return { state: "down", text: total ? "No model is ready: each one below says why"
                                        : "No models on this gateway yet" };
  }

  function tileFrom(event) {
    var el = event.target;
    while (el && el !== catalog) {
      if (el.classList && el.classList.contains("tile")) return el;
      el = el.parentNode;
    }
    return null;
  }

  if (catalog) {
    Array.prototype.forEach.call(catalog.querySelectorAll(".tile"), enhanceTile);
    catalog.addEventListener("click", function (event) {
      var tile = tileFrom(event);
      if (tile) {
        var id = tile.getAttribute("data-model");
        copyAndConfirm(id, id, tile);
      }
    });
    catalog.addEventListener("keydown", function (event) {
      var tile = tileFrom(event);
      if (tile && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        tile.click();
      }
    });
  }

  function setStatus(text, state) {
    if (!statusEl) return;
    statusEl.textContent = text;
    statusEl.className = "status status-" + state;
  }

  function render(list) {
    var groups = {};
    var shown = [];
    TYPES.forEach(function (t) { groups[t] = []; });
    (list.data || []).forEach(function (m) {
      if (m && typeof m.id === "string" && groups[m.type]) {
        groups[m.type].push(m);
        shown.push(m);
      }
    });
    TYPES.forEach(function (t) {
      var ul = catalog.querySelector('ul.tiles[data-type="' + t + '"]');
      if (!ul) return;
      var frag = document.createDocumentFragment();
      groups[t].forEach(function (m) { frag.appendChild(makeTile(m)); });
      while (ul.firstChild) ul.removeChild(ul.firstChild);
      ul.appendChild(frag);
      var count = catalog.querySelector('[data-count="' + t + '"]');
      if (count) count.textContent = String(groups[t].length);
      var empty = catalog.querySelector('[data-empty="' + t + '"]');
      if (empty) empty.hidden = groups[t].length > 0;
    });
    catalog.setAttribute("data-live", "true");
    return shown;
  }

  function refresh() {
    if (!catalog || !apiKey || inFlight || !window.fetch) return;
    inFlight = true;
    if (refreshBtn) refreshBtn.disabled = true;
    fetch("/v1/models", {
      headers: { "Authorization": "Bearer " + apiKey, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit"
    }).then(function (resp) {
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.json();
    }).then(function (list) {
      var now = summary(render(list));
      setStatus(now.text + " · updated " + clockOf(new Date()), now.state);
    }).catch(function (err) {
      setStatus("Could not refresh (" + err.message + "); showing the list from page load.",
                "error");
    }).then(function () {
      inFlight = false;
      if (refreshBtn) refreshBtn.disabled = false;
    });
  }

  if (refreshBtn) {
    refreshBtn.hidden = false;
    refreshBtn.addEventListener("click", refresh);
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") refresh();
  });
  setInterval(function () {
    if (document.visibilityState === "visible") refresh();
  }, REFRESH_MS);
  refresh();
})();

/* The playground and the usage panel: the visitor's own key on the public API, as any client
 * calls it (POST /v1/chat/completions streamed and read here as server-sent events,
 * POST /v1/images/generations, GET /v1/keys/me/usage).  A playground run counts like any
 * other request: a 429 shows its message and the wait, any error its envelope's message.
 * Text only ever goes in with textContent / text nodes; the chart is SVG made here. */
(function () {
  "use strict";

  var keyEl = document.getElementById("api-key");
  var apiKey = keyEl ? keyEl.getAttribute("data-key") : "";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var DAY_NAMES = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

  function byId(id) { return document.getElementById(id); }

  function setText(id, text) {
    var el = byId(id);
    if (el) el.textContent = text;
  }

  function count(n) { return Number(n || 0).toLocaleString("en-US"); }

  function credits(n) {
    return Number(n || 0).toLocaleString("en-US", { maximumFractionDigits: 2 });
  }

  function clock() {
    var d = new Date();
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  // An answer that is not 2xx, as an Error: the envelope's message, the status, the wait.
  function failure(resp) {
    var wait = parseInt(resp.headers.get("Retry-After") || "", 10);
    return resp.text().then(function (text) {
      var message = "";
      try {
        var body = JSON.parse(text);
        if (body && body.error && typeof body.error.message === "string") {
          message = body.error.message;
        }
      } catch (e) { message = ""; }
      var err = new Error(message || "The gateway answered HTTP " + resp.status + ".");
      err.status = resp.status;
      err.wait = wait > 0 ? wait : 0;
      throw err;
    });
  }

  // GET (no body) or POST a JSON body with the visitor's key; resolves to a 2xx response.
  function api(path, body, signal) {
    var init = { headers: { "Authorization": "Bearer " + apiKey }, cache: "no-store",
                 credentials: "omit" };
    if (body) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (signal) init.signal = signal;
    return fetch(path, init).then(function (resp) { return resp.ok ? resp : failure(resp); });
  }

  // ------------------------------------------------------------------ the usage panel
  var panel = byId("usage-panel");
  var usageStatus = byId("usage-status");
  var usageBtn = byId("usage-refresh");
  var usageBusy = false;
  var usageAgain = false;

  function svg(name, attrs, parent) {
    var el = document.createElementNS(SVG_NS, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (parent) parent.appendChild(el);
    return el;
  }

  function dayLabel(date) {
    var d = new Date(date + "T00:00:00Z");
    return isNaN(d.getTime()) ? String(date) : DAY_NAMES[d.getUTCDay()] + " " + d.getUTCDate();
  }

  // One bar per day (requests), its number above, its day below; today's in the accent.
  function drawChart(days) {
    var chart = byId("usage-chart");
    if (!chart) return;
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    var width = 560, height = 170, top = 24, base = height - 30, room = base - top;
    var most = 1;
    days.forEach(function (d) { most = Math.max(most, d.requests || 0); });
    var slot = width / Math.max(days.length, 1);
    var barWidth = Math.min(48, slot * 0.6);
    svg("line", { "class": "axis", x1: 0, x2: width, y1: base + 0.5, y2: base + 0.5 }, chart);
    var spoken = [];
    days.forEach(function (d, i) {
      var n = d.requests || 0;
      var tall = n ? Math.max(3, Math.round(room * n / most)) : 2;
      var x = i * slot + (slot - barWidth) / 2;
      var today = i === days.length - 1;
      var label = today ? "Today" : dayLabel(d.date);
      var bar = svg("rect", {
        "class": "bar" + (today ? " bar-today" : "") + (n ? "" : " bar-empty"),
        x: x.toFixed(1), y: base - tall, width: barWidth.toFixed(1), height: tall, rx: 3,
        "data-date": d.date, "data-requests": n
      }, chart);
      var tokens = (d.prompt_tokens || 0) + (d.completion_tokens || 0);
      svg("title", {}, bar).textContent = d.date + ": " + count(n) + " requests, " +
        count(tokens) + " tokens, " + credits(d.credits) + " credits";
      svg("text", { "class": "value", x: (x + barWidth / 2).toFixed(1), y: base - tall - 6 },
          chart).textContent = count(n);
      svg("text", { "class": "day" + (today ? " day-today" : ""),
                    x: (x + barWidth / 2).toFixed(1), y: height - 9 }, chart).textContent = label;
      spoken.push(label + " " + count(n));
    });
    chart.setAttribute("aria-label", "Requests per day, last " + days.length + " days: " +
                       spoken.join(", "));
  }

  function renderUsage(doc) {
    var days = (doc && doc.data) || [];
    var today = days[days.length - 1] || {};
    var prompt = today.prompt_tokens || 0;
    var completion = today.completion_tokens || 0;
    setText("usage-requests", count(today.requests));
    setText("usage-tokens", count(prompt + completion));
    setText("usage-tokens-split", count(prompt) + " in · " + count(completion) + " out");
    var c = (doc && doc.credits) || {};
    var meter = byId("usage-meter");
    if (typeof c.daily_limit === "number" && c.daily_limit > 0 &&
        typeof c.remaining === "number") {
      setText("usage-credits", credits(c.remaining) + " of " + credits(c.daily_limit));
      if (meter) {
        meter.max = c.daily_limit;
        meter.low = 0.2 * c.daily_limit;
        meter.high = 0.5 * c.daily_limit;
        meter.optimum = c.daily_limit;
        meter.value = c.remaining;
        meter.textContent = credits(c.remaining) + " of " + credits(c.daily_limit);
        meter.setAttribute("aria-label", "Credits left today: " + meter.textContent);
        meter.hidden = false;
      }
    } else {
      setText("usage-credits", "No daily limit");
      if (meter) meter.hidden = true;
    }
    drawChart(days);
    panel.setAttribute("data-loaded", "true");
  }

  function setUsageStatus(text, isError) {
    if (!usageStatus) return;
    usageStatus.textContent = text;
    usageStatus.className = isError ? "status-error" : "";
  }

  function loadUsage() {
    if (!panel || !apiKey || !window.fetch) return;
    if (usageBusy) {                        // one at a time; the latest ask runs after it
      usageAgain = true;
      return;
    }
    usageBusy = true;
    if (usageBtn) usageBtn.disabled = true;
    api("/v1/keys/me/usage?days=7").then(function (resp) {
      return resp.json();
    }).then(function (doc) {
      renderUsage(doc);
      setUsageStatus("Updated " + clock() + ".", false);
    }).catch(function (err) {
      setUsageStatus("Could not load your usage: " + err.message, true);
    }).then(function () {
      usageBusy = false;
      if (usageBtn) usageBtn.disabled = false;
      if (usageAgain) {
        usageAgain = false;
        loadUsage();
      }
    });
  }

  if (panel) {
    if (usageBtn) {
      usageBtn.hidden = false;
      usageBtn.addEventListener("click", loadUsage);
    }
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") loadUsage();
    });
    loadUsage();
  }

  // ------------------------------------------------------------------ the playground
  var pg = byId("pg");
  if (!pg || !window.fetch) return;
  var form = byId("pg-form");
  var select = byId("pg-model");
  var promptEl = byId("pg-prompt");
  var sendBtn = byId("pg-send");
  var stopBtn = byId("pg-stop");
  var out = byId("pg-output");
  var figure = byId("pg-figure");
  var img = byId("pg-image");
  var caption = byId("pg-caption");
  var pgStatus = byId("pg-status");
  var controller = null;
  var waitUntil = 0;
  var waitTimer = 0;

  function state(name, text) {
    pg.setAttribute("data-state", name);
    pgStatus.setAttribute("data-state", name);
    pgStatus.textContent = text;
  }

  // A 429's wait: Send says how long, and comes back by itself.
  function cooldown(seconds) {
    waitUntil = Date.now() + seconds * 1000;
    clearInterval(waitTimer);
    function tick() {
      var left = Math.ceil((waitUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(waitTimer);
        waitUntil = 0;
        sendBtn.textContent = "Send";
        sendBtn.disabled = controller !== null;
        return;
      }
      sendBtn.textContent = "Send (wait " + left + " s)";
      sendBtn.disabled = true;
    }
    tick();
    waitTimer = setInterval(tick, 250);
  }

  // Take the whole events out of the buffer (a blank line ends one; at the stream's end, what
  // is left too).  Each `data:` is a chat.completion.chunk, an error envelope, or [DONE].
  function takeEvents(sse, sink, last) {
    var blocks = sse.buffer.replace(/\r\n/g, "\n").split("\n\n");
    sse.buffer = last ? "" : blocks.pop();
    blocks.forEach(function (block) {
      var data = [];
      block.split("\n").forEach(function (line) {
        if (line.indexOf("data:") === 0) data.push(line.slice(line.charAt(5) === " " ? 6 : 5));
      });
      if (!data.length) return;              // a comment (a keep-alive) or no data
      var payload = data.join("\n");
      if (payload === "[DONE]") {
        sse.done = true;
        return;
      }
      var chunk;
      try { chunk = JSON.parse(payload); } catch (e) {
        throw new Error("The stream sent an event that is not JSON.");
      }
      if (chunk && chunk.error) {
        throw new Error(chunk.error.message || "The stream failed after it started.");
      }
      if (chunk && chunk.usage) sse.usage = chunk.usage;
      var choice = chunk && chunk.choices && chunk.choices[0];
      var piece = choice && choice.delta && choice.delta.content;
      if (typeof piece === "string" && piece) sink.appendData(piece);
    });
  }

  function streamChat(model, text, signal) {
    state("running", "Asking " + model + "…");
    var body = { model: model, stream: true, stream_options: { include_usage: true },
                 messages: [{ role: "user", content: text }] };
    return api("/v1/chat/completions", body, signal).then(function (resp) {
      state("running", "Streaming from " + model + "…");
      var sink = document.createTextNode("");
      out.appendChild(sink);
      out.hidden = false;
      var reader = resp.body.getReader();
      var decoder = new TextDecoder();
      var sse = { buffer: "", done: false, usage: null };
      function pump() {
        return reader.read().then(function (step) {
          if (step.done) {
            sse.buffer += decoder.decode();
            takeEvents(sse, sink, true);
            if (!sse.done) {
              throw new Error("The answer was cut off: the stream ended before [DONE].");
            }
            return sse.usage ? count(sse.usage.prompt_tokens) + " tokens in, " +
              count(sse.usage.completion_tokens) + " out" : "Done";
          }
          sse.buffer += decoder.decode(step.value, { stream: true });
          takeEvents(sse, sink, false);
          return pump();
        });
      }
      return pump().catch(function (err) {
        reader.cancel().catch(function () { return null; });
        throw err;
      });
    });
  }

  function drawImage(model, text, signal) {
    state("running", "Drawing with " + model + "… an image takes a while.");
    return api("/v1/images/generations", { model: model, prompt: text, n: 1 }, signal)
      .then(function (resp) { return resp.json(); })
      .then(function (doc) {
        var item = doc && doc.data && doc.data[0];
        var src = item && (item.url ||
                           (item.b64_json ? "data:image/png;base64," + item.b64_json : ""));
        if (!src) throw new Error("The answer held no image.");
        return new Promise(function (resolve, reject) {
          img.onload = function () {
            resolve("1 image, " + img.naturalWidth + "×" + img.naturalHeight);
          };
          img.onerror = function () {
            reject(new Error("The image was made, but this page cannot show it: " + src));
          };
          img.alt = item.revised_prompt || text;
          caption.textContent = item.revised_prompt || text;
          figure.hidden = false;
          img.src = src;
        });
      });
  }

  function run() {
    if (controller !== null || waitUntil > Date.now()) return;
    var option = select.options[select.selectedIndex];
    if (!option) {
      state("error", "This gateway has no chat or image model to try.");
      return;
    }
    var text = promptEl.value.trim();
    if (!text) {
      state("error", "Type a prompt first.");
      promptEl.focus();
      return;
    }
    var model = option.value;
    var started = Date.now();
    controller = new AbortController();
    sendBtn.disabled = true;
    stopBtn.hidden = false;
    while (out.firstChild) out.removeChild(out.firstChild);
    out.hidden = true;
    figure.hidden = true;
    img.removeAttribute("src");
    caption.textContent = "";
    var job = option.getAttribute("data-type") === "image"
      ? drawImage(model, text, controller.signal)
      : streamChat(model, text, controller.signal);
    job.then(function (note) {
      state("done", note + " · " + ((Date.now() - started) / 1000).toFixed(1) + " s");
    }, function (err) {
      if (err && err.name === "AbortError") {
        state("stopped", "Stopped. What came so far stays; the request counts all the same.");
      } else if (err && err.status === 429) {
        state("limited", "429 · " + err.message);
        if (err.wait) cooldown(err.wait);
      } else {
        state("error", (err && err.status ? err.status + " · " : "") +
              (err && err.message ? err.message : String(err)));
      }
    }).then(function () {
      controller = null;
      stopBtn.hidden = true;
      sendBtn.disabled = waitUntil > Date.now();
      loadUsage();
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    run();
  });
  promptEl.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run();
    }
  });
  stopBtn.addEventListener("click", function () {
    if (controller !== null) controller.abort();
  });
})();

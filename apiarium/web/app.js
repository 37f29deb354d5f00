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

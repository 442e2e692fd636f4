// Cairn dashboard: a small single-page application in plain JavaScript.
// Pages (hash routing): #/ instances, #/instances/<id> one instance, #/entities entities,
// #/cluster where the hub lives and the scale recommendation.
// Everything it shows comes from the Durable Task HTTP API of the same server and /api/stats.
(function () {
  "use strict";

  const BASE = "/runtime/webhooks/durabletask";
  const STATUSES = ["Pending", "Running", "Completed", "ContinuedAsNew", "Failed", "Terminated", "Suspended"];
  const TERMINAL = new Set(["Completed", "Failed", "Terminated"]);
  const PAGE_SIZE = 25;
  const TOKEN_KEY = "cairn.authToken";
  const CONTINUATION = "x-ms-continuation-token";
  const CHART_WINDOW_MS = 60000;

  // ------------------------------------------------------------------ DOM helpers

  // h("div", {class: "x", onclick: fn}, child, "text", [more]) builds an element; text is never parsed as HTML.
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class") el.className = value;
        else if (key === "text") el.textContent = value;
        else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
        else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
        else if (key === "value") el.value = value;
        else if (key === "checked") el.checked = !!value;
        else if (value === true) el.setAttribute(key, "");
        else el.setAttribute(key, String(value));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function $(id) {
    return document.getElementById(id);
  }

  // ------------------------------------------------------------------ formatting

  const pad = (n, w = 2) => String(n).padStart(w, "0");

  function parseTime(value) {
    if (!value) return null;
    const ms = Date.parse(value);
    return Number.isFinite(ms) ? ms : null;
  }

  function fmtDateTime(value, withMs) {
    const ms = typeof value === "number" ? value : parseTime(value);
    if (ms === null) return value ? String(value) : "—";
    const d = new Date(ms);
    const base = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMs ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
  }

  function fmtDuration(ms) {
    if (!Number.isFinite(ms)) return "";
    if (ms < 0) ms = 0;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(2)} s`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.floor(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
    return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
  }

  function fmtAgo(value) {
    const ms = parseTime(value);
    if (ms === null) return "";
    const diff = Date.now() - ms;
    if (diff < 5000) return "just now";
    return `${fmtDuration(diff).replace(/\.\d+ s$/, " s")} ago`;
  }

  function fmtNumber(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return "—";
    return n.toLocaleString("en-US");
  }

  function fmtBytes(n) {
    if (typeof n !== "number") return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function prettyJson(value) {
    if (value === undefined) return "";
    try {
      return JSON.stringify(value, null, 2);
    } catch (_) {
      return String(value);
    }
  }

  function compactJson(value, max) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (_) {
      text = String(value);
    }
    if (text === undefined) text = "";
    return max && text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function statusBadge(status, extra) {
    const s = status || "Unknown";
    return h("span", Object.assign({ class: `badge status-${s}`, "data-testid": "status-badge", "data-status": s }, extra || {}), s);
  }

  // ------------------------------------------------------------------ toasts

  function toast(message, kind) {
    const box = h("div", { class: `toast toast-${kind || "info"}`, role: "status", "data-testid": "toast" }, message);
    $("toasts").append(box);
    setTimeout(() => box.classList.add("toast-out"), kind === "error" ? 7000 : 3500);
    setTimeout(() => box.remove(), kind === "error" ? 7400 : 3900);
  }

  // ------------------------------------------------------------------ API access and the token form

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      return "";
    }
  }

  function writeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* storage unavailable: the token lives only as long as this page */
    }
    memoryToken = token;
    $("forget-token").hidden = !token;
  }

  let memoryToken = "";
  let tokenWaiter = null;

  function currentToken() {
    return readToken() || memoryToken;
  }

  // Shows the token form (once, however many requests are waiting) and resolves when a token was entered.
  function askForToken(rejected) {
    const overlay = $("auth-overlay");
    const error = $("auth-error");
    if (rejected) {
      error.textContent = "The server rejected this token. Check it and try again.";
      error.hidden = false;
    } else if (!tokenWaiter) {
      error.hidden = true;
    }
    if (tokenWaiter) return tokenWaiter.promise;
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    tokenWaiter = { promise, resolve };
    overlay.hidden = false;
    const input = $("token-input");
    input.value = "";
    setTimeout(() => input.focus(), 0);
    return promise;
  }

  function setupTokenForm() {
    $("auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      writeToken(token);
      $("auth-overlay").hidden = true;
      const waiter = tokenWaiter;
      tokenWaiter = null;
      if (waiter) waiter.resolve();
    });
    $("forget-token").addEventListener("click", () => {
      writeToken("");
      toast("Token forgotten for this tab.");
      route();
    });
    $("forget-token").hidden = !currentToken();
  }

  // Calls the server; on 401 asks for a token and retries. Resolves {status, headers, data}; throws ApiError.
  async function api(method, path, options) {
    const opts = options || {};
    for (;;) {
      const headers = { Accept: "application/json" };
      const token = currentToken();
      if (token) headers.Authorization = `Bearer ${token}`;
      if (opts.continuation) headers[CONTINUATION] = opts.continuation;
      const init = { method, headers, cache: "no-store" };
      if (opts.body !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = opts.body;
      }
      let res;
      try {
        res = await fetch(path, init);
      } catch (err) {
        throw new ApiError(0, "NetworkError", `Cannot reach the server (${err.message}).`);
      }
      if (res.status === 401) {
        // A request that raced with a token change just retries with the new token.
        if (currentToken() !== token && currentToken()) continue;
        await askForToken(Boolean(token));
        continue;
      }
      const text = await res.text();
      let data = null;
      if (text) {
        try {
          data = JSON.parse(text);
        } catch (_) {
          data = text;
        }
      }
      if (!res.ok) {
        let message = `${res.status} ${res.statusText}`.trim();
        if (data && typeof data === "object" && data.message) message = data.message;
        else if (typeof data === "string" && data.trim()) message = data.trim();
        throw new ApiError(res.status, data && typeof data === "object" ? data.error : undefined, message);
      }
      return { status: res.status, headers: res.headers, data };
    }
  }

  function query(params) {
    const parts = [];
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === "") continue;
      parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
    }
    return parts.length ? `?${parts.join("&")}` : "";
  }

  // ------------------------------------------------------------------ routing and page lifetime

  let leaveHandlers = [];

  // Registers work to undo when the current page is left (timers, listeners).
  function onLeave(fn) {
    leaveHandlers.push(fn);
  }

  function route() {
    const handlers = leaveHandlers;
    leaveHandlers = [];
    for (const fn of handlers) {
      try {
        fn();
      } catch (_) {
        /* ignore */
      }
    }
    const hash = decodeHashPath(location.hash);
    const main = $("app");
    main.replaceChildren();
    window.scrollTo(0, 0);
    let match;
    if ((match = hash.match(/^\/instances\/(.+)$/))) {
      setNav("instances");
      let id = match[1];
      try {
        id = decodeURIComponent(id);
      } catch (_) {
        /* keep it raw */
      }
      renderInstancePage(main, id);
    } else if (hash === "/cluster") {
      setNav("cluster");
      renderClusterPage(main);
    } else if (hash === "/entities" || hash.startsWith("/entities/")) {
      setNav("entities");
      renderEntitiesPage(main);
    } else {
      setNav("instances");
      renderInstancesPage(main);
    }
  }

  function decodeHashPath(hash) {
    const path = (hash || "").replace(/^#/, "");
    return path === "" ? "/" : path;
  }

  function setNav(name) {
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.dataset.nav === name);
    }
    document.title = name === "entities" ? "Entities · Cairn" : name === "cluster" ? "Cluster · Cairn" : "Cairn";
  }

  function instanceHref(id) {
    return `#/instances/${encodeURIComponent(id)}`;
  }

  // A page-scoped loop: runs fn, waits ms, runs again, until the page is left or stop() is called.
  function loop(fn, ms) {
    let stopped = false;
    let timer = null;
    let running = false;
    const tick = async () => {
      timer = null;
      if (stopped || running) return;
      running = true;
      try {
        if (!document.hidden) await fn();
      } finally {
        running = false;
        if (!stopped) timer = setTimeout(tick, typeof ms === "function" ? ms() : ms);
      }
    };
    const control = {
      stop() {
        stopped = true;
        if (timer) clearTimeout(timer);
      },
      now() {
        if (stopped) return;
        if (timer) clearTimeout(timer);
        timer = null;
        tick();
      },
    };
    onLeave(() => control.stop());
    tick();
    return control;
  }

  // ------------------------------------------------------------------ stats: tiles, throughput chart, header info

  const statsSamples = []; // {t, episodes, activities}
  let lastStats = null;

  async function fetchStats() {
    const { data } = await api("GET", "/api/stats");
    lastStats = data;
    const totals = (data && data.totals) || {};
    const sample = { t: Date.now(), episodes: Number(totals.episodes) || 0, activities: Number(totals.activities) || 0 };
    statsSamples.push(sample);
    while (statsSamples.length && statsSamples[0].t < sample.t - CHART_WINDOW_MS - 5000) statsSamples.shift();
    updateServerInfo(data);
    return data;
  }

  // Statistics are sampled once a second on every page, so the chart has no gaps when one comes back to it.
  const statsListeners = new Set();

  function startStatsPolling() {
    let failed = false;
    const tick = async () => {
      let stats = null;
      if (!document.hidden) {
        try {
          stats = await fetchStats();
          failed = false;
        } catch (err) {
          if (!failed && statsListeners.size) toast(`Statistics unavailable: ${err.message}`, "error");
          failed = true;
        }
        for (const fn of statsListeners) fn(stats);
      }
      setTimeout(tick, 1000);
    };
    tick();
  }

  function updateServerInfo(stats) {
    const info = $("server-info");
    if (!stats) return;
    const parts = [];
    if (stats.partitions !== undefined) parts.push(`${stats.partitions} partitions`);
    if (typeof stats.uptimeSeconds === "number") parts.push(`up ${fmtDuration(stats.uptimeSeconds * 1000).replace(/\.\d+ s$/, " s")}`);
    info.textContent = parts.join(" · ");
  }

  // Rates between consecutive samples; a drop in a counter (server restart) counts as zero.
  function throughputRates() {
    const rates = [];
    for (let i = 1; i < statsSamples.length; i++) {
      const a = statsSamples[i - 1];
      const b = statsSamples[i];
      const dt = (b.t - a.t) / 1000;
      if (dt <= 0) continue;
      rates.push({
        t: b.t,
        episodes: Math.max(0, b.episodes - a.episodes) / dt,
        activities: Math.max(0, b.activities - a.activities) / dt,
      });
    }
    return rates;
  }

  function niceStep(raw) {
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / exp;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return nice * exp;
  }

  const SERIES = [
    { key: "episodes", label: "Episodes/s", color: "#2f6fde", fill: "rgba(47,111,222,0.12)" },
    { key: "activities", label: "Activities/s", color: "#12a37a", fill: "rgba(18,163,122,0.10)" },
  ];

  function drawThroughput(canvas) {
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, width, height);

    const left = 46;
    const right = 10;
    const top = 10;
    const bottom = 24;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const now = Date.now();
    const start = now - CHART_WINDOW_MS;
    const rates = throughputRates().filter((r) => r.t >= start - 2000);

    let peak = 0;
    for (const r of rates) peak = Math.max(peak, r.episodes, r.activities);
    const step = niceStep(Math.max(peak, 1) / 4);
    const yMax = Math.max(step * 4, Math.ceil(peak / step) * step);
    const x = (t) => left + ((t - start) / CHART_WINDOW_MS) * plotW;
    const y = (v) => top + plotH - (v / yMax) * plotH;

    g.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    g.lineWidth = 1;
    g.strokeStyle = "#e6eaf0";
    g.fillStyle = "#6b7686";
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let v = 0; v <= yMax + 1e-9; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(left + plotW, yy);
      g.stroke();
      g.fillText(step < 1 ? String(Number(v.toFixed(2))) : fmtNumber(Math.round(v)), left - 6, yy);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let s = 60; s >= 0; s -= 15) {
      const xx = x(now - s * 1000);
      g.fillText(s === 0 ? "now" : `-${s}s`, Math.min(Math.max(xx, left + 10), left + plotW - 10), top + plotH + 6);
    }
    g.strokeStyle = "#c9d1dc";
    g.beginPath();
    g.moveTo(left, top + plotH + 0.5);
    g.lineTo(left + plotW, top + plotH + 0.5);
    g.stroke();

    g.save();
    g.beginPath();
    g.rect(left, top - 2, plotW, plotH + 4);
    g.clip();
    for (const series of SERIES) {
      if (rates.length < 1) break;
      const pts = rates.map((r) => [x(r.t), y(r[series.key])]);
      g.beginPath();
      g.moveTo(pts[0][0], y(0));
      for (const [px, py] of pts) g.lineTo(px, py);
      g.lineTo(pts[pts.length - 1][0], y(0));
      g.closePath();
      g.fillStyle = series.fill;
      g.fill();
      g.beginPath();
      pts.forEach(([px, py], i) => (i ? g.lineTo(px, py) : g.moveTo(px, py)));
      g.strokeStyle = series.color;
      g.lineWidth = 2;
      g.lineJoin = "round";
      g.stroke();
      // The newest sample as a dot, so that the first one is visible before there is a line.
      const [lx, ly] = pts[pts.length - 1];
      g.beginPath();
      g.arc(Math.min(lx, left + plotW - 3), ly, 3, 0, Math.PI * 2);
      g.fillStyle = series.color;
      g.fill();
    }
    g.restore();

    if (rates.length === 0) {
      g.fillStyle = "#8a94a3";
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.fillText("collecting samples…", left + plotW / 2, top + plotH / 2);
    }
    const latest = rates[rates.length - 1];
    for (const series of SERIES) {
      const el = canvas.parentElement && canvas.parentElement.parentElement
        ? canvas.parentElement.parentElement.querySelector(`[data-series="${series.key}"]`)
        : null;
      if (el) el.textContent = latest ? latest[series.key].toFixed(1) : "–";
    }
  }

  function renderStatsSection() {
    const tiles = h("div", { class: "tiles", "data-testid": "status-tiles" });
    const canvas = h("canvas", { class: "chart", "data-testid": "throughput-chart", role: "img", "aria-label": "Throughput over the last 60 seconds" });
    const details = h("div", { class: "stats-details muted", "data-testid": "stats-details" });
    const legend = h("div", { class: "legend" },
      SERIES.map((s) => h("span", { class: "legend-item" },
        h("i", { class: "swatch", style: { background: s.color } }),
        s.label, " ", h("b", { "data-series": s.key }, "–"))));
    const section = h("section", { class: "overview" },
      tiles,
      h("div", { class: "card chart-card" },
        h("div", { class: "card-head" }, h("h2", null, "Throughput"), legend),
        h("div", { class: "chart-wrap" }, canvas),
        details));

    const renderTiles = (stats) => {
      const counts = (stats && stats.instancesByStatus) || {};
      let total = 0;
      for (const s of STATUSES) total += Number(counts[s]) || 0;
      const tileFor = (label, value, status) => h("button", {
        type: "button",
        class: `tile${status ? ` tile-${status}` : " tile-total"}${status && listState.statuses.size === 1 && listState.statuses.has(status) ? " selected" : ""}`,
        "data-testid": "status-tile",
        "data-status": status || "Total",
        title: status ? `Show only ${status} instances` : "Show all instances",
        onclick: () => setStatusFilter(status ? [status] : []),
      }, h("span", { class: "tile-value" }, fmtNumber(value)), h("span", { class: "tile-label" }, label));
      tiles.replaceChildren(tileFor("All instances", total, null), ...STATUSES.map((s) => tileFor(s === "ContinuedAsNew" ? "Continued" : s, Number(counts[s]) || 0, s)));
    };

    const renderDetails = (stats) => {
      if (!stats) return;
      const queues = Array.isArray(stats.queues) ? stats.queues : [];
      const sum = (k) => queues.reduce((acc, q) => acc + (Number(q[k]) || 0), 0);
      const oldest = queues.reduce((acc, q) => Math.max(acc, Number(q.oldestSeconds) || 0), 0);
      const cache = stats.cache || {};
      const lookups = (Number(cache.hits) || 0) + (Number(cache.misses) || 0);
      const parts = [
        `Queued work: ${fmtNumber(sum("orchestrators"))} orchestrator, ${fmtNumber(sum("activities"))} activity, ${fmtNumber(sum("entities"))} entity` +
          (oldest > 0 ? ` (oldest ${fmtDuration(oldest * 1000)})` : ""),
        `Totals: ${fmtNumber(stats.totals && stats.totals.episodes)} episodes, ${fmtNumber(stats.totals && stats.totals.activities)} activities`,
        `Cache: ${fmtNumber(cache.instances)} instances, ${fmtBytes(cache.bytes)}` + (lookups ? `, ${((100 * (cache.hits || 0)) / lookups).toFixed(0)}% hits` : ""),
      ];
      details.replaceChildren(...parts.map((p) => h("span", null, p)));
    };

    renderTiles(lastStats);
    renderDetails(lastStats);
    const listener = (stats) => {
      if (stats) {
        renderTiles(stats);
        renderDetails(stats);
      }
      drawThroughput(canvas);
    };
    statsListeners.add(listener);
    onLeave(() => statsListeners.delete(listener));
    const onResize = () => drawThroughput(canvas);
    window.addEventListener("resize", onResize);
    onLeave(() => window.removeEventListener("resize", onResize));
    requestAnimationFrame(() => drawThroughput(canvas));
    return { section, renderTiles: () => renderTiles(lastStats) };
  }

  // ------------------------------------------------------------------ instances page

  // Kept across page visits so that coming back from an instance keeps the filter and page.
  const listState = {
    statuses: new Set(),
    prefix: "",
    name: "", // orchestration name ("" = all)
    previous: [], // continuation tokens of the pages before the current one
    current: null, // token that fetched the current page (null: first page)
    next: null,
    autoRefresh: true,
  };
  let refreshInstanceList = null;
  let statsView = null;

  function setStatusFilter(statuses) {
    listState.statuses = new Set(statuses);
    for (const box of document.querySelectorAll("[data-testid^='status-filter-']")) {
      box.checked = listState.statuses.has(box.value);
    }
    resetPaging();
    if (statsView) statsView.renderTiles();
    if (refreshInstanceList) refreshInstanceList();
  }

  function resetPaging() {
    listState.previous = [];
    listState.current = null;
    listState.next = null;
  }

  // ------------------------------------------------------------------ SDK workers (/api/workers)

  // The connected SDK workers and the work none of them runs; refreshed by the pages that show it.
  let workersInfo = null;

  async function fetchWorkers() {
    try {
      const { data } = await api("GET", "/api/workers");
      if (data && typeof data === "object") workersInfo = data;
    } catch (_) {
      // Keep what we had; the list's own error box reports a server that is down.
    }
    return workersInfo;
  }

  function workLabel(u) {
    return `${u.kind} '${u.name}'${u.version ? ` version ${u.version}` : ""}`;
  }

  // Unserved work that belongs to instance `id` (its episode, activities or entity operations).
  function waitingFor(id) {
    if (!workersInfo || !Array.isArray(workersInfo.unserved)) return [];
    return workersInfo.unserved.filter((u) => Array.isArray(u.instances) && u.instances.includes(id));
  }

  function filterSummary(names) {
    if (names === null || names === undefined) return "all";
    if (names.length === 0) return "none";
    return names.map((n) => (n.versions && n.versions.length ? `${n.name} (${n.versions.join(", ")})` : n.name)).join(", ");
  }

  function noWorkerTag(st) {
    if (TERMINAL.has(st.runtimeStatus)) return [];
    const waiting = waitingFor(st.instanceId);
    if (waiting.length === 0) return [];
    return [" ", h("span", { class: "tag-waiting", "data-testid": "no-worker-tag", title: `No connected worker runs ${waiting.map(workLabel).join(", ")}` }, "no worker")];
  }

  function renderWorkersSection() {
    const notice = h("div", { class: "notice-warn", "data-testid": "unserved-notice", hidden: true });
    const list = h("div", { class: "workers", "data-testid": "workers-list" });
    const count = h("span", { class: "muted small", "data-testid": "workers-count" });
    const section = h("section", { class: "card", "data-testid": "workers-card" },
      h("div", { class: "card-head" }, h("h2", null, "Workers"), count),
      notice,
      list);
    section.hidden = true;
    const update = (info) => {
      if (!info || !info.remoteWorkers) {
        section.hidden = true;
        return;
      }
      section.hidden = false;
      const workers = Array.isArray(info.workers) ? info.workers : [];
      count.textContent = `${workers.length} connected`;
      const unserved = Array.isArray(info.unserved) ? info.unserved : [];
      notice.hidden = unserved.length === 0;
      notice.replaceChildren(
        h("strong", null, "Waiting for a worker: "),
        `no connected worker runs ${unserved.map((u) => `${workLabel(u)} (${fmtNumber(u.waiting)} waiting)`).join("; ")}. `,
        "These run as soon as a worker that registers them connects.");
      if (workers.length === 0) {
        list.replaceChildren(h("p", { class: "muted small", "data-testid": "no-workers" },
          "No SDK worker is connected. Work waits until one connects to the gRPC port."));
        return;
      }
      list.replaceChildren(...workers.map((w) =>
        h("div", { class: "worker", "data-testid": "worker" },
          h("div", { class: "worker-head" },
            h("span", { class: "mono" }, w.label || `worker ${w.id}`),
            h("span", { class: "muted small" }, `connected ${fmtAgo(w.connectedAt)} · ${fmtNumber(w.taken)} items taken`)),
          h("div", { class: "small" },
            h("span", { class: "muted" }, "orchestrations: "), filterSummary(w.filter.orchestrations),
            h("span", { class: "muted" }, " · activities: "), filterSummary(w.filter.activities),
            h("span", { class: "muted" }, " · entities: "), filterSummary(w.filter.entities)))));
    };
    return { section, update };
  }

  function renderInstancesPage(main) {
    statsView = renderStatsSection();
    onLeave(() => {
      statsView = null;
      refreshInstanceList = null;
    });

    const tbody = h("tbody", { "data-testid": "instance-rows" });
    const pageLabel = h("span", { class: "pager-label", "data-testid": "page-label" });
    const prevBtn = h("button", { type: "button", class: "btn", "data-testid": "btn-prev", onclick: () => goPage(-1) }, "‹ Prev");
    const nextBtn = h("button", { type: "button", class: "btn", "data-testid": "btn-next", onclick: () => goPage(1) }, "Next ›");
    const errorBox = h("div", { class: "inline-error", "data-testid": "list-error", hidden: true });
    const updatedLabel = h("span", { class: "muted small" });

    const statusBoxes = STATUSES.map((s) =>
      h("label", { class: `chip chip-${s}` },
        h("input", {
          type: "checkbox",
          value: s,
          "data-testid": `status-filter-${s}`,
          checked: listState.statuses.has(s),
          onchange: (e) => {
            if (e.target.checked) listState.statuses.add(s);
            else listState.statuses.delete(s);
            resetPaging();
            statsView && statsView.renderTiles();
            load();
          },
        }),
        h("span", null, s === "ContinuedAsNew" ? "Continued" : s)));

    let searchTimer = null;
    const search = h("input", {
      type: "search",
      class: "input search",
      placeholder: "Instance id prefix…",
      "data-testid": "search-prefix",
      "aria-label": "Filter by instance id prefix",
      value: listState.prefix,
      oninput: (e) => {
        clearTimeout(searchTimer);
        searchTimer = setTimeout(() => {
          listState.prefix = e.target.value.trim();
          resetPaging();
          load();
        }, 250);
      },
    });
    onLeave(() => clearTimeout(searchTimer));

    // Orchestration names with their instance counts (kept by the partitions: /api/stats).
    const nameFilter = h("select", {
      class: "input select",
      "data-testid": "name-filter",
      "aria-label": "Filter by orchestration name",
      onchange: (e) => {
        listState.name = e.target.value;
        resetPaging();
        load();
      },
    });
    let namesShown = "";
    const renderNames = (stats) => {
      const counts = (stats && stats.instancesByName) || {};
      const names = Object.keys(counts).sort();
      if (listState.name && !names.includes(listState.name)) names.push(listState.name);
      const signature = JSON.stringify([names.map((n) => [n, counts[n]]), listState.name]);
      if (signature === namesShown) return;
      namesShown = signature;
      nameFilter.replaceChildren(
        h("option", { value: "" }, "All orchestrations"),
        ...names.map((n) => h("option", { value: n, "data-count": String(Number(counts[n]) || 0) },
          `${n} (${fmtNumber(Number(counts[n]) || 0)})`)));
      nameFilter.value = listState.name;
    };
    renderNames(lastStats);
    statsListeners.add(renderNames);
    onLeave(() => statsListeners.delete(renderNames));

    const auto = h("label", { class: "toggle small" },
      h("input", {
        type: "checkbox",
        checked: listState.autoRefresh,
        "data-testid": "auto-refresh",
        onchange: (e) => {
          listState.autoRefresh = e.target.checked;
        },
      }),
      " Auto-refresh");

    const startForm = renderStartForm();
    const startToggle = h("button", {
      type: "button",
      class: "btn btn-primary",
      "data-testid": "btn-start-toggle",
      onclick: () => {
        startForm.hidden = !startForm.hidden;
        if (!startForm.hidden) startForm.querySelector("input").focus();
      },
    }, "+ Start orchestration");

    const workersView = renderWorkersSection();
    main.append(
      statsView.section,
      workersView.section,
      h("section", { class: "card" },
        h("div", { class: "card-head" },
          h("h1", { "data-testid": "page-title" }, "Orchestration instances"),
          h("div", { class: "head-actions" }, updatedLabel, auto,
            h("button", { type: "button", class: "btn", "data-testid": "btn-refresh", onclick: () => load() }, "Refresh"),
            startToggle)),
        startForm,
        h("div", { class: "toolbar" },
          h("div", { class: "chips", role: "group", "aria-label": "Filter by status" }, statusBoxes,
            h("button", { type: "button", class: "link-button small", onclick: () => setStatusFilter([]) }, "clear")),
          nameFilter,
          search),
        errorBox,
        h("div", { class: "table-wrap" },
          h("table", { class: "table", "data-testid": "instances-table" },
            h("thead", null, h("tr", null,
              h("th", null, "Instance ID"), h("th", null, "Name"), h("th", null, "Status"),
              h("th", null, "Created"), h("th", null, "Last updated"))),
            tbody)),
        h("div", { class: "pager" }, prevBtn, pageLabel, nextBtn)));

    let lastRendered = "";
    let seq = 0;

    async function load(quiet) {
      const mine = ++seq;
      const params = {
        top: PAGE_SIZE,
        showInput: "false",
        runtimeStatus: [...listState.statuses].join(","),
        instanceIdPrefix: listState.prefix,
        name: listState.name,
      };
      try {
        const res = await api("GET", `${BASE}/instances${query(params)}`, { continuation: listState.current });
        if (mine !== seq) return;
        errorBox.hidden = true;
        const rows = Array.isArray(res.data) ? res.data : [];
        listState.next = res.headers.get(CONTINUATION) || null;
        const signature = JSON.stringify([rows, listState.previous.length, listState.next]);
        if (signature !== lastRendered || !quiet) {
          lastRendered = signature;
          renderRows(rows);
        }
        updatedLabel.textContent = `Updated ${fmtDateTime(Date.now()).slice(11)}`;
      } catch (err) {
        if (mine !== seq) return;
        errorBox.textContent = `Could not load instances: ${err.message}`;
        errorBox.hidden = false;
      }
      prevBtn.disabled = listState.previous.length === 0;
      nextBtn.disabled = !listState.next;
      pageLabel.textContent = `Page ${listState.previous.length + 1}`;
    }

    function renderRows(rows) {
      if (rows.length === 0) {
        const filtered = listState.statuses.size > 0 || listState.prefix || listState.name;
        tbody.replaceChildren(h("tr", { class: "empty-row" },
          h("td", { colspan: 5, "data-testid": "instances-empty" }, filtered ? "No instances match the filter." : "No orchestration instances yet.")));
        return;
      }
      tbody.replaceChildren(...rows.map((st) =>
        h("tr", { "data-testid": "instance-row", "data-instance-id": st.instanceId, "data-status": st.runtimeStatus },
          h("td", { class: "mono id-cell" }, h("a", { href: instanceHref(st.instanceId), "data-testid": "instance-link", title: st.instanceId }, st.instanceId)),
          h("td", null, st.name || "—"),
          h("td", null, statusBadge(st.runtimeStatus), ...noWorkerTag(st)),
          h("td", { title: st.createdTime || "" }, fmtDateTime(st.createdTime)),
          h("td", { title: st.lastUpdatedTime || "" }, fmtDateTime(st.lastUpdatedTime), " ", h("span", { class: "muted small" }, fmtAgo(st.lastUpdatedTime))))));
    }

    function goPage(direction) {
      if (direction > 0 && listState.next) {
        listState.previous.push(listState.current);
        listState.current = listState.next;
      } else if (direction < 0 && listState.previous.length) {
        listState.current = listState.previous.pop();
      } else {
        return;
      }
      load();
    }

    refreshInstanceList = () => load();
    loop(async () => {
      workersView.update(await fetchWorkers());
      if (listState.autoRefresh || !lastRendered) await load(true);
    }, 3000);
  }

  function renderStartForm() {
    const nameInput = h("input", { class: "input", required: true, placeholder: "OrchestratorName", "data-testid": "start-name", "aria-label": "Orchestrator name" });
    const inputArea = h("textarea", { class: "input mono", rows: 3, placeholder: '{"key": "value"}  (JSON, optional)', "data-testid": "start-input", "aria-label": "JSON input" });
    const message = h("div", { class: "form-message", "data-testid": "start-result" });
    const form = h("form", {
      class: "inline-form start-form",
      "data-testid": "start-form",
      hidden: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const name = nameInput.value.trim();
        if (!name) return;
        const raw = inputArea.value.trim();
        if (raw) {
          try {
            JSON.parse(raw);
          } catch (err) {
            message.className = "form-message form-error";
            message.textContent = `Input is not valid JSON: ${err.message}`;
            return;
          }
        }
        message.className = "form-message";
        message.textContent = "Starting…";
        try {
          const res = await api("POST", `${BASE}/orchestrators/${encodeURIComponent(name)}`, raw ? { body: raw } : {});
          const id = res.data && res.data.id;
          message.replaceChildren("Started ", id ? h("a", { href: instanceHref(id), class: "mono", "data-testid": "started-link" }, id) : "an instance", ".");
          if (refreshInstanceList) refreshInstanceList();
        } catch (err) {
          message.className = "form-message form-error";
          message.textContent = `Could not start: ${err.message}`;
        }
      },
    },
    h("div", { class: "form-grid" },
      h("label", { class: "field" }, h("span", null, "Orchestrator"), nameInput),
      h("label", { class: "field grow" }, h("span", null, "Input"), inputArea)),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "btn btn-primary", "data-testid": "btn-start" }, "Start"),
      h("button", { type: "button", class: "btn", onclick: () => (form.hidden = true) }, "Close"),
      message));
    return form;
  }

  // ------------------------------------------------------------------ instance page

  const ACTIONS = {
    terminate: { label: "Terminate", verb: "terminate", danger: true, when: (s) => s === "Pending" || s === "Running" || s === "Suspended", help: "Stops the instance for good; work in flight is abandoned." },
    suspend: { label: "Suspend", verb: "suspend", when: (s) => s === "Pending" || s === "Running", help: "Pauses the instance; events are queued until it is resumed." },
    resume: { label: "Resume", verb: "resume", when: (s) => s === "Suspended", help: "Lets a suspended instance run again." },
    rewind: { label: "Rewind", verb: "rewind", when: (s) => s === "Failed", help: "Returns a failed instance to Running and retries what failed." },
    purge: { label: "Purge", verb: "purge", danger: true, when: (s) => TERMINAL.has(s), help: "Deletes the instance and its history. This cannot be undone." },
  };

  function renderInstancePage(main, id) {
    const nameEl = h("h1", { class: "instance-name", "data-testid": "instance-name" }, "Loading…");
    const badgeSlot = h("span", { class: "badge-slot" });
    const refreshNote = h("span", { class: "refresh-note muted small", "data-testid": "refresh-note" });
    const meta = h("dl", { class: "meta", "data-testid": "instance-meta" });
    const panel = h("div", { class: "action-panel", "data-testid": "action-panel", hidden: true });
    const buttons = {};
    const actionBar = h("div", { class: "actions" });
    buttons.raise = h("button", { type: "button", class: "btn", "data-testid": "btn-raise-event", onclick: () => openRaisePanel() }, "Raise event");
    actionBar.append(buttons.raise);
    for (const [key, action] of Object.entries(ACTIONS)) {
      buttons[key] = h("button", {
        type: "button",
        class: `btn${action.danger ? " btn-danger-outline" : ""}`,
        "data-testid": `btn-${key}`,
        title: action.help,
        onclick: () => openConfirmPanel(key),
      }, action.label);
      actionBar.append(buttons[key]);
    }
    panel.addEventListener("keydown", (e) => {
      if (e.key === "Escape") closePanel();
    });
    const dataGrid = h("div", { class: "data-grid", "data-testid": "instance-data" });
    const timelineBox = h("div", { class: "timeline-box" });
    const historyBox = h("div", { class: "table-wrap" });
    const historyCount = h("span", { class: "muted small" });
    const timelineSummary = h("span", { class: "muted small" });
    const notFound = h("div", { class: "card empty-state", "data-testid": "not-found", hidden: true });
    const workerNotice = h("div", { class: "notice-warn", "data-testid": "no-worker-notice", hidden: true });
    const body = h("div", { class: "instance-body" },
      h("section", { class: "card instance-head" },
        h("div", { class: "title-row" }, nameEl, badgeSlot, refreshNote),
        workerNotice,
        h("div", { class: "instance-id mono", "data-testid": "instance-id" }, id,
          h("button", { type: "button", class: "link-button small", title: "Copy id", onclick: () => copyText(id) }, "copy")),
        meta,
        actionBar,
        panel),
      dataGrid,
      h("section", { class: "card" },
        h("div", { class: "card-head" }, h("h2", null, "Timeline"), timelineSummary),
        timelineBox),
      h("section", { class: "card" },
        h("div", { class: "card-head" }, h("h2", null, "History"), historyCount),
        historyBox));

    main.append(
      h("nav", { class: "breadcrumb" }, h("a", { href: "#/" }, "Instances"), h("span", { class: "sep" }, "/"), h("span", { class: "mono" }, id)),
      notFound,
      body);

    let state = null;
    let pollUntil = 0; // keep polling a while after an action even if the instance looked terminal
    let lastSignature = "";
    let onResize = null;

    const url = `${BASE}/instances/${encodeURIComponent(id)}`;

    async function load() {
      try {
        const res = await api("GET", `${url}${query({ showHistory: "true", showHistoryOutput: "true", showInput: "true" })}`);
        if (!res.data || typeof res.data !== "object") throw new ApiError(res.status, "BadResponse", "The server returned no instance status.");
        state = res.data;
        notFound.hidden = true;
        body.hidden = false;
        render();
      } catch (err) {
        if (err.status === 404) {
          state = null;
          body.hidden = true;
          notFound.hidden = false;
          notFound.replaceChildren(h("h2", null, "Instance not found"),
            h("p", { class: "muted" }, err.message || `No instance with id ${id}.`),
            h("a", { href: "#/", class: "btn" }, "Back to instances"));
        } else {
          refreshNote.textContent = `Refresh failed: ${err.message}`;
        }
      }
    }

    function isLive() {
      return !state || !TERMINAL.has(state.runtimeStatus) || Date.now() < pollUntil;
    }

    function render() {
      const st = state;
      document.title = `${st.name || id} · Cairn`;
      nameEl.textContent = st.name || "(unnamed)";
      badgeSlot.replaceChildren(statusBadge(st.runtimeStatus, { id: "instance-status" }));
      refreshNote.textContent = TERMINAL.has(st.runtimeStatus) ? "" : "● live — refreshing every 2 s";
      const life = lifetime(st);
      const endMs = TERMINAL.has(st.runtimeStatus) ? life.end : Date.now();
      meta.replaceChildren(
        h("div", null, h("dt", null, "Created"), h("dd", { title: st.createdTime || "" }, fmtDateTime(st.createdTime))),
        h("div", null, h("dt", null, "Last updated"), h("dd", { title: st.lastUpdatedTime || "" }, fmtDateTime(st.lastUpdatedTime), " ",
          h("span", { class: "muted small" }, fmtAgo(st.lastUpdatedTime)))),
        h("div", null, h("dt", null, TERMINAL.has(st.runtimeStatus) ? "Duration" : "Running for"), h("dd", null, life.start !== null && endMs !== null ? fmtDuration(endMs - life.start) : "—")),
        h("div", null, h("dt", null, "History events"), h("dd", null, Array.isArray(st.historyEvents) ? String(st.historyEvents.length) : "—")));
      for (const [key, action] of Object.entries(ACTIONS)) buttons[key].disabled = !action.when(st.runtimeStatus);
      buttons.raise.disabled = TERMINAL.has(st.runtimeStatus);
      const waiting = TERMINAL.has(st.runtimeStatus) ? [] : waitingFor(id);
      workerNotice.hidden = waiting.length === 0;
      workerNotice.replaceChildren(
        h("strong", null, "Waiting for a worker: "),
        `no connected worker runs ${waiting.map(workLabel).join(", ")}. `,
        "This instance goes on as soon as a worker that registers it connects (check the worker's registrations, versions and work-item filters).");

      // The data blocks and the history only change when the status does; keep scroll/selection otherwise.
      const signature = JSON.stringify([st.runtimeStatus, st.lastUpdatedTime, st.customStatus, st.output, (st.historyEvents || []).length]);
      if (signature !== lastSignature) {
        lastSignature = signature;
        renderData(st);
        renderHistory(st);
      }
      renderTimelineNow();
    }

    function renderTimelineNow() {
      if (!state) return;
      const tl = buildTimeline(state, Date.now());
      timelineSummary.textContent = tl.bars.length
        ? `${tl.bars.length} bar${tl.bars.length === 1 ? "" : "s"} · ${fmtDuration(tl.end - tl.start)} span`
        : "";
      timelineBox.replaceChildren(renderTimeline(tl, timelineBox.clientWidth || 900));
    }

    function renderData(st) {
      const blocks = [
        dataBlock("Input", st.input, "instance-input"),
        dataBlock("Output", st.output, "instance-output"),
        dataBlock("Custom status", st.customStatus, "instance-custom-status"),
      ];
      if (st.failureDetails) {
        const fd = st.failureDetails;
        blocks.unshift(h("section", { class: "card data-block failure", "data-testid": "failure-details" },
          h("h2", null, "Failure details"),
          h("div", { class: "failure-type" }, fd.errorType || "Error"),
          h("div", { class: "failure-message" }, fd.errorMessage || ""),
          fd.stackTrace ? h("pre", { class: "json" }, fd.stackTrace) : null,
          Object.keys(fd).some((k) => !["errorType", "errorMessage", "stackTrace"].includes(k))
            ? h("pre", { class: "json" }, prettyJson(fd))
            : null));
      }
      dataGrid.replaceChildren(...blocks);
    }

    function renderHistory(st) {
      const events = Array.isArray(st.historyEvents) ? st.historyEvents : [];
      historyCount.textContent = `${events.length} event${events.length === 1 ? "" : "s"}`;
      if (!events.length) {
        historyBox.replaceChildren(h("p", { class: "muted empty-note" }, "No history events."));
        return;
      }
      const t0 = parseTime(events[0].Timestamp);
      const rows = events.map((ev, i) => {
        const ts = parseTime(ev.Timestamp);
        const rest = {};
        for (const [k, v] of Object.entries(ev)) {
          if (k !== "EventType" && k !== "Timestamp" && k !== "FunctionName" && k !== "Name") rest[k] = v;
        }
        const restText = Object.keys(rest).length ? compactJson(rest) : "";
        const cell = restText.length > 140
          ? h("details", null, h("summary", { class: "mono" }, compactJson(rest, 120)), h("pre", { class: "json" }, prettyJson(rest)))
          : h("span", { class: "mono" }, restText);
        const kind = eventCategory(ev.EventType);
        return h("tr", { "data-testid": "history-row", class: `ev-${kind}` },
          h("td", { class: "num" }, String(i + 1)),
          h("td", { class: "nowrap", title: ev.Timestamp || "" }, fmtDateTime(ev.Timestamp, true),
            t0 !== null && ts !== null && i > 0 ? h("span", { class: "muted small" }, ` +${fmtDuration(ts - t0)}`) : null),
          h("td", null, h("span", { class: `ev-type ev-type-${kind}` }, ev.EventType || "?")),
          h("td", null, ev.FunctionName || ev.Name || ""),
          h("td", { class: "details-cell" }, cell));
      });
      historyBox.replaceChildren(h("table", { class: "table history", "data-testid": "history-table" },
        h("thead", null, h("tr", null, h("th", null, "#"), h("th", null, "Timestamp"), h("th", null, "Event"), h("th", null, "Name"), h("th", null, "Details"))),
        h("tbody", null, rows)));
    }

    // ---- actions

    function closePanel() {
      panel.hidden = true;
      panel.replaceChildren();
      for (const b of Object.values(buttons)) b.classList.remove("pressed");
    }

    function openRaisePanel() {
      closePanel();
      buttons.raise.classList.add("pressed");
      const nameInput = h("input", { class: "input", required: true, placeholder: "approval", "data-testid": "event-name", "aria-label": "Event name" });
      const dataInput = h("textarea", { class: "input mono", rows: 3, placeholder: '"yes"  or  {"approved": true}', "data-testid": "event-data", "aria-label": "Event data (JSON)" });
      const error = h("div", { class: "form-error", "data-testid": "action-error", hidden: true });
      const submit = h("button", { type: "submit", class: "btn btn-primary", "data-testid": "btn-send-event" }, "Send event");
      const form = h("form", {
        class: "inline-form",
        "data-testid": "raise-form",
        onsubmit: async (e) => {
          e.preventDefault();
          const name = nameInput.value.trim();
          if (!name) return;
          const raw = dataInput.value.trim() || "null";
          try {
            JSON.parse(raw);
          } catch (err) {
            error.textContent = `Event data is not valid JSON: ${err.message}`;
            error.hidden = false;
            return;
          }
          submit.disabled = true;
          try {
            await api("POST", `${url}/raiseEvent/${encodeURIComponent(name)}`, { body: raw });
            toast(`Event "${name}" sent.`, "success");
            closePanel();
            afterAction();
          } catch (err) {
            error.textContent = err.message;
            error.hidden = false;
            submit.disabled = false;
          }
        },
      },
      h("div", { class: "panel-title" }, "Raise an external event"),
      h("div", { class: "form-grid" },
        h("label", { class: "field" }, h("span", null, "Event name"), nameInput),
        h("label", { class: "field grow" }, h("span", null, "Data (JSON)"), dataInput)),
      error,
      h("div", { class: "form-actions" }, submit, h("button", { type: "button", class: "btn", "data-testid": "btn-cancel", onclick: closePanel }, "Cancel")));
      panel.replaceChildren(form);
      panel.hidden = false;
      nameInput.focus();
    }

    function openConfirmPanel(key) {
      const action = ACTIONS[key];
      closePanel();
      buttons[key].classList.add("pressed");
      const reason = key === "purge"
        ? null
        : h("input", { class: "input", placeholder: "Reason (optional)", "data-testid": "action-reason", "aria-label": "Reason" });
      const error = h("div", { class: "form-error", "data-testid": "action-error", hidden: true });
      const confirm = h("button", { type: "submit", class: `btn ${action.danger ? "btn-danger" : "btn-primary"}`, "data-testid": "btn-confirm" }, `Yes, ${action.verb}`);
      const form = h("form", {
        class: `inline-form confirm-form${action.danger ? " danger" : ""}`,
        "data-testid": "confirm-form",
        "data-action": key,
        onsubmit: async (e) => {
          e.preventDefault();
          confirm.disabled = true;
          try {
            if (key === "purge") {
              await api("DELETE", url);
              toast(`Instance ${id} purged.`, "success");
              location.hash = "#/";
              return;
            }
            const text = reason.value.trim();
            await api("POST", `${url}/${action.verb}${query({ reason: text })}`);
            toast(`${action.label} requested.`, "success");
            closePanel();
            afterAction();
          } catch (err) {
            error.textContent = err.message;
            error.hidden = false;
            confirm.disabled = false;
          }
        },
      },
      h("div", { class: "panel-title" }, key === "purge" ? "Purge this instance?" : `${action.label} this instance?`),
      h("p", { class: "muted small" }, action.help),
      reason,
      error,
      h("div", { class: "form-actions" }, confirm, h("button", { type: "button", class: "btn", "data-testid": "btn-cancel", onclick: closePanel }, "Cancel")));
      panel.replaceChildren(form);
      panel.hidden = false;
      (reason || confirm).focus();
    }

    function afterAction() {
      pollUntil = Date.now() + 15000;
      poller.now();
    }

    const poller = loop(async () => {
      if (isLive()) {
        await fetchWorkers();
        await load();
      }
    }, 2000);

    // Redraw the timeline when the width changes (bars are laid out in percent, labels are not).
    let resizeTimer = null;
    onResize = () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(renderTimelineNow, 150);
    };
    window.addEventListener("resize", onResize);
    onLeave(() => {
      window.removeEventListener("resize", onResize);
      clearTimeout(resizeTimer);
    });
  }

  // Start and end of an instance, to the millisecond when the history has them (status times
  // are whole seconds).
  function lifetime(st) {
    const events = Array.isArray(st.historyEvents) ? st.historyEvents : [];
    let start = null;
    let end = null;
    for (const ev of events) {
      if (ev.EventType === "ExecutionStarted" && start === null) start = parseTime(ev.Timestamp);
      if (ev.EventType === "ExecutionCompleted" || ev.EventType === "ExecutionTerminated" || ev.EventType === "ContinueAsNew") {
        const t = parseTime(ev.Timestamp);
        if (t !== null && (end === null || t > end)) end = t;
      }
    }
    if (start === null) start = parseTime(st.createdTime);
    if (end === null) end = parseTime(st.lastUpdatedTime);
    return { start, end };
  }

  function dataBlock(title, value, testid) {
    const empty = value === null || value === undefined;
    return h("section", { class: "card data-block", "data-testid": testid },
      h("div", { class: "card-head" }, h("h2", null, title),
        empty ? null : h("button", { type: "button", class: "link-button small", onclick: () => copyText(prettyJson(value)) }, "copy")),
      empty ? h("p", { class: "muted empty-note" }, "null") : h("pre", { class: "json" }, prettyJson(value)));
  }

  function copyText(text) {
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(() => toast("Copied."), () => toast("Could not copy.", "error"));
    } else {
      toast("Clipboard not available.", "error");
    }
  }

  function eventCategory(type) {
    const t = type || "";
    if (/Failed$/.test(t) || t === "ExecutionTerminated") return "bad";
    if (/^Task|^SubOrchestration/.test(t)) return "task";
    if (/^Timer/.test(t)) return "timer";
    if (/^Event|^Entity/.test(t)) return "event";
    if (/^Execution|^ContinueAsNew|^Orchestrator/.test(t)) return "exec";
    return "other";
  }

  // ------------------------------------------------------------------ timeline model

  // Turns history events into bars (activities, sub-orchestrations, timers) and point markers.
  function buildTimeline(st, now) {
    const events = Array.isArray(st.historyEvents) ? st.historyEvents : [];
    const finished = TERMINAL.has(st.runtimeStatus);
    const instanceEnd = finished ? lifetime(st).end : null;
    const bars = [];
    const markers = [];
    const sameTime = (a, b) => a !== null && b !== null && Math.abs(a - b) <= 1;

    const completions = [];
    const subDone = new Set();
    const timersFired = [];
    for (const ev of events) {
      const type = ev.EventType;
      if (type === "TaskCompleted" || type === "TaskFailed") {
        completions.push({ id: ev.TaskScheduledId });
      } else if (type === "SubOrchestrationInstanceCompleted" || type === "SubOrchestrationInstanceFailed") {
        if (ev.InstanceId) subDone.add(ev.InstanceId);
        completions.push({ id: ev.TaskScheduledId, sub: true });
      } else if (type === "TimerFired") {
        timersFired.push({ fireAt: parseTime(ev.FireAt), id: ev.TimerId });
      }
    }
    // The server leaves a scheduling event in the history only while its outcome is missing; should
    // both ever appear, an explicit task id (not name and time: parallel calls share both) pairs them.
    const matchCompletion = (ev, sub) =>
      ev.EventId !== undefined && completions.some((c) => !!c.sub === sub && c.id !== undefined && c.id === ev.EventId);
    const createdTimers = [];

    const pendingEnd = () => (finished ? (instanceEnd !== null ? instanceEnd : now) : now);

    for (const ev of events) {
      const type = ev.EventType || "";
      const ts = parseTime(ev.Timestamp);
      switch (type) {
        case "TaskCompleted":
        case "TaskFailed": {
          const failed = type === "TaskFailed";
          bars.push({
            kind: "activity",
            label: ev.FunctionName || ev.Name || "activity",
            start: parseTime(ev.ScheduledTime) ?? ts,
            end: ts,
            state: failed ? "failed" : "ok",
            detail: failed ? ev.Reason || ev.Details : ev.Result,
          });
          break;
        }
        case "TaskScheduled":
          if (matchCompletion(ev, false)) break;
          bars.push({ kind: "activity", label: ev.Name || ev.FunctionName || "activity", start: ts, end: pendingEnd(), state: finished ? "cancelled" : "running", detail: ev.Input });
          break;
        case "SubOrchestrationInstanceCompleted":
        case "SubOrchestrationInstanceFailed": {
          const failed = type === "SubOrchestrationInstanceFailed";
          bars.push({
            kind: "suborch",
            label: ev.FunctionName || ev.Name || "sub-orchestration",
            instanceId: ev.InstanceId,
            start: parseTime(ev.ScheduledTime) ?? ts,
            end: ts,
            state: failed ? "failed" : "ok",
            detail: failed ? ev.Reason || ev.Details : ev.Result,
          });
          break;
        }
        case "SubOrchestrationInstanceCreated":
          if ((ev.InstanceId && subDone.has(ev.InstanceId)) || matchCompletion(ev, true)) break;
          bars.push({ kind: "suborch", label: ev.Name || ev.FunctionName || "sub-orchestration", instanceId: ev.InstanceId, start: ts, end: pendingEnd(), state: finished ? "cancelled" : "running", detail: ev.Input });
          break;
        case "EntityOperationCompleted":
        case "EntityOperationFailed": {
          const scheduled = parseTime(ev.ScheduledTime);
          if (scheduled === null) {
            if (ts !== null) markers.push(markerFor(ev, ts));
            break;
          }
          const failed = type === "EntityOperationFailed";
          bars.push({
            kind: "entity",
            label: entityLabel(ev),
            start: scheduled,
            end: ts,
            state: failed ? "failed" : "ok",
            detail: failed ? ev.Reason || ev.Details : ev.Result,
          });
          break;
        }
        case "EntityOperationCalled":
          bars.push({ kind: "entity", label: entityLabel(ev), start: ts, end: pendingEnd(), state: finished ? "cancelled" : "running", detail: ev.Input });
          break;
        case "TimerCreated":
          createdTimers.push(ev);
          break;
        case "TimerFired": {
          const fireAt = parseTime(ev.FireAt);
          let start = parseTime(ev.ScheduledTime);
          if (start === null) {
            const created = createdTimers.find((c) => (c.EventId !== undefined && c.EventId === ev.TimerId) || sameTime(parseTime(c.FireAt), fireAt));
            start = created ? parseTime(created.Timestamp) : null;
          }
          bars.push({ kind: "timer", label: "Timer", start: start ?? fireAt ?? ts, end: ts, fireAt, state: "ok" });
          break;
        }
        case "OrchestratorStarted":
        case "OrchestratorCompleted":
          break;
        default: {
          if (ts === null) break;
          markers.push(markerFor(ev, ts));
        }
      }
    }
    // Timers that have not fired yet (or never will, if the instance ended first).
    for (const ev of createdTimers) {
      const fireAt = parseTime(ev.FireAt);
      const fired = timersFired.some((f) => (f.id !== undefined && ev.EventId !== undefined && f.id === ev.EventId) || sameTime(f.fireAt, fireAt));
      if (fired) continue;
      bars.push({ kind: "timer", label: "Timer", start: parseTime(ev.Timestamp), end: pendingEnd(), fireAt, state: finished ? "cancelled" : "running" });
    }

    const valid = bars.filter((b) => b.start !== null && b.end !== null);
    for (const b of valid) if (b.end < b.start) b.end = b.start;
    valid.sort((a, b) => a.start - b.start || a.end - b.end);

    let start = Infinity;
    let end = -Infinity;
    for (const b of valid) {
      start = Math.min(start, b.start);
      end = Math.max(end, b.end);
      if (b.state === "running" && b.fireAt !== null && b.fireAt !== undefined) end = Math.max(end, b.fireAt);
    }
    for (const m of markers) {
      start = Math.min(start, m.time);
      end = Math.max(end, m.time);
    }
    const created = parseTime(st.createdTime);
    if (!Number.isFinite(start) && created !== null) start = created;
    if (!finished) end = Math.max(end, now);
    if (!Number.isFinite(start)) start = created !== null ? created : now;
    if (!Number.isFinite(end) || end <= start) end = start + 1000;
    return { bars: valid, markers, start, end, finished, now, status: st.runtimeStatus };
  }

  function entityLabel(ev) {
    const target = typeof ev.EntityId === "string" ? ev.EntityId : ev.EntityId ? compactJson(ev.EntityId) : "entity";
    return ev.Operation ? `${target} · ${ev.Operation}` : target;
  }

  function markerFor(ev, time) {
    const type = ev.EventType;
    const m = { time, type, kind: "info", label: type, detail: null };
    switch (type) {
      case "ExecutionStarted":
        return Object.assign(m, { kind: "start", label: "Started", detail: ev.Input });
      case "ExecutionCompleted": {
        const status = String(ev.OrchestrationStatus || "Completed");
        const bad = /fail|terminat/i.test(status);
        return Object.assign(m, { kind: bad ? "bad" : "end", label: status, detail: ev.FailureDetails || ev.Result });
      }
      case "ExecutionTerminated":
        return Object.assign(m, { kind: "bad", label: "Terminated", detail: ev.Reason || ev.Input });
      case "ExecutionSuspended":
        return Object.assign(m, { kind: "pause", label: "Suspended", detail: ev.Reason });
      case "ExecutionResumed":
        return Object.assign(m, { kind: "resume", label: "Resumed", detail: ev.Reason });
      case "ExecutionRewound":
        return Object.assign(m, { kind: "resume", label: "Rewound", detail: ev.Reason });
      case "ContinueAsNew":
        return Object.assign(m, { kind: "end", label: "Continued as new", detail: ev.Result || ev.Input });
      case "EventRaised":
        return Object.assign(m, { kind: "event", label: `⚑ ${ev.Name || "event"}`, detail: ev.Input });
      case "EventSent":
        return Object.assign(m, { kind: "event", label: `→ ${ev.Name || "event"}`, detail: ev.InstanceId ? `to ${ev.InstanceId}` : ev.Input });
      default:
        if (/^Entity/.test(type || "")) {
          const what = type.replace(/^Entity/, "").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
          return Object.assign(m, { kind: "entity", label: ev.Operation ? `${ev.Operation} (${what})` : what, detail: ev.EntityId || ev.CriticalSection || null });
        }
        return Object.assign(m, { detail: ev.Name || ev.Reason || null });
    }
  }

  // Picks a tick step (ms) so that about `maxTicks` ticks cover the span.
  function tickStep(span, maxTicks) {
    const steps = [1, 2, 5, 10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000,
      900000, 1800000, 3600000, 7200000, 10800000, 21600000, 43200000, 86400000, 172800000, 604800000];
    for (const s of steps) if (span / s <= maxTicks) return s;
    return steps[steps.length - 1] * Math.ceil(span / maxTicks / steps[steps.length - 1]);
  }

  function fmtOffset(ms, step) {
    if (ms === 0) return "0";
    if (step < 1000) {
      if (ms < 1000) return `${ms} ms`;
      const decimals = step % 100 === 0 ? 1 : step % 10 === 0 ? 2 : 3;
      return `${Number((ms / 1000).toFixed(decimals))} s`;
    }
    if (step < 60000) return `${(ms / 1000).toFixed(0)} s`;
    if (step < 3600000) {
      const m = Math.floor(ms / 60000);
      const s = Math.round((ms % 60000) / 1000);
      return s ? `${m}m ${pad(s)}s` : `${m}m`;
    }
    if (step < 86400000) {
      const hh = Math.floor(ms / 3600000);
      const mm = Math.round((ms % 3600000) / 60000);
      return mm ? `${hh}h ${pad(mm)}m` : `${hh}h`;
    }
    return `${(ms / 86400000).toFixed(step < 86400000 ? 1 : 0)} d`;
  }

  const MAX_BARS = 400;
  const LABEL_WIDTH = 210;

  function renderTimeline(tl, boxWidth) {
    const root = h("div", { class: `timeline${tl.status === "Suspended" ? " paused" : ""}`, "data-testid": "timeline", "data-bars": tl.bars.length, "data-markers": tl.markers.length });
    if (!tl.bars.length && !tl.markers.length) {
      root.append(h("p", { class: "muted empty-note" }, "No history yet."));
      return root;
    }
    const span = tl.end - tl.start;
    const trackWidth = Math.max(200, boxWidth - LABEL_WIDTH - 16);
    const pct = (t) => `${(((t - tl.start) / span) * 100).toFixed(3)}%`;
    const frac = (t) => (t - tl.start) / span;
    const step = tickStep(span, Math.max(2, Math.floor(trackWidth / 90)));

    // Axis with relative offsets; the absolute start time sits in the label column.
    const axis = h("div", { class: "tl-track tl-axis-track" });
    const grid = h("div", { class: "tl-grid", "aria-hidden": "true" });
    for (let off = 0; off <= span + 1e-6; off += step) {
      const left = pct(tl.start + off);
      axis.append(h("span", { class: "tl-tick", style: { left } }, fmtOffset(off, step)));
      grid.append(h("i", { class: "tl-gridline", style: { left } }));
    }
    if (!tl.finished) {
      grid.append(h("i", { class: "tl-now", style: { left: pct(tl.now) }, title: "now" }));
    }
    const rows = [
      h("div", { class: "tl-row tl-axis" },
        h("div", { class: "tl-label muted small", title: new Date(tl.start).toISOString() }, `from ${fmtDateTime(tl.start, true)}`),
        axis),
    ];

    // Orchestration lane: its lifetime and the point events on it.
    const lane = h("div", { class: "tl-track tl-marker-track" });
    const lifeEnd = tl.finished ? tl.end : tl.now;
    lane.append(h("div", { class: `tl-life${tl.finished ? "" : " live"}`, style: { left: "0%", width: pct(lifeEnd) } }));
    const tiers = [-Infinity, -Infinity];
    const charW = 6.4;
    let previous = null;
    for (const m of tl.markers) {
      const x = frac(m.time) * trackWidth;
      const title = `${m.label} — ${fmtDateTime(m.time, true)} (+${fmtDuration(m.time - tl.start)})` + (m.detail !== null && m.detail !== undefined ? `\n${compactJson(m.detail, 300)}` : "");
      const marker = h("div", { class: `tl-marker mk-${m.kind}`, style: { left: pct(m.time) }, title, "data-testid": "timeline-marker", "data-event": m.type });
      lane.append(marker);
      // The same label at (nearly) the same place says nothing new: e.g. Terminated, then its ExecutionCompleted.
      const repeat = previous && previous.label === m.label && Math.abs(frac(previous.time) - frac(m.time)) * trackWidth < 4;
      previous = m;
      if (repeat) continue;
      const w = m.label.length * charW + 8;
      let lx = x - w / 2;
      lx = Math.max(0, Math.min(lx, trackWidth - w));
      for (let tier = 0; tier < tiers.length; tier++) {
        if (lx >= tiers[tier] + 6) {
          tiers[tier] = lx + w;
          lane.append(h("span", { class: `tl-marker-label tier-${tier} mk-text-${m.kind}`, style: { left: `${lx.toFixed(1)}px` } }, m.label));
          break;
        }
      }
    }
    rows.push(h("div", { class: "tl-row tl-lane" },
      h("div", { class: "tl-label" }, h("span", { class: "tl-name" }, "Orchestration"), h("span", { class: "tl-kind" }, tl.status || "")),
      lane));

    const phase = Date.now() % 1000;
    const shown = tl.bars.slice(0, MAX_BARS);
    for (const b of shown) {
      const left = frac(b.start);
      const right = frac(b.end);
      const dur = b.end - b.start;
      const stateText = { ok: "completed", failed: "failed", running: "in flight", cancelled: "abandoned" }[b.state];
      let title = `${b.label} (${b.kind === "suborch" ? "sub-orchestration" : b.kind === "entity" ? "entity call" : b.kind}) — ${stateText}\n` +
        `${fmtDateTime(b.start, true)} → ${b.state === "running" ? "now" : fmtDateTime(b.end, true)}  (${fmtDuration(dur)})`;
      if (b.kind === "timer" && b.fireAt !== null && b.fireAt !== undefined) title += `\nfires at ${fmtDateTime(b.fireAt, true)}`;
      if (b.instanceId) title += `\ninstance ${b.instanceId}`;
      if (b.detail !== undefined && b.detail !== null) title += `\n${compactJson(b.detail, 300)}`;

      const track = h("div", { class: "tl-track" });
      if (b.kind === "timer" && b.state === "running" && b.fireAt !== null && b.fireAt !== undefined && b.fireAt > b.end) {
        // Where the pending timer will fire.
        track.append(h("div", { class: "tl-target", style: { left: pct(b.start), width: `${(((b.fireAt - b.start) / span) * 100).toFixed(3)}%` } }));
      }
      const bar = h("div", {
        class: `tl-bar kind-${b.kind} state-${b.state}`,
        style: { left: `${(left * 100).toFixed(3)}%`, width: `${((right - left) * 100).toFixed(3)}%` },
        title,
        "data-testid": "timeline-bar",
        "data-kind": b.kind,
        "data-state": b.state,
      });
      if (b.state === "running") bar.style.animationDelay = `-${phase}ms`;
      track.append(bar);
      const durText = b.state === "running" ? `${fmtDuration(dur)}…` : fmtDuration(dur);
      const barPx = (right - left) * trackWidth;
      const textPx = durText.length * 6.4 + 10;
      if (barPx > textPx + 6) {
        bar.append(h("span", { class: "tl-bar-text" }, durText));
      } else if (right * trackWidth + textPx < trackWidth) {
        track.append(h("span", { class: "tl-dur", style: { left: `calc(${(right * 100).toFixed(3)}% + 5px)` } }, durText));
      } else {
        track.append(h("span", { class: "tl-dur before", style: { right: `calc(${((1 - left) * 100).toFixed(3)}% + 5px)` } }, durText));
      }
      const kindLabel = b.kind === "suborch" ? "sub-orchestration" : b.kind === "entity" ? "entity call" : b.kind;
      const name = b.kind === "suborch" && b.instanceId
        ? h("a", { class: "tl-name", href: instanceHref(b.instanceId), title: b.instanceId }, b.label)
        : h("span", { class: "tl-name", title: b.label }, b.label);
      rows.push(h("div", { class: `tl-row row-${b.kind}`, "data-testid": "timeline-row" },
        h("div", { class: "tl-label" }, h("i", { class: `tl-dot kind-${b.kind} state-${b.state}` }), name, h("span", { class: "tl-kind" }, kindLabel)),
        track));
    }
    const body = h("div", { class: "tl-body" }, grid, rows);
    root.append(body);
    if (tl.bars.length > shown.length) {
      root.append(h("p", { class: "muted small" }, `Showing the first ${shown.length} of ${tl.bars.length} bars; the history table below lists everything.`));
    }
    root.append(h("div", { class: "tl-legend small muted" },
      legendItem("state-ok kind-activity", "activity"),
      legendItem("state-ok kind-suborch", "sub-orchestration"),
      legendItem("state-ok kind-timer", "timer"),
      legendItem("state-ok kind-entity", "entity call"),
      legendItem("state-failed kind-activity", "failed"),
      legendItem("state-running kind-activity", "in flight"),
      legendItem("state-cancelled kind-activity", "abandoned")));
    return root;
  }

  function legendItem(cls, text) {
    return h("span", { class: "legend-item" }, h("i", { class: `tl-swatch tl-bar ${cls}` }), text);
  }

  // ------------------------------------------------------------------ entities page

  const entityState = { name: "", previous: [], current: null, next: null };

  // ------------------------------------------------------------------ cluster page (/api/cluster, /api/scale)

  // Where the hub lives (embedded files, or JetStream with a serving node and each partition's
  // log and checkpoint lag) and what an autoscaler is told to run.
  function renderClusterPage(main) {
    const errorBox = h("div", { class: "inline-error", "data-testid": "cluster-error", hidden: true });
    const scaleTiles = h("div", { class: "tiles", "data-testid": "scale-tiles" });
    const scaleReasons = h("div", { class: "stats-details muted", "data-testid": "scale-reasons" });
    const hubFacts = h("div", { class: "stats-details", "data-testid": "hub-facts" });
    const tbody = h("tbody", { "data-testid": "partition-rows" });
    const table = h("div", { class: "table-wrap" },
      h("table", { class: "table", "data-testid": "partitions-table" },
        h("thead", null, h("tr", null,
          h("th", null, "Partition"), h("th", null, "Next position"), h("th", null, "Owner epoch"), h("th", null, "Run by"),
          h("th", null, "Log"), h("th", null, "Checkpoint at"), h("th", null, "Lag (records)"),
          h("th", null, "Snapshot"))),
        tbody));
    table.hidden = true;
    main.append(
      h("section", { class: "card", "data-testid": "scale-card" },
        h("div", { class: "card-head" }, h("h1", { "data-testid": "page-title" }, "Cluster"),
          h("span", { class: "muted small" }, "GET /api/scale · /api/cluster")),
        scaleTiles, scaleReasons),
      h("section", { class: "card", "data-testid": "hub-card" },
        h("div", { class: "card-head" }, h("h2", null, "Task hub")),
        errorBox, hubFacts, table));

    const tile = (label, value, testid) => h("div", { class: "tile tile-total", "data-testid": testid },
      h("span", { class: "tile-value" }, fmtNumber(value)), h("span", { class: "tile-label" }, label));
    const renderScale = (scale) => {
      const backlog = scale.backlog || {};
      scaleTiles.replaceChildren(
        tile("Workers recommended", scale.workers && scale.workers.recommended, "scale-workers"),
        tile("Workers connected", scale.workers && scale.workers.connected, "scale-connected"),
        tile("Nodes recommended", scale.nodes && scale.nodes.recommended, "scale-nodes"),
        tile("Backlog", (Number(backlog.instances) || 0) + (Number(backlog.activities) || 0), "scale-backlog"));
      scaleReasons.replaceChildren(
        h("span", null, `Workers: ${(scale.workers && scale.workers.reason) || "–"}`),
        h("span", null, `Nodes: ${(scale.nodes && scale.nodes.reason) || "–"}`),
        h("span", null, `Oldest wait for a worker: ${fmtDuration((Number(backlog.oldestWaitSeconds) || 0) * 1000)}`));
    };
    const fact = (label, value, testid) => h("span", { "data-testid": testid }, h("span", { class: "muted" }, `${label}: `), value);
    const renderHub = (hub) => {
      if (hub.mode !== "cluster") {
        hubFacts.replaceChildren(
          fact("Mode", "embedded (local files, one node)", "hub-mode"),
          fact("Partitions", fmtNumber(hub.partitions), "hub-partitions"));
        table.hidden = true;
        return;
      }
      hubFacts.replaceChildren(
        fact("Mode", "cluster (NATS JetStream)", "hub-mode"),
        fact("Hub", hub.hub, "hub-name"),
        fact("This node", hub.node, "hub-node"),
        fact("Partitions run by", (() => {
          const runs = {};
          for (const p of (Array.isArray(hub.partitionStatus) ? hub.partitionStatus : [])) {
            const owner = p.owner || "no node";
            runs[owner] = (runs[owner] || 0) + 1;
          }
          return Object.entries(runs).map(([node, n]) => `${node}: ${n}`).join(", ") || "no node";
        })(), "hub-owners"),
        fact("Partitions", fmtNumber(hub.partitions), "hub-partitions"),
        fact("Live nodes", (Array.isArray(hub.nodes) ? hub.nodes : [])
          .map((n) => `${n.node} (${n.role}${n.grpc ? `, gRPC ${n.grpc}` : ""})`).join(", ") || "none", "hub-nodes"));
      const rows = Array.isArray(hub.partitionStatus) ? hub.partitionStatus : [];
      const or = (v, f) => (v === null || v === undefined ? "–" : f(v));
      tbody.replaceChildren(...rows.map((p) => h("tr", { "data-testid": "partition-row" },
        h("td", null, String(p.partition)),
        h("td", null, fmtNumber(p.nextPosition)),
        h("td", null, fmtNumber(p.ownerEpoch)),
        h("td", { "data-testid": "partition-owner" }, p.owner || "–"),
        h("td", null, `${fmtNumber(p.logMessages)} msgs, ${fmtBytes(p.logBytes)}`),
        h("td", null, or(p.checkpointPosition, fmtNumber)),
        h("td", { "data-testid": "partition-lag" }, or(p.recordsAfterCheckpoint, fmtNumber)),
        h("td", null, or(p.snapshotPosition, (v) => `at ${fmtNumber(v)}, ${fmtBytes(p.snapshotBytes)}`)))));
      table.hidden = false;
    };
    loop(async () => {
      try {
        const [scale, hub] = await Promise.all([api("GET", "/api/scale"), api("GET", "/api/cluster")]);
        errorBox.hidden = true;
        renderScale(scale.data || {});
        renderHub(hub.data || {});
      } catch (err) {
        errorBox.hidden = false;
        errorBox.textContent = err.message;
      }
    }, 3000);
  }

  function renderEntitiesPage(main) {
    const tbody = h("tbody", { "data-testid": "entity-rows" });
    const pageLabel = h("span", { class: "pager-label", "data-testid": "page-label" });
    const prevBtn = h("button", { type: "button", class: "btn", "data-testid": "btn-prev", onclick: () => goPage(-1) }, "‹ Prev");
    const nextBtn = h("button", { type: "button", class: "btn", "data-testid": "btn-next", onclick: () => goPage(1) }, "Next ›");
    const errorBox = h("div", { class: "inline-error", "data-testid": "list-error", hidden: true });
    let searchTimer = null;
    const nameInput = h("input", {
      type: "search",
      class: "input search",
      placeholder: "Entity name (exact)…",
      "data-testid": "entity-name-filter",
      "aria-label": "Filter by entity name",
      value: entityState.name,
      oninput: (e) => {
        clearTimeout(searchTimer);
        searchTimer = setTimeout(() => {
          entityState.name = e.target.value.trim();
          entityState.previous = [];
          entityState.current = null;
          load();
        }, 300);
      },
    });
    onLeave(() => clearTimeout(searchTimer));

    main.append(h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("h1", { "data-testid": "page-title" }, "Entities"),
        h("div", { class: "head-actions" }, nameInput,
          h("button", { type: "button", class: "btn", "data-testid": "btn-refresh", onclick: () => load() }, "Refresh"))),
      errorBox,
      h("div", { class: "table-wrap" },
        h("table", { class: "table", "data-testid": "entities-table" },
          h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Key"), h("th", null, "Last operation"), h("th", null, "State"))),
          tbody)),
      h("div", { class: "pager" }, prevBtn, pageLabel, nextBtn)));

    let seq = 0;
    async function load() {
      const mine = ++seq;
      const path = entityState.name
        ? `${BASE}/entities/${encodeURIComponent(entityState.name)}`
        : `${BASE}/entities`;
      try {
        const res = await api("GET", `${path}${query({ fetchState: "true", top: PAGE_SIZE })}`, { continuation: entityState.current });
        if (mine !== seq) return;
        errorBox.hidden = true;
        entityState.next = res.headers.get(CONTINUATION) || null;
        const rows = Array.isArray(res.data) ? res.data : [];
        if (!rows.length) {
          tbody.replaceChildren(h("tr", { class: "empty-row" }, h("td", { colspan: 4, "data-testid": "entities-empty" },
            entityState.name ? `No entities named "${entityState.name}".` : "No entities yet.")));
        } else {
          tbody.replaceChildren(...rows.map((en) => {
            const eid = en.entityId || {};
            const preview = en.state === undefined ? "" : compactJson(en.state, 160);
            return h("tr", { "data-testid": "entity-row", "data-entity-name": eid.name || "", "data-entity-key": eid.key || "" },
              h("td", null, eid.name || "—"),
              h("td", { class: "mono" }, eid.key || "—"),
              h("td", { title: en.lastOperationTime || "" }, fmtDateTime(en.lastOperationTime), " ", h("span", { class: "muted small" }, fmtAgo(en.lastOperationTime))),
              h("td", { class: "state-cell" }, en.state === undefined || en.state === null
                ? h("span", { class: "muted" }, "null")
                : h("code", { class: "state-preview", title: prettyJson(en.state).slice(0, 4000) }, preview)));
          }));
        }
      } catch (err) {
        if (mine !== seq) return;
        errorBox.textContent = `Could not load entities: ${err.message}`;
        errorBox.hidden = false;
      }
      prevBtn.disabled = entityState.previous.length === 0;
      nextBtn.disabled = !entityState.next;
      pageLabel.textContent = `Page ${entityState.previous.length + 1}`;
    }

    function goPage(direction) {
      if (direction > 0 && entityState.next) {
        entityState.previous.push(entityState.current);
        entityState.current = entityState.next;
      } else if (direction < 0 && entityState.previous.length) {
        entityState.current = entityState.previous.pop();
      } else {
        return;
      }
      load();
    }

    load();
  }

  // ------------------------------------------------------------------ start

  function start() {
    memoryToken = readToken();
    setupTokenForm();
    window.addEventListener("hashchange", route);
    route();
    startStatsPolling();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

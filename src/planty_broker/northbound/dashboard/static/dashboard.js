// Planty Broker dashboard: token handling, live updates from the event stream, charts,
// command buttons. Plain browser JavaScript, no build step; htmx swaps server-rendered HTML.
"use strict";

(() => {
  const KEY = "planty.token";
  const page = document.body.dataset.page;
  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(KEY);
  const auth = () => ({ Authorization: `Bearer ${token()}` });
  let streamAbort = null;

  // ------------------------------------------------------------ login

  function showLogin(message) {
    if (streamAbort) streamAbort.abort();
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setLive("offline", "signed out");
    $("token").focus();
  }

  async function check(candidate) {
    const r = await fetch("/api/v1/stats?window=1h", {
      headers: { Authorization: `Bearer ${candidate}` },
    });
    if (r.status === 401) return "This token is not valid (or was revoked).";
    if (!r.ok && r.status !== 404) return `The gateway answered ${r.status}.`;
    return null;
  }

  function ready() {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", ready, { once: true });
      return;
    }
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    document.body.dispatchEvent(new CustomEvent("planty:ready"));
    live();
    if (page === "device") deviceReady();
  }

  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const candidate = $("token").value.trim();
    let problem;
    try {
      problem = await check(candidate);
    } catch (err) {
      problem = `Cannot reach the gateway: ${err}`;
    }
    if (problem) {
      $("login-error").textContent = problem;
      return;
    }
    sessionStorage.setItem(KEY, candidate);
    $("token").value = "";
    ready();
  });

  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("Signed out.");
  });

  document.addEventListener("htmx:configRequest", (e) => {
    if (!token()) {
      e.preventDefault();
      return;
    }
    e.detail.headers.Authorization = `Bearer ${token()}`;
  });
  document.addEventListener("htmx:responseError", (e) => {
    if (e.detail.xhr.status === 401) showLogin("Your token is no longer accepted.");
  });
  document.addEventListener("htmx:afterSwap", () => tickTimes());

  // ------------------------------------------------------------ relative times

  function ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.floor(s)}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  function tickTimes() {
    for (const t of document.querySelectorAll("time[data-ago]")) {
      const ms = Number(t.dataset.ago);
      if (!t.title) t.title = t.textContent;
      t.textContent = ago(ms);
    }
  }
  setInterval(tickTimes, 1000);

  // ------------------------------------------------------------ live updates

  function setLive(mode, text) {
    const el = $("live");
    el.dataset.mode = mode;
    el.textContent = text;
  }

  const pending = new Map(); // device id -> timer: one refresh per device per 300 ms

  function refreshDevice(deviceId) {
    if (pending.has(deviceId)) return;
    pending.set(
      deviceId,
      setTimeout(() => {
        pending.delete(deviceId);
        if (page === "fleet") {
          const row = $(`row-${deviceId}`);
          if (row) {
            htmx.ajax("GET", `/dashboard/fragments/row/${encodeURIComponent(deviceId)}`, {
              target: row,
              swap: "outerHTML",
            });
          } else {
            refreshHeadline(); // a device not on this page (or new): the page, at most every 1.5 s
          }
        } else if (page === "device" && deviceId === $("device").dataset.deviceId) {
          document.body.dispatchEvent(new CustomEvent("planty:refresh"));
          document.body.dispatchEvent(new CustomEvent("planty:commands"));
        }
      }, 300),
    );
  }

  // ------------------------------------------------------------ fleet table: search, pages

  if (page === "fleet") {
    const after = $("fleet-after");
    const reload = () => document.body.dispatchEvent(new CustomEvent("planty:fleet"));
    let typing = null;
    $("fleet-controls").addEventListener("submit", (e) => e.preventDefault());
    $("fleet-search").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        after.value = ""; // a new search starts at its first page
        reload();
      }, 250);
    });
    $("fleet-state").addEventListener("change", () => {
      after.value = "";
      reload();
    });
    $("fleet").addEventListener("click", (e) => {
      const button = e.target.closest("#fleet-prev, #fleet-next");
      if (!button || button.disabled) return;
      after.value = button.dataset.after || "";
      reload();
    });
  }

  let headlineTimer = null;
  function refreshHeadline() {
    if (page !== "fleet" || headlineTimer) return;
    headlineTimer = setTimeout(() => {
      headlineTimer = null;
      document.body.dispatchEvent(new CustomEvent("planty:refresh"));
    }, 1500);
  }

  function onEvent(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    const deviceId = event.device_id;
    if (deviceId) refreshDevice(deviceId);
    if (event.type === "presence" || event.type === "device_error") refreshHeadline();
  }

  // EventSource cannot send the Authorization header: read the SSE stream with fetch.
  async function stream(signal) {
    const r = await fetch("/api/v1/events/stream", {
      headers: { ...auth(), Accept: "text/event-stream" },
      signal,
    });
    if (r.status === 401) {
      showLogin("Your token is no longer accepted.");
      return "stop";
    }
    if (!r.ok || !r.body) return "unavailable";
    setLive("sse", "live: event stream");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "closed";
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) onEvent(data);
      }
    }
  }

  async function live() {
    if (streamAbort) streamAbort.abort();
    const controller = new AbortController();
    streamAbort = controller;
    while (!controller.signal.aborted) {
      let outcome;
      try {
        outcome = await stream(controller.signal);
      } catch {
        outcome = controller.signal.aborted ? "stop" : "closed";
      }
      if (outcome === "stop" || controller.signal.aborted) return;
      if (outcome === "unavailable") {
        // No event stream on this gateway: poll instead.
        setLive("polling", "live: polling every 3 s");
        await sleep(3000, controller.signal);
        document.body.dispatchEvent(new CustomEvent("planty:refresh"));
        if (page === "device") document.body.dispatchEvent(new CustomEvent("planty:commands"));
        continue;
      }
      setLive("offline", "reconnecting…");
      await sleep(1000, controller.signal);
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  // ------------------------------------------------------------ device page

  const WINDOW_MS = { "1h": 3600e3, "1d": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  // Long windows draw from the hourly rollups (kept for years); statistics keep a week.
  const HOURLY = new Set(["7d", "30d"]);
  const statsWindow = (win) => (win === "30d" ? "7d" : win);

  function deviceReady() {
    const box = $("device");
    for (const b of document.querySelectorAll("button.window")) {
      b.addEventListener("click", () => {
        for (const o of document.querySelectorAll("button.window")) o.classList.remove("on");
        b.classList.add("on");
        box.dataset.window = b.dataset.window;
        const url = `/dashboard/fragments/device/${encodeURIComponent(box.dataset.deviceId)}?window=${b.dataset.window}`;
        box.setAttribute("hx-get", url);
        htmx.process(box);
        htmx.ajax("GET", url, { target: box, swap: "innerHTML" });
        history.replaceState(null, "", `?window=${b.dataset.window}`);
        charts();
      });
    }
    document.addEventListener("htmx:afterSwap", (e) => {
      if (e.detail.target === box) buttons();
    });
    charts();
    setInterval(() => {
      if (token() && !document.hidden) charts();
    }, 30_000);
  }

  function buttons() {
    const head = $("device-head");
    const holder = $("actions");
    if (!head || holder.dataset.built === head.dataset.actuators) return;
    holder.dataset.built = head.dataset.actuators;
    holder.replaceChildren();
    const add = (label, action, args) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.dataset.action = action;
      b.addEventListener("click", () => send(action, args()));
      holder.append(b);
    };
    add("Read now", "read", () => ({}));
    add("Ping", "ping", () => ({}));
    for (const a of head.dataset.actuators.split(",").filter(Boolean)) {
      const secs = document.createElement("input");
      secs.type = "number";
      secs.min = "1";
      secs.value = "10";
      secs.className = "seconds";
      secs.id = `seconds-${a}`;
      secs.title = `${a}: seconds before it switches itself off`;
      add(`${a} on`, `${a}.on`, () => ({ seconds: Number(secs.value) || 10 }));
      holder.append(secs);
      add(`${a} off`, `${a}.off`, () => ({}));
    }
  }

  async function send(action, args) {
    const deviceId = $("device").dataset.deviceId;
    const out = $("command-result");
    out.dataset.state = "sending";
    out.textContent = `${action}: sending…`;
    let r;
    try {
      r = await fetch(`/api/v1/devices/${encodeURIComponent(deviceId)}/commands`, {
        method: "POST",
        headers: { ...auth(), "Content-Type": "application/json" },
        body: JSON.stringify({ action, args, ttl_s: 60, wait_s: 10 }),
      });
    } catch (err) {
      out.dataset.state = "error";
      out.textContent = `${action}: cannot reach the gateway (${err})`;
      return;
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      out.dataset.state = "error";
      out.textContent = `${action}: ${body.error ? body.error.message : r.status}`;
      return;
    }
    show(action, body);
    document.body.dispatchEvent(new CustomEvent("planty:commands"));
    if (!["acked", "failed", "expired", "cancelled", "superseded"].includes(body.state)) {
      follow(action, body.id);
    } else {
      charts(); // a new round trip (and, for `read`, new readings)
    }
  }

  function show(action, c) {
    const out = $("command-result");
    out.dataset.state = c.state;
    out.dataset.command = c.id;
    let text = `${action}: ${c.state}`;
    if (c.error) text += ` (${c.error})`;
    if (c.result && Object.keys(c.result).length) text += ` ${JSON.stringify(c.result)}`;
    out.textContent = text;
  }

  async function follow(action, id) {
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const r = await fetch(`/api/v1/commands/${encodeURIComponent(id)}`, { headers: auth() });
      if (!r.ok) return;
      const c = await r.json();
      show(action, c);
      if (["acked", "failed", "expired", "cancelled", "superseded"].includes(c.state)) {
        document.body.dispatchEvent(new CustomEvent("planty:commands"));
        charts();
        return;
      }
    }
  }

  // ------------------------------------------------------------ charts (uPlot)

  async function charts() {
    const box = $("device");
    const deviceId = encodeURIComponent(box.dataset.deviceId);
    const win = box.dataset.window;
    const now = Date.now();
    const since = now - WINDOW_MS[win];
    const hourly = HOURLY.has(win);
    const telemetryUrl = hourly
      ? `/api/v1/devices/${deviceId}/telemetry/hourly?since=${since}&limit=20000`
      : `/api/v1/devices/${deviceId}/telemetry?since=${since}&limit=10000`;
    const sw = statsWindow(win);
    const [tel, stats] = await Promise.all([
      fetch(telemetryUrl, { headers: auth() }),
      fetch(`/api/v1/devices/${deviceId}/stats?window=${sw}`, { headers: auth() }),
    ]);
    // the whole chosen window on the x axis (uPlot would stretch a lone point over years)
    const range = [since / 1000, now / 1000];
    if (tel.ok) {
      const body = await tel.json();
      if (hourly) hourlyCharts(body.hours, range);
      else readingsCharts(body.readings);
    }
    const statsSince = now - WINDOW_MS[sw];
    if (stats.ok) latencyChart((await stats.json()).latency_series, [statsSince / 1000, now / 1000]);
  }

  function width(el) {
    return Math.max(300, el.clientWidth || 600);
  }

  function readingsCharts(readings) {
    const holder = $("readings-charts");
    holder.replaceChildren();
    holder.dataset.source = "raw";
    const names = [...new Set(readings.flatMap((r) => Object.keys(r.readings)))].sort();
    if (!names.length) {
      holder.innerHTML = '<p class="muted">No reading in this window.</p>';
      return;
    }
    const xs = readings.map((r) => Date.parse(r.ts) / 1000);
    for (const name of names) {
      const div = document.createElement("div");
      div.className = "chart";
      div.dataset.series = name;
      holder.append(div);
      const ys = readings.map((r) => (name in r.readings ? r.readings[name] : null));
      new uPlot(
        {
          title: name,
          width: width(holder),
          height: 160,
          series: [{}, { label: name, stroke: "#2f7d4f", width: 1.5, spanGaps: false }],
          axes: [{}, { size: 60 }],
        },
        [xs, ys],
        div,
      );
    }
  }

  // One chart per sensor from hourly rollups: the average, with the hour's min and max.
  function hourlyCharts(hours, xRange) {
    const holder = $("readings-charts");
    holder.replaceChildren();
    holder.dataset.source = "hourly";
    const names = [...new Set(hours.flatMap((h) => Object.keys(h.readings)))].sort();
    if (!names.length) {
      holder.innerHTML = '<p class="muted">No reading in this window.</p>';
      return;
    }
    const xs = hours.map((h) => h.hour_ms / 1000);
    for (const name of names) {
      const div = document.createElement("div");
      div.className = "chart";
      div.dataset.series = name;
      div.dataset.points = String(hours.filter((h) => name in h.readings).length);
      holder.append(div);
      const pick = (key) => hours.map((h) => (name in h.readings ? h.readings[name][key] : null));
      new uPlot(
        {
          title: `${name} (hourly: avg, min, max)`,
          width: width(holder),
          height: 160,
          scales: { x: { time: true, range: xRange } },
          series: [
            {},
            { label: "avg", stroke: "#2f7d4f", width: 1.5, spanGaps: false },
            { label: "min", stroke: "#9cc5a8", width: 1, spanGaps: false },
            { label: "max", stroke: "#9cc5a8", width: 1, spanGaps: false },
          ],
          bands: [{ series: [3, 2], fill: "rgba(47,125,79,0.12)" }],
          axes: [{}, { size: 60 }],
        },
        [xs, pick("avg"), pick("min"), pick("max")],
        div,
      );
    }
  }

  // The latency y axis starts at 0 and ends on a round number at least 10 % above the slowest
  // point, so two milliseconds read "2", not "1.995 / 1.998 / 2" zoomed into a flat line.
  function latencyRange(_u, _min, max) {
    const top = Math.max((max || 0) * 1.1, 1);
    const step = Math.pow(10, Math.floor(Math.log10(top)));
    const nice = [1, 2, 2.5, 5, 10].map((k) => k * step).find((v) => v >= top);
    return [0, nice];
  }

  function latencyTicks(_u, values) {
    return values.map((v) => (v >= 10 ? v.toFixed(0) : String(Number(v.toFixed(2)))));
  }

  window.plantyCharts = { latencyRange, latencyTicks }; // for the browser tests

  function latencyChart(series, xRange) {
    const holder = $("latency-chart");
    holder.replaceChildren();
    if (!series.length) {
      holder.innerHTML = '<p class="muted">No round trip measured in this window.</p>';
      return;
    }
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.series = "latency";
    holder.append(div);
    const xs = series.map((p) => p.t_ms / 1000);
    new uPlot(
      {
        title: "round trip (ms) per slot",
        width: width(holder),
        height: 180,
        scales: { x: { time: true, range: xRange }, y: { range: latencyRange } },
        series: [
          {},
          { label: "p50", stroke: "#2f7d4f", width: 1.5 },
          { label: "p95", stroke: "#c98a00", width: 1.5 },
          { label: "p99", stroke: "#b3261e", width: 1.5 },
          { label: "max", stroke: "#8a8f8c", width: 1, dash: [4, 4] },
          { label: "samples", scale: "n", show: false },
        ],
        axes: [{}, { size: 60, values: latencyTicks }],
      },
      [
        xs,
        series.map((p) => p.p50_ms),
        series.map((p) => p.p95_ms),
        series.map((p) => p.p99_ms),
        series.map((p) => p.max_ms),
        series.map((p) => p.count),
      ],
      div,
    );
  }

  // ------------------------------------------------------------ start

  if (!token()) {
    showLogin("");
    return;
  }
  check(token())
    .then((problem) => (problem ? showLogin(problem) : ready()))
    .catch((err) => showLogin(`Cannot reach the gateway: ${err}`));
})();

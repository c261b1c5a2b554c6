// The twisted_mqtt dashboard: plain JavaScript over the admin API (/api/v1/), no build step.
// Pages are sections of index.html shown by the location hash; data is drawn with textContent
// only (never HTML from the broker). Live figures come from the Server-Sent Events stream.
"use strict";

(function () {
  const API = "/api/v1/";
  const PAGE = 50;
  const WINDOW = 300; // seconds of history in the charts
  const state = { csrf: null, user: null, events: null, charts: {}, series: null,
                  page: null, refreshing: false, offsets: {}, client: null, retained: null,
                  view: "text" };

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || ("HTTP " + status));
      this.status = status;
      this.field = error.field;
    }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    const response = await fetch(API + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      if (response.status === 401 && path !== "login") signedOut();
      throw new ApiError(response.status, data);
    }
    return data;
  }

  function say(text, bad) {
    const status = $("status");
    status.textContent = text || "";
    status.classList.toggle("bad", !!bad);
  }

  function failed(error) {
    say(error.field ? error.field + ": " + error.message : error.message, true);
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  // Replace a table's rows, unless the data drawn (``key``) is what is shown already: a
  // refresh then leaves the rows, their focus and a click on them alone.
  function fill(tbody, rows, key) {
    if (key !== undefined && tbody.dataset.key === key) return;
    if (key !== undefined) tbody.dataset.key = key;
    tbody.replaceChildren(...rows);
  }

  function row(cells, attrs) {
    const tr = el("tr", null, attrs);
    for (const cell of cells) {
      const td = el("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null ||
        cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function when(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleString() : "";
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
          m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (h || d ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  // -- signing in ------------------------------------------------------------------------------

  function signedOut() {
    state.csrf = state.user = null;
    if (state.events) { state.events.close(); state.events = null; }
    $("nav").hidden = true;
    $("who").hidden = true;
    show("login");
  }

  function signedIn(who) {
    state.csrf = who.csrf;
    state.user = who.user;
    $("who-name").textContent = who.user;
    $("nav").hidden = false;
    $("who").hidden = false;
    startEvents();
    route();
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
      const who = await api("POST", "login", { username: $("login-user").value,
                                               password: $("login-password").value });
      $("login-password").value = "";
      signedIn(who);
    } catch (error) {
      $("login-error").textContent = error.message;
    }
  });

  $("logout").addEventListener("click", async () => {
    try { await api("POST", "logout"); } catch (e) { /* signed out anyway */ }
    signedOut();
  });

  // -- pages -----------------------------------------------------------------------------------

  function show(name) {
    for (const section of document.querySelectorAll(".page")) {
      section.hidden = section.id !== "page-" + name;
    }
    for (const link of document.querySelectorAll("nav a")) {
      if (link.getAttribute("href") === "#/" + name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    state.page = name;
  }

  const loaders = {
    overview: loadOverview, clients: loadClients, client: loadClient,
    subscriptions: loadSubscriptions, retained: loadRetained, publish: async () => {},
    bans: loadBans, config: loadConfig, auth: loadAuth,
  };

  function route() {
    if (!state.user) return;
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    let name = parts[0] || "overview";
    if (name === "clients" && parts.length > 1) {
      name = "client";
      state.client = decodeURIComponent(parts.slice(1).join("/"));
    }
    if (!loaders[name]) name = "overview";
    show(name);
    say("");
    refresh(true);
    const heading = document.querySelector("#page-" + name + " h2");
    if (heading && document.activeElement === document.body) {
      $("main").focus({ preventScroll: true });
    }
  }

  async function refresh(first) {
    if (state.refreshing || !state.user) return;
    const loader = loaders[state.page];
    if (!loader) return;
    state.refreshing = true;
    try { await loader(first); } catch (error) { failed(error); }
    state.refreshing = false;
  }

  window.addEventListener("hashchange", route);

  function pager(name, total, load) {
    const offset = state.offsets[name] || 0;
    $(name + "-range").textContent = total ? (offset + 1) + "–" +
      Math.min(offset + PAGE, total) + " of " + total : "none";
    $(name + "-prev").disabled = offset === 0;
    $(name + "-next").disabled = offset + PAGE >= total;
    $(name + "-prev").onclick = () => { state.offsets[name] = Math.max(0, offset - PAGE); load(); };
    $(name + "-next").onclick = () => { state.offsets[name] = offset + PAGE; load(); };
  }

  function query(params) {
    return Object.entries(params).filter(([, v]) => v !== "" && v !== undefined)
      .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
  }

  // -- overview --------------------------------------------------------------------------------

  function figure(label, value, id) {
    const box = el("div", null, { class: "figure" });
    box.appendChild(el("div", label, { class: "label" }));
    box.appendChild(el("div", value, { class: "value", id: id }));
    return box;
  }

  function drawFigures(summary, sample) {
    const rate = (n) => (n === undefined ? "" : n.toFixed(1));
    $("figures").replaceChildren(
      figure("Clients connected", summary.clients_connected, "fig-clients"),
      figure("Sessions", summary.sessions, "fig-sessions"),
      figure("Subscriptions", summary.subscriptions, "fig-subscriptions"),
      figure("Retained", summary.retained, "fig-retained"),
      figure("Messages in/s", rate(sample && sample.messages_in), "fig-in"),
      figure("Messages out/s", rate(sample && sample.messages_out), "fig-out"),
      figure("Memory", bytes(summary.memory_bytes), "fig-memory"),
      figure("Uptime", duration(summary.uptime), "fig-uptime"),
      figure("Version", summary.version, "fig-version"));
  }

  function makeChart(id, labels, format) {
    const target = $(id);
    const width = Math.max(280, target.clientWidth || 500);
    const opts = {
      width, height: 220,
      series: [{}, { label: labels[0], stroke: "#0b5cad", width: 2 },
               { label: labels[1], stroke: "#1a7f37", width: 2 }],
      axes: [{}, { size: 80, values: (u, splits) => splits.map(format) }],
      scales: { x: { time: true } },
    };
    target.replaceChildren();
    return new uPlot(opts, [[], [], []], target);
  }

  function ensureCharts() {
    if (!state.charts.messages && window.uPlot) {
      state.charts.messages = makeChart("chart-messages", ["in", "out"],
                                        (n) => n.toLocaleString());
      state.charts.bytes = makeChart("chart-bytes", ["in", "out"], bytes);
      window.addEventListener("resize", () => {
        for (const [name, chart] of Object.entries(state.charts)) {
          const width = Math.max(280, $("chart-" + name).clientWidth);
          chart.setSize({ width, height: 220 });
        }
      });
    }
  }

  function setSeries(samples) {
    state.series = { t: [], mi: [], mo: [], bi: [], bo: [] };
    for (const s of samples) addSample(s, false);
    drawCharts();
  }

  function addSample(s, draw) {
    const series = state.series;
    if (!series) return;
    series.t.push(s.t); series.mi.push(s.messages_in); series.mo.push(s.messages_out);
    series.bi.push(s.bytes_in); series.bo.push(s.bytes_out);
    while (series.t.length && series.t[0] < s.t - WINDOW) {
      for (const key of Object.keys(series)) series[key].shift();
    }
    if (draw) drawCharts();
  }

  function drawCharts() {
    const series = state.series;
    ensureCharts();
    if (!series || !state.charts.messages) return;
    state.charts.messages.setData([series.t, series.mi, series.mo]);
    state.charts.bytes.setData([series.t, series.bi, series.bo]);
    const last = series.t.length - 1;
    const box = $("chart-messages");
    box.dataset.points = String(series.t.length);
    box.dataset.lastIn = last >= 0 ? String(series.mi[last]) : "";
    box.dataset.peakIn = String(Math.max(0, ...series.mi.slice(-30)));
  }

  async function loadOverview(first) {
    if (first || !state.series) {
      const stats = await api("GET", "stats");
      drawFigures(stats.summary, stats.samples[stats.samples.length - 1]);
      setSeries(stats.samples);
    }
    const nodes = await api("GET", "nodes");
    const nodeRows = nodes.nodes.map((n) => row(
      [n.node, n.status, n.version, n.uptime == null ? "" : duration(n.uptime),
       n.clients_connected, bytes(n.memory_bytes)]));
    if (nodes.total) {  // a cluster: its total under its nodes
      nodeRows.push(row(["cluster (" + nodes.total.nodes + " nodes)", "", "", "",
                         nodes.total.clients_connected, bytes(nodes.total.memory_bytes)],
                        { "class": "total" }));
    }
    fill($("nodes-table").tBodies[0], nodeRows);
  }

  function startEvents() {
    if (state.events || !window.EventSource) return;
    const source = new EventSource(API + "events");
    source.addEventListener("stats", (event) => {
      const data = JSON.parse(event.data);
      if (state.page === "overview") {
        drawFigures(data.summary, data.sample);
        addSample(data.sample, true);
      } else if (state.series) {
        addSample(data.sample, false);
      }
      // Live pages follow the stream (the overview: its nodes table); the others are
      // browsed and change by hand.
      if (["overview", "clients", "client", "subscriptions"].includes(state.page)) {
        refresh(false);
      }
    });
    state.events = source;
  }

  // -- clients ---------------------------------------------------------------------------------

  async function loadClients() {
    const data = await api("GET", "clients?" + query({
      search: $("clients-q").value, limit: PAGE, offset: state.offsets.clients || 0 }));
    fill($("clients-table").tBodies[0], data.items.map((c) => {
      const link = el("a", c.client_id, { href: "#/clients/" + encodeURIComponent(c.client_id) });
      return row([link, c.connected ? "yes" : "no", c.username, c.address, c.listener,
                  c.protocol_version, c.keep_alive, when(c.connected_since), c.queued,
                  c.inflight, c.node], { "data-client-id": c.client_id });
    }), JSON.stringify(data));
    pager("clients", data.total, loadClients);
  }

  $("clients-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.offsets.clients = 0;
    loadClients().catch(failed);
  });

  async function loadClient() {
    let c;
    try {
      c = await api("GET", "clients/" + encodeURIComponent(state.client));
    } catch (error) {
      if (error.status !== 404 || !state.clientData ||
          state.clientData.client_id !== state.client) throw error;
      // The session ended (a clean session disconnected): keep what was shown, to ban it.
      c = Object.assign({}, state.clientData, { connected: false, address: null,
                                                subscription_list: [] });
    }
    $("client-title").textContent = "Client " + c.client_id;
    const fields = [["Connected", c.connected ? "yes" : "no"], ["User name", c.username],
      ["Address", c.address || (state.clientData && state.clientData.address)],
      ["Listener", c.listener], ["MQTT", c.protocol_version],
      ["Keep alive", c.keep_alive], ["Connected since", when(c.connected_since)],
      ["Session expiry", c.session_expiry_interval], ["Queued", c.queued],
      ["In flight", c.inflight], ["Node", c.node]];
    $("client-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k),
                                                                     el("dd", v)]));
    $("client-fields").dataset.connected = String(c.connected);
    $("kick").disabled = !c.connected;
    if (c.connected || !state.clientData || state.clientData.client_id !== c.client_id) {
      state.clientData = c;
    }
    fill($("client-subs").tBodies[0], c.subscription_list.map((s) => row(
      [s.topic_filter, s.share_group, s.qos, s.no_local, s.retain_as_published,
       s.subscription_id])), JSON.stringify(c.subscription_list));
  }

  $("kick").addEventListener("click", async () => {
    try {
      await api("POST", "clients/" + encodeURIComponent(state.client) + "/kick");
      say("Client " + state.client + " disconnected.");
      await loadClient();
    } catch (error) { failed(error); }
  });

  $("ban-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const c = state.clientData;
    if (!c) return;
    const kind = $("ban-kind").value;
    const value = kind === "client_id" ? c.client_id : kind === "username" ? c.username
      : c.address;
    if (!value) { say("This client has no " + kind.replace("_", " ") + ".", true); return; }
    const body = { kind, value, reason: $("ban-reason").value };
    if ($("ban-duration").value) body.duration = Number($("ban-duration").value);
    try {
      await api("POST", "bans", body);
      say("Banned " + kind.replace("_", " ") + " " + value + ".");
      await loadClient();
    } catch (error) { failed(error); }
  });

  // -- bans ------------------------------------------------------------------------------------

  async function loadBans() {
    const data = await api("GET", "bans");
    fill($("bans-table").tBodies[0], data.bans.map((b) => {
      const lift = el("button", "Lift", { type: "button",
                                          "aria-label": "Lift the ban of " + b.value });
      lift.addEventListener("click", async () => {
        try {
          await api("DELETE", "bans/" + b.kind + "/" + encodeURIComponent(b.value));
          await loadBans();
        } catch (error) { failed(error); }
      });
      return row([b.kind, b.value, b.expires_at ? when(b.expires_at) : "lifted by hand",
                  b.reason, b.by, lift]);
    }));
  }

  $("bans-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { kind: $("bans-kind").value, value: $("bans-value").value };
    if ($("bans-duration").value) body.duration = Number($("bans-duration").value);
    try {
      await api("POST", "bans", body);
      $("bans-value").value = "";
      await loadBans();
    } catch (error) { failed(error); }
  });

  // -- subscriptions ---------------------------------------------------------------------------

  async function loadSubscriptions() {
    const data = await api("GET", "subscriptions?" + query({
      search: $("subs-q").value, limit: PAGE, offset: state.offsets.subs || 0 }));
    fill($("subs-table").tBodies[0], data.items.map((s) => row([
      s.topic_filter, el("a", s.client_id, { href: "#/clients/" + encodeURIComponent(s.client_id) }),
      s.share_group, s.qos])), JSON.stringify(data));
    pager("subs", data.total, loadSubscriptions);
    const shared = await api("GET", "subscriptions/shared");
    fill($("shared-table").tBodies[0], shared.groups.map((g) => row(
      [g.group, g.topic_filter, g.members.join(", ")])), JSON.stringify(shared));
  }

  $("subs-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.offsets.subs = 0;
    loadSubscriptions().catch(failed);
  });

  // -- retained messages -----------------------------------------------------------------------

  async function loadRetained() {
    const data = await api("GET", "retained?" + query({
      filter: $("ret-filter").value || "#", limit: PAGE, offset: state.offsets.ret || 0 }));
    fill($("ret-table").tBodies[0], data.items.map((m) => {
      const open = el("a", m.topic, { href: "#/retained" });
      open.addEventListener("click", (event) => { event.preventDefault(); openRetained(m.topic); });
      return row([open, m.qos, bytes(m.size), m.preview], { "data-topic": m.topic });
    }));
    pager("ret", data.total, loadRetained);
  }

  async function openRetained(topic) {
    try {
      state.retained = await api("GET", "retained/message?" + query({ topic }));
      $("ret-detail").hidden = false;
      $("ret-topic").textContent = topic;
      showPayload(state.retained.payload.json ? "json" : state.retained.payload.text !== null
        ? "text" : "hex");
    } catch (error) { failed(error); }
  }

  function showPayload(view) {
    const payload = state.retained.payload;
    state.view = view;
    const text = view === "json" ? (payload.json || "(not JSON)")
      : view === "text" ? (payload.text === null ? "(not UTF-8)" : payload.text)
      : payload.hex.replace(/(..)/g, "$1 ").trim();
    $("ret-payload").textContent = payload.truncated ? text + "\n… (the first " +
      bytes(payload.shown) + " of " + bytes(payload.size) + " shown)" : text;
    $("ret-payload").dataset.view = view;
    $("ret-payload").dataset.truncated = String(!!payload.truncated);
    for (const button of document.querySelectorAll("[data-view]")) {
      button.setAttribute("aria-pressed", String(button.dataset.view === view));
    }
  }

  for (const button of document.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => state.retained && showPayload(button.dataset.view));
  }

  $("ret-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.offsets.ret = 0;
    loadRetained().catch(failed);
  });

  $("ret-delete").addEventListener("click", async () => {
    const topic = state.retained && state.retained.topic;
    if (!topic) return;
    try {
      await api("DELETE", "retained/message?" + query({ topic }));
      $("ret-detail").hidden = true;
      state.retained = null;
      say("Deleted the retained message of " + topic + ".");
      await loadRetained();
    } catch (error) { failed(error); }
  });

  // -- publish ---------------------------------------------------------------------------------

  $("pub-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { topic: $("pub-topic").value, payload: $("pub-payload").value,
                   encoding: $("pub-encoding").value, qos: Number($("pub-qos").value),
                   retain: $("pub-retain").checked };
    const properties = {};
    if ($("pub-content-type").value) properties.content_type = $("pub-content-type").value;
    if ($("pub-response-topic").value) properties.response_topic = $("pub-response-topic").value;
    if ($("pub-expiry").value) properties.message_expiry_interval = Number($("pub-expiry").value);
    const pairs = $("pub-user-props").value.split("\n").filter((line) => line.includes("="))
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]);
    if (pairs.length) properties.user_properties = pairs;
    if (Object.keys(properties).length) body.properties = properties;
    try {
      const result = await api("POST", "publish", body);
      $("pub-result").textContent = "Published to " + result.topic + " (" + result.routed +
        " subscriber sessions).";
    } catch (error) {
      $("pub-result").textContent = (error.field ? error.field + ": " : "") + error.message;
    }
  });

  // -- listeners, configuration, auth ----------------------------------------------------------

  async function loadConfig() {
    const listeners = await api("GET", "listeners");
    fill($("listeners-table").tBodies[0], listeners.listeners.map((l) => row(
      [l.kind, l.endpoint, l.address, l.listening ? "yes" : "no", l.connections])));
    const config = await api("GET", "config");
    const rows = [];
    for (const [key, value] of Object.entries(config.options)) {
      rows.push(row([key, JSON.stringify(value)]));
    }
    for (const [key, value] of Object.entries(config.capabilities)) {
      rows.push(row(["capabilities." + key, JSON.stringify(value)]));
    }
    fill($("config-table").tBodies[0], rows);
  }

  function table(caption, headings, rows) {
    const wrap = el("div", null, { class: "table-wrap" });
    const t = el("table");
    t.appendChild(el("caption", caption));
    const head = el("tr");
    for (const h of headings) head.appendChild(el("th", h, { scope: "col" }));
    t.appendChild(el("thead")).appendChild(head);
    const body = t.appendChild(el("tbody"));
    for (const cells of rows) body.appendChild(row(cells));
    wrap.appendChild(t);
    return wrap;
  }

  async function loadAuth() {
    const data = await api("GET", "auth");
    const parts = [el("p", "Authentication hooks: " + (data.hooks.join(", ") || "none"))];
    for (const ledger of data.ledgers) {
      const filters = (list) => list.map((f) => f.filter + " " + f.access).join(", ");
      parts.push(el("h3", "Ledger " + (ledger.path || "")));
      parts.push(table("Users", ["User", "Password", "Disallowed", "ACL"], ledger.users.map(
        (u) => [u.username, u.password || "", u.disallow ? "yes" : "no", filters(u.acl)])));
      parts.push(table("Auth rules", ["Client", "User", "Remote", "Allow"], ledger.auth.map(
        (r) => [r.client || "*", r.username || "*", r.remote || "*", r.allow ? "yes" : "no"])));
      parts.push(table("ACL rules (default: " + ledger.acl_default + ")",
        ["Client", "User", "Remote", "Filters"], ledger.acl.map(
          (r) => [r.client || "*", r.username || "*", r.remote || "*", filters(r.filters)])));
    }
    $("auth-content").replaceChildren(...parts);
  }

  // -- start -----------------------------------------------------------------------------------

  api("GET", "session").then(signedIn, () => signedOut());
})();

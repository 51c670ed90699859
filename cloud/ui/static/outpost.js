/* Outpost UI kit: SSE live updates, sortable/filterable tables, CSRF header for htmx, uPlot
   trend charts. No build step; works with the vendored htmx and uPlot (both optional: pages
   stay usable without JavaScript). */
(function () {
  "use strict";
  var Outpost = (window.Outpost = window.Outpost || {});

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    if (!isFinite(v)) return String(v);
    if (Number.isInteger(v)) return String(v);
    var a = Math.abs(v);
    return a >= 1e6 || a < 1e-3 ? v.toPrecision(4) : v.toFixed(2);
  }
  Outpost.fmt = fmt;

  function qualityLabel(q) {
    if (typeof q === "string") return q;
    if (q === 0) return "good";
    return q < 128 ? "uncertain:" + q : "bad:" + q;
  }

  /* --- CSRF for htmx requests ------------------------------------------------------------ */
  document.addEventListener("htmx:configRequest", function (e) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) {
      var hdr = document.querySelector('meta[name="csrf-header"]');
      e.detail.headers[hdr ? hdr.content : "X-CSRF-Token"] = meta.content;
    }
  });

  /* --- live updates ---------------------------------------------------------------------- */
  var refreshTimers = new WeakMap();

  function refresh(el) {
    // coalesce bursts: at most one refresh in flight per element, trailing edge kept
    if (refreshTimers.get(el)) return;
    refreshTimers.set(el, setTimeout(function () {
      refreshTimers.delete(el);
      if (!window.htmx || !el.isConnected) return;
      // never swap away a selection or a command in flight: retry once they are done
      if (el.querySelector("input[type=checkbox]:checked, .cmd-pending, input:focus, select:focus")) {
        setTimeout(function () { refresh(el); }, 1000);
        return;
      }
      var url = el.getAttribute("data-refresh-url");
      if (url) window.htmx.ajax("GET", url, { target: el, swap: "outerHTML" });
    }, parseInt(el.getAttribute("data-refresh-delay") || "200", 10)));
  }

  // one pass over the live elements per message (a page may hold thousands of points)
  function liveIndex() {
    var idx = {};
    function add(key, kind, el) {
      var e = idx[key] || (idx[key] = { val: [], q: [], ts: [], chart: [] });
      e[kind].push(el);
    }
    document.querySelectorAll("[data-live-point],[data-live-quality],[data-live-ts]").forEach(function (el) {
      var k = el.getAttribute("data-live-point");
      if (k !== null) add(k, el.hasAttribute("data-chart") ? "chart" : "val", el);
      k = el.getAttribute("data-live-quality");
      if (k !== null) add(k, "q", el);
      k = el.getAttribute("data-live-ts");
      if (k !== null) add(k, "ts", el);
    });
    return idx;
  }

  function applyReading(gw, pts) {
    var idx = liveIndex(), flashed = [];
    Object.keys(pts).forEach(function (pid) {
      var sample = pts[pid]; // [ts_ms, value, quality]
      var e = idx[gw + "|" + pid];
      if (!e) return;
      var q = qualityLabel(sample[2]);
      e.val.forEach(function (el) {
        el.textContent = fmt(sample[1]);
        el.setAttribute("data-quality", q);
        el.classList.remove("updated");
        flashed.push(el);
      });
      e.q.forEach(function (el) {
        el.textContent = q;
        el.className = "q " + (q === "good" ? "q-good" : q.indexOf("uncertain") === 0 ? "q-uncertain" : "q-bad");
      });
      e.ts.forEach(function (el) {
        el.textContent = new Date(sample[0]).toISOString().replace(/\.\d+Z$/, "Z");
      });
      e.chart.forEach(function (el) {
        if (el.uplot && sample[1] !== null) appendToChart(el, sample[0] / 1000, sample[1]);
      });
    });
    if (flashed.length) {
      void document.body.offsetWidth; // one reflow restarts every flash animation
      flashed.forEach(function (el) { el.classList.add("updated"); });
    }
  }

  /* A batch with more points than the notifications carry says "more": re-read the newest
     values of that gateway (at most once a second) from the JSON API. */
  var latestPending = {};
  Outpost.latestUrl = "/api/v1/gateways/{gw}/latest";
  function rereadLatest(gw) {
    if (latestPending[gw]) return;
    latestPending[gw] = setTimeout(function () {
      fetch(Outpost.latestUrl.replace("{gw}", encodeURIComponent(gw)), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (rows) {
          var pts = {};
          rows.forEach(function (row) {
            if (row.ts) pts[row.point_id] = [Date.parse(row.ts), row.value, row.quality];
          });
          applyReading(gw, pts);
        })
        .finally(function () { delete latestPending[gw]; });
    }, 1000);
  }

  function onLive(type, msg) {
    var gw = msg.gw || "";
    if (type === "reading" && msg.pts) applyReading(gw, msg.pts);
    if (type === "reading" && msg.more) rereadLatest(gw);
    document.querySelectorAll("[data-refresh-on]").forEach(function (el) {
      var keys = el.getAttribute("data-refresh-on").split(/\s+/);
      if (keys.indexOf(type + ":" + gw) >= 0 || keys.indexOf(type + ":*") >= 0) refresh(el);
    });
    document.dispatchEvent(new CustomEvent("outpost:live", { detail: { type: type, msg: msg } }));
  }

  Outpost.connectLive = function (url) {
    if (!window.EventSource) return null;
    var state = document.getElementById("live-state");
    var es = new EventSource(url);
    ["reading", "hb", "alarm", "command", "gateway"].forEach(function (type) {
      es.addEventListener(type, function (ev) {
        try { onLive(type, JSON.parse(ev.data)); } catch (err) { console.error(err); }
      });
    });
    var connectedBefore = false;
    es.addEventListener("ready", function () {
      if (state) state.className = "live-dot on";
      document.body.setAttribute("data-live", "on");
      if (connectedBefore) {
        // back after a cut: whatever changed meanwhile was not pushed, so re-read it
        onLive("gateway", { gw: "*" });
        var gws = {};
        document.querySelectorAll("[data-live-point]").forEach(function (el) {
          gws[el.getAttribute("data-live-point").split("|")[0]] = true;
        });
        Object.keys(gws).forEach(rereadLatest);
      }
      connectedBefore = true;
    });
    es.onerror = function () {
      if (state) state.className = "live-dot off";
      document.body.setAttribute("data-live", "off");
    };
    Outpost.eventSource = es;
    return es;
  };

  /* --- commands (ack / shelve through the command channel) ------------------------------ */
  /* A form with data-command-form holds checkboxes name="sel" value="GATEWAY|ALARM_ID", a
     "note" field and a "duration" select; buttons with data-command="ack|shelve" act on the
     selection (or on their own data-target). Each command is POSTed to the command endpoint
     (JSON, X-CSRF-Token) and its row shows pending → done, or the refusal. */
  var FINAL = { succeeded: "done", failed: "failed", refused: "refused", expired: "expired" };
  Outpost.commandUrl = "/api/v1/gateways/{gw}/commands";

  function csrfHeaders() {
    var h = { "Content-Type": "application/json", Accept: "application/json" };
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) h["X-CSRF-Token"] = meta.content;
    return h;
  }

  function statusCell(key) {
    var row = document.querySelector('tr[data-alarm="' + CSS.escape(key) + '"]');
    return row && row.querySelector("[data-cmd-status]");
  }

  // statuses survive the live re-render of the table for a while (the row is new then)
  var cmdStatus = {};
  document.addEventListener("htmx:afterSettle", function () {
    var now = Date.now();
    Object.keys(cmdStatus).forEach(function (key) {
      var st = cmdStatus[key];
      if (now - st.t > 60000) { delete cmdStatus[key]; return; }
      paintStatus(key, st.text, st.state);
    });
  });

  function showStatus(key, text, state) {
    cmdStatus[key] = { text: text, state: state, t: Date.now() };
    paintStatus(key, text, state);
  }

  function paintStatus(key, text, state) {
    var cell = statusCell(key);
    if (!cell) return;
    cell.textContent = text;
    cell.className = "badge st-" + state + (state === "pending" ? " cmd-pending" : "");
    cell.setAttribute("data-state", state);
  }

  function follow(key, gw, id, deadline) {
    var url = Outpost.commandUrl.replace("{gw}", encodeURIComponent(gw)) + "/" + id;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (c) {
        if (FINAL[c.state]) {
          var msg = c.result && c.result.message ? ": " + c.result.message : "";
          showStatus(key, FINAL[c.state] + (c.state === "succeeded" ? "" : msg), c.state === "succeeded" ? "done" : "refused");
        } else if (Date.now() < deadline) {
          showStatus(key, "pending (" + c.state + ")", "pending");
          setTimeout(function () { follow(key, gw, id, deadline); }, 1000);
        }
      })
      .catch(function () { if (Date.now() < deadline) setTimeout(function () { follow(key, gw, id, deadline); }, 2000); });
  }

  function sendCommand(kind, key, note, duration) {
    var i = key.indexOf("|"), gw = key.slice(0, i), alarm = key.slice(i + 1);
    var args = { alarm_id: alarm };
    if (kind === "ack" || kind === "unshelve") { if (note) args.note = note; }
    else if (kind === "shelve") {
      args.reason = note;
      if (duration === "one_shot") args.one_shot = true; else args.duration_s = parseFloat(duration);
    }
    showStatus(key, "pending", "pending");
    return fetch(Outpost.commandUrl.replace("{gw}", encodeURIComponent(gw)), {
      method: "POST", credentials: "same-origin", headers: csrfHeaders(),
      body: JSON.stringify({ kind: kind, args: args }),
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { showStatus(key, "refused: " + (body.detail && body.detail.length ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : r.status), "refused"); return; }
        follow(key, gw, body.id, Date.now() + 120000);
      });
    }).catch(function (err) { showStatus(key, "error: " + err, "refused"); });
  }

  // replaceable: the agent's status page acts on its local API instead of the command channel
  Outpost.sendCommand = sendCommand;
  Outpost.showCommandStatus = showStatus;

  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("button[data-command]");
    if (!btn) return;
    var form = btn.closest("form[data-command-form]");
    if (!form) return;
    e.preventDefault();
    var kind = btn.getAttribute("data-command");
    var keys = btn.hasAttribute("data-target") ? [btn.getAttribute("data-target")]
      : Array.prototype.map.call(form.querySelectorAll('input[name="sel"]:checked'), function (cb) { return cb.value; });
    var msg = form.querySelector("[data-command-message]");
    var note = form.elements.note ? form.elements.note.value.trim() : "";
    var duration = form.elements.duration ? form.elements.duration.value : "3600";
    if (!keys.length) { if (msg) msg.textContent = "select one or more alarms first"; return; }
    if (kind === "shelve" && !note) { if (msg) msg.textContent = "shelving needs a reason (the note)"; return; }
    if (msg) msg.textContent = kind + ": " + keys.length + " alarm(s) sent";
    keys.forEach(function (k) { Outpost.sendCommand(kind, k, note, duration); });
    form.querySelectorAll('input[type=checkbox]').forEach(function (cb) { cb.checked = false; });
  });

  /* --- tables ---------------------------------------------------------------------------- */
  function cellValue(row, idx, kind) {
    var cell = row.children[idx];
    if (!cell) return "";
    var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    if (kind === "num") { var n = parseFloat(v); return isNaN(n) ? -Infinity : n; }
    return v.toLowerCase();
  }

  function sortBy(th) {
    var table = th.closest("table"), tbody = table.tBodies[0];
    if (!tbody) return;
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var kind = th.getAttribute("data-sort");
    var dir = th.getAttribute("data-dir") === "asc" ? "desc" : "asc";
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", dir);
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, idx, kind), y = cellValue(b, idx, kind);
      var c = x < y ? -1 : x > y ? 1 : 0;
      return dir === "asc" ? c : -c;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }

  document.addEventListener("click", function (e) {
    var th = e.target.closest && e.target.closest("th[data-sort]");
    if (th) sortBy(th);
    var all = e.target.closest && e.target.closest("input[data-select-all]");
    if (all) {
      var form = all.form || document;
      form.querySelectorAll('input[type=checkbox][name="' + all.getAttribute("data-select-all") + '"]').forEach(function (cb) {
        if (!cb.closest("tr") || cb.closest("tr").style.display !== "none") cb.checked = all.checked;
      });
    }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && e.target.matches && e.target.matches("th[data-sort]")) sortBy(e.target);
  });
  document.addEventListener("input", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("input[data-filter-table]")) return;
    var table = document.getElementById(box.getAttribute("data-filter-table"));
    if (!table) return;
    var words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var text = r.textContent.toLowerCase();
      r.style.display = words.every(function (w) { return text.indexOf(w) >= 0; }) ? "" : "none";
    });
  });
  document.addEventListener("change", function (e) {
    if (e.target.matches && e.target.matches("select[data-autosubmit]") && e.target.form) e.target.form.requestSubmit();
  });

  /* --- charts ---------------------------------------------------------------------------- */
  var LIMIT_COLOURS = { alarm_hh: "rgba(229,72,77,0.22)", alarm_h: "rgba(242,122,42,0.14)",
    alarm_l: "rgba(242,122,42,0.14)", alarm_ll: "rgba(229,72,77,0.22)" };
  var PRIO_COLOURS = { critical: "#e5484d", high: "#f27a2a", medium: "#e0c226", low: "#4ea1ff" };

  function limitBandsPlugin(limits, marks) {
    return {
      hooks: {
        drawClear: function (u) {
          var ctx = u.ctx, b = u.bbox, top = b.top, bottom = b.top + b.height;
          function band(from, to, colour) {
            var y1 = Math.max(top, Math.min(bottom, u.valToPos(from, "y", true)));
            var y2 = Math.max(top, Math.min(bottom, u.valToPos(to, "y", true)));
            ctx.fillStyle = colour;
            ctx.fillRect(b.left, Math.min(y1, y2), b.width, Math.abs(y2 - y1));
          }
          var big = 1e12;
          if (limits.alarm_h != null) band(limits.alarm_h, limits.alarm_hh != null ? limits.alarm_hh : big, LIMIT_COLOURS.alarm_h);
          if (limits.alarm_hh != null) band(limits.alarm_hh, big, LIMIT_COLOURS.alarm_hh);
          if (limits.alarm_l != null) band(limits.alarm_ll != null ? limits.alarm_ll : -big, limits.alarm_l, LIMIT_COLOURS.alarm_l);
          if (limits.alarm_ll != null) band(-big, limits.alarm_ll, LIMIT_COLOURS.alarm_ll);
        },
        draw: function (u) {
          var ctx = u.ctx, b = u.bbox;
          (marks || []).forEach(function (m) {
            var x = u.valToPos(m.t, "x", true);
            if (x < b.left || x > b.left + b.width) return;
            ctx.strokeStyle = PRIO_COLOURS[m.priority] || "#aaa";
            ctx.lineWidth = 2 * (window.devicePixelRatio || 1);
            ctx.setLineDash(m.active ? [] : [4, 4]);
            ctx.beginPath(); ctx.moveTo(x, b.top); ctx.lineTo(x, b.top + b.height); ctx.stroke();
            ctx.setLineDash([]);
          });
        },
      },
    };
  }

  /* data: {t: [epoch s], value: [...], min?: [...], max?: [...], limits: {...}, marks: [...],
     units, label} */
  Outpost.drawChart = function (el, data) {
    if (!window.uPlot) return null;
    if (el.uplot) { el.uplot.destroy(); el.uplot = null; }
    var width = Math.max(el.clientWidth - 8, 300), height = Math.max(el.clientHeight - 40, 150);
    var series = [{}], cols = [data.t];
    var hasBand = !!(data.min && data.max);
    series.push({ label: data.label || "value", stroke: "#4ea1ff", width: 1.5,
      value: function (u, v) { return v == null ? "—" : fmt(v) + (data.units ? " " + data.units : ""); } });
    cols.push(data.value);
    var bands = [];
    if (hasBand) {
      series.push({ label: "max", stroke: "rgba(78,161,255,0.35)", width: 1 });
      series.push({ label: "min", stroke: "rgba(78,161,255,0.35)", width: 1 });
      cols.push(data.max, data.min);
      bands.push({ series: [2, 3], fill: "rgba(78,161,255,0.15)" });
    }
    var opts = {
      width: width, height: height, bands: bands,
      series: series,
      scales: { x: { time: true }, y: { range: function (u, lo, hi) {
        // keep the nearest alarm limits in view so their bands show next to the data
        var lim = data.limits || {};
        [lim.alarm_h, lim.alarm_l].forEach(function (v) {
          if (v != null && isFinite(v)) { lo = lo == null ? v : Math.min(lo, v); hi = hi == null ? v : Math.max(hi, v); }
        });
        if (lo == null || hi == null) return [0, 1];
        var pad = (hi - lo) * 0.08 || 1;
        return [lo - pad, hi + pad];
      } } },
      axes: [{ stroke: "#8a98a6", grid: { stroke: "#2b3642" }, ticks: { stroke: "#2b3642" } },
             { stroke: "#8a98a6", grid: { stroke: "#2b3642" }, ticks: { stroke: "#2b3642" }, size: 60 }],
      plugins: [limitBandsPlugin(data.limits || {}, data.marks || [])],
    };
    var u = new window.uPlot(opts, cols, el);
    el.uplot = u;
    el.chartData = data;
    el.setAttribute("data-points", String(data.t.length));
    return u;
  };

  function appendToChart(el, t, v) {
    var d = el.chartData;
    if (!d || (d.min && d.max)) return; // aggregated charts keep their buckets
    if (d.t.length && t <= d.t[d.t.length - 1]) return;
    d.t.push(t); d.value.push(v);
    el.uplot.setData([d.t, d.value]);
    el.setAttribute("data-points", String(d.t.length));
  }

  function loadChart(el) {
    var inline = el.querySelector("script.chart-data");
    if (inline) { Outpost.drawChart(el, JSON.parse(inline.textContent)); return; }
    var url = el.getAttribute("data-chart-url");
    if (!url) return;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status + " " + url); return r.json(); })
      .then(function (data) { Outpost.drawChart(el, data); })
      .catch(function (err) { el.setAttribute("data-error", String(err)); });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      document.querySelectorAll("[data-chart]").forEach(function (el) {
        if (el.uplot) el.uplot.setSize({ width: Math.max(el.clientWidth - 8, 300), height: el.uplot.height });
      });
    }, 150);
  });

  function init() {
    document.querySelectorAll("[data-chart]").forEach(loadChart);
    var live = document.body.getAttribute("data-live-url");
    if (live) Outpost.connectLive(live);
    document.querySelectorAll("select[data-autosubmit]").forEach(function (s) {
      var btn = s.form && s.form.querySelector("button.nojs");
      if (btn) btn.style.display = "none";
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

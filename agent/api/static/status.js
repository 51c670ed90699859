/* The agent's status page: the UI kit's command buttons act on this agent's local API
   (/api/alarms/...) instead of the fleet's command channel, and the kit's "re-read the
   newest values" uses /api/points. Acks of one click go out as one request (multi-select). */
(function () {
  "use strict";
  var O = window.Outpost;
  if (!O) return;
  O.latestUrl = "/api/points";

  function headers() {
    var h = { "Content-Type": "application/json", Accept: "application/json" };
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) h["X-CSRF-Token"] = meta.content;
    return h;
  }

  function detail(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && body.detail) return JSON.stringify(body.detail);
    return String(status);
  }

  function post(url, payload) {
    return fetch(url, { method: "POST", credentials: "same-origin", headers: headers(), body: JSON.stringify(payload) })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (b) { return { ok: r.ok, status: r.status, body: b }; });
      });
  }

  var acks = null;
  function flushAcks() {
    var batch = acks;
    acks = null;
    post("/api/alarms/ack", { ids: batch.ids, note: batch.note || null }).then(function (res) {
      if (!res.ok) {
        batch.keys.forEach(function (k) { O.showCommandStatus(k, "refused: " + detail(res.body, res.status), "refused"); });
        return;
      }
      var gw = batch.keys.length ? batch.keys[0].split("|")[0] : "";
      res.body.acked.forEach(function (a) { O.showCommandStatus(gw + "|" + a.id, "done", "done"); });
      res.body.skipped.forEach(function (s) { O.showCommandStatus(gw + "|" + s.id, "refused: " + s.reason, "refused"); });
    }).catch(function (err) {
      batch.keys.forEach(function (k) { O.showCommandStatus(k, "error: " + err, "refused"); });
    });
  }

  O.sendCommand = function (kind, key, note, duration) {
    var alarm = key.slice(key.indexOf("|") + 1);
    O.showCommandStatus(key, "pending", "pending");
    if (kind === "ack") {
      if (!acks) { acks = { ids: [], keys: [], note: note }; setTimeout(flushAcks, 0); }
      acks.ids.push(alarm);
      acks.keys.push(key);
      return Promise.resolve();
    }
    var body = { reason: note, duration_s: duration === "one_shot" ? null : parseFloat(duration) };
    return post("/api/alarms/" + encodeURIComponent(alarm) + "/" + kind, body).then(function (res) {
      O.showCommandStatus(key, res.ok ? "done" : "refused: " + detail(res.body, res.status), res.ok ? "done" : "refused");
    });
  };
})();

// rekey console: follows a rotation's progress stream and appends its events to the
// timeline until the terminal event. Everything else is server-rendered.
"use strict";
(function () {
  const list = document.getElementById("events");
  if (!list || !list.dataset.stream) { return; }
  const status = document.getElementById("status");
  const live = document.getElementById("live");
  const grace = document.getElementById("grace");
  const steps = document.querySelector("#steps tbody");
  // One row per step, as the server renders them (history::fold_timeline): a new step
  // gets a row, a retried one its attempts counted, each its outcome and time taken from
  // its first start.
  const rows = {};
  document.querySelectorAll("#steps tr[data-step]").forEach(function (row) {
    rows[row.dataset.step] = row;
  });
  function at(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function took(ms) {
    return ms < 1000 ? ms + " ms" : ms < 60000 ? (ms / 1000).toFixed(1) + " s" : (ms / 60000).toFixed(1) + " min";
  }
  function cell(row, text, cls) {
    const td = document.createElement("td");
    if (cls) {
      const b = document.createElement("span");
      b.className = "badge " + cls;
      b.textContent = text;
      td.append(b);
    } else {
      td.textContent = text;
    }
    row.append(td);
    return td;
  }
  function outcome(row, text) {
    const badge = row.children[4].firstChild;
    badge.textContent = text;
    badge.className = "badge " + text;
  }
  function stepRow(kind, e) {
    const name = step(e.step);
    let row = rows[name];
    if (kind === "StepStarted") {
      if (!row) {
        row = document.createElement("tr");
        row.dataset.step = name;
        row.dataset.started = String(Date.now());
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = name;
        row.append(th);
        cell(row, "");
        cell(row, "0");
        cell(row, at(Date.now()));
        cell(row, "running", "running");
        cell(row, "");
        cell(row, "").className = "error-text";
        rows[name] = row;
        steps.append(row);
      }
      row.children[2].textContent = String(e.attempt);
      outcome(row, "running");
      return;
    }
    if (!row) { return; }
    outcome(row, kind === "StepSucceeded" ? "succeeded" : kind === "StepFailed" ? "failed" : "retrying");
    row.children[5].textContent = took(Date.now() - Number(row.dataset.started));
    if (kind === "StepFailed") {
      row.children[6].textContent = "attempt " + e.attempt + ": " + e.class + ": " + (e.message || "");
    }
  }
  let last = Number(list.dataset.lastSeq || "0");
  const phases = {
    GraceScheduled: "grace",
    CompensationStarted: "compensating",
    Completed: "completed",
    Compensated: "compensated",
  };
  const kinds = ["Requested", "StepStarted", "StepSucceeded", "StepFailed", "StepNotApplied",
    "ValueLost", "CompensationStarted", "GraceScheduled", "Completed", "Compensated"];
  const source = new EventSource(list.dataset.stream);
  function step(s) {
    return s ? s.action + "#" + s.target + (s.generation ? "/g" + s.generation : "") : "";
  }
  function detail(kind, e) {
    switch (kind) {
      case "StepStarted": return step(e.step) + ", attempt " + e.attempt;
      case "StepSucceeded": return step(e.step) + (e.reconciled ? " (reconciled)" : "");
      case "StepFailed": return step(e.step) + ", attempt " + e.attempt + ": " + e.class + ": " + (e.message || "");
      case "StepNotApplied": return step(e.step) + " was not applied";
      case "GraceScheduled": return "grace until " + at(e.due_at_ms);
      case "CompensationStarted": return e.reason || "";
      default: return "";
    }
  }
  function show(kind, message) {
    const seq = Number(message.lastEventId);
    if (seq <= last) { return; }
    last = seq;
    let data = {};
    try { data = JSON.parse(message.data); } catch (_) { data = {}; }
    const li = document.createElement("li");
    li.dataset.seq = String(seq);
    const k = document.createElement("span");
    k.className = "kind";
    k.textContent = kind;
    const t = document.createElement("time");
    t.textContent = at(Date.now());
    const d = document.createElement("span");
    d.className = "detail";
    d.textContent = detail(kind, data);
    li.append(k, " ", t, " ", d);
    list.append(li);
    if (kind.startsWith("Step")) { stepRow(kind, data); }
    if (kind === "GraceScheduled") { grace.textContent = at(data.due_at_ms); }
    if (phases[kind]) {
      status.textContent = phases[kind];
      status.className = "badge " + phases[kind];
    }
    if (kind === "Completed" || kind === "Compensated") {
      source.close();
      live.textContent = "This rotation has ended.";
      document.body.dataset.ended = "true";
    }
  }
  kinds.forEach(function (kind) {
    source.addEventListener(kind, function (m) { show(kind, m); });
  });
  source.onerror = function () {
    if (document.body.dataset.ended !== "true") { live.textContent = "Connection lost; retrying…"; }
  };
})();

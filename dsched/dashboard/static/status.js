// dsched dashboard: the /status page (summary, task groups, task stream, workers).
"use strict";

(function () {
  const d = window.dsched;
  const STREAM_WINDOW_S = 10;
  const STREAM_MAX_TASKS = 20000;
  // Bar segments, left to right: [class, label, states counted in it].
  const SEGMENTS = [
    ["memory", "in memory", ["memory"]],
    ["released", "done, released", ["released", "forgotten"]],
    ["erred", "erred", ["erred"]],
    ["processing", "processing", ["processing"]],
    ["queued", "queued", ["queued", "no-worker"]],
    ["waiting", "waiting", ["waiting"]],
  ];

  // Summary cards
  function card(id, label, value, detail, extra) {
    return d.el("div", { class: "card", id: "card-" + id },
      d.el("div", { class: "label", text: label }),
      d.el("div", { class: "value", text: value }),
      detail ? d.el("div", { class: "detail", text: detail }) : null,
      extra || null);
  }

  function renderSummary(status) {
    const tasks = status.tasks || {};
    const states = Object.entries(tasks)
      .filter(([state, n]) => state !== "total" && n > 0)
      .map(([state, n]) => d.el("span", { dataset: { state }, text: state + " " + d.fmtNumber(n) }));
    const throughput = status.throughput || {};
    const scheduler = status.scheduler || {};
    const versions = scheduler.versions || {};
    document.getElementById("summary").replaceChildren(
      card("tasks", "Tasks", d.fmtNumber(tasks.total || 0), null, d.el("div", { class: "states" }, ...states)),
      card("throughput", "Throughput", d.fmtNumber(throughput.tasks_per_s, 1) + " /s",
        d.fmtNumber(throughput.finished) + " finished, " + d.fmtNumber(throughput.erred) + " erred"),
      card("workers", "Workers", d.fmtNumber(status.workers),
        d.fmtNumber(status.threads) + (status.threads === 1 ? " thread, " : " threads, ") +
        d.fmtNumber(status.clients) + (status.clients === 1 ? " client" : " clients")),
      card("memory", "Memory", d.fmtBytes(status.memory), "held by the workers"),
      card("scheduler", "Uptime", d.fmtDuration(scheduler.uptime_s),
        "dsched " + (versions.dsched || "?") + (versions.compiled ? " (compiled)" : "") + ", Python " + (versions.python || "?"))
    );
    document.title = (tasks.processing ? tasks.processing + " processing · " : "") + "Status · dsched";
  }

  // Task groups
  function renderLegend() {
    const legend = document.getElementById("task-groups-legend");
    legend.replaceChildren(...SEGMENTS.map(([cls, label]) =>
      d.el("span", { text: label, style: { "--swatch": "var(--" + cls + ")" } })));
  }

  function groupRow(group) {
    const counts = group.counts || {};
    const total = group.total || 0;
    const bar = d.el("div", { class: "group-bar", dataset: { group: group.name } });
    const tip = [];
    for (const [cls, label, states] of SEGMENTS) {
      const n = states.reduce((sum, state) => sum + (counts[state] || 0), 0);
      if (n > 0) tip.push(label + ": " + d.fmtNumber(n));
      if (n > 0 && total > 0) bar.appendChild(d.el("div", { class: "seg " + cls, style: { width: (100 * n / total) + "%" } }));
    }
    bar.title = group.name + "\n" + tip.join("\n") + "\ntotal: " + d.fmtNumber(total) + ", " + d.fmtBytes(group.nbytes);
    return d.el("div", { class: "group-row" },
      d.el("div", { class: "group-name", title: group.name, text: group.name }),
      bar,
      d.el("div", { class: "group-count", text: d.fmtNumber(Math.round((group.done || 0) * total)) + " / " + d.fmtNumber(total) }));
  }

  function renderGroups(data) {
    const groups = data.groups;
    const box = document.getElementById("task-groups");
    if (groups.length === 0) box.replaceChildren(d.el("div", { class: "empty", text: "No tasks yet." }));
    else box.replaceChildren(...groups.map(groupRow));
    document.getElementById("task-groups-note").textContent = groups.length >= data.limit ? "the newest " + data.limit : "";
  }

  // Task stream: finished tasks of the last few seconds, one row per worker.
  const stream = { tasks: [], lastArrived: null, offset: 0 }; // offset: scheduler clock - browser clock

  function updateStream(data) {
    stream.offset = data.now - Date.now() / 1000;
    for (const task of data.tasks) {
      stream.tasks.push(task);
      if (stream.lastArrived === null || task.arrived > stream.lastArrived) stream.lastArrived = task.arrived;
    }
    const horizon = data.now - STREAM_WINDOW_S;
    stream.tasks = stream.tasks.filter((task) => task.stop > horizon);
    if (stream.tasks.length > STREAM_MAX_TASKS) stream.tasks = stream.tasks.slice(-STREAM_MAX_TASKS);
    drawStream();
  }

  function drawStream() {
    const box = document.getElementById("task-stream");
    const now = Date.now() / 1000 + stream.offset;
    const t0 = now - STREAM_WINDOW_S;
    const workers = Array.from(new Set(stream.tasks.map((task) => task.worker))).sort();
    const width = Math.max(300, box.parentNode.clientWidth);
    const labelWidth = 150;
    const plotWidth = width - labelWidth - 10;
    const rowHeight = workers.length ? Math.max(2, Math.min(18, Math.floor(360 / workers.length))) : 18;
    const height = Math.max(1, workers.length) * rowHeight + 20;
    const x = (t) => labelWidth + Math.max(0, (t - t0) / STREAM_WINDOW_S) * plotWidth;
    box.setAttribute("viewBox", "0 0 " + width + " " + height);
    box.setAttribute("height", height);
    const nodes = [];
    workers.forEach((worker, i) => {
      const y = i * rowHeight;
      if (rowHeight >= 10) nodes.push(d.svg("text", { class: "row-label", x: 0, y: y + rowHeight - 5, text: worker.length > 22 ? "…" + worker.slice(-21) : worker }));
      nodes.push(d.svg("line", { class: "row-line", x1: labelWidth, x2: width - 10, y1: y + rowHeight, y2: y + rowHeight }));
    });
    const rowOf = new Map(workers.map((worker, i) => [worker, i]));
    for (const task of stream.tasks) {
      const left = x(task.start);
      const rect = d.svg("rect", {
        class: "task" + (task.status === "erred" ? " erred" : ""),
        x: left.toFixed(1),
        y: rowOf.get(task.worker) * rowHeight + 1,
        width: Math.max(1, x(task.stop) - left).toFixed(1),
        height: Math.max(1, rowHeight - 2),
        fill: d.colorFor(task.prefix || task.group || ""),
      });
      rect.__task = task;
      nodes.push(rect);
    }
    for (let s = 0; s <= STREAM_WINDOW_S; s += 2) {
      const tx = labelWidth + (s / STREAM_WINDOW_S) * plotWidth;
      nodes.push(d.svg("text", { class: "axis", x: tx, y: height - 4, "text-anchor": s === 0 ? "start" : s === STREAM_WINDOW_S ? "end" : "middle",
        text: s === STREAM_WINDOW_S ? "now" : "-" + (STREAM_WINDOW_S - s) + " s" }));
    }
    if (workers.length === 0) nodes.push(d.svg("text", { class: "axis", x: labelWidth, y: 12, text: "No task finished in the last 10 seconds." }));
    box.replaceChildren(...nodes);
  }

  function streamHover(event) {
    const rect = event.target.closest && event.target.closest("rect.task");
    if (!rect || !rect.__task) {
      d.tooltip.hide();
      return;
    }
    const task = rect.__task;
    d.tooltip.show(event, task.key, [
      (task.status === "erred" ? "erred after " : "took ") + d.fmtDuration(task.stop - task.start),
      "on " + task.worker,
    ]);
  }

  function start() {
    renderLegend();
    const streamBox = document.getElementById("task-stream");
    streamBox.addEventListener("mousemove", streamHover);
    streamBox.addEventListener("mouseleave", () => d.tooltip.hide());
    window.addEventListener("resize", drawStream);
    d.poll(async () => {
      // The first poll takes the last 10 s; later ones only what the scheduler heard of since.
      const since = stream.lastArrived === null ? -STREAM_WINDOW_S : stream.lastArrived;
      const [status, groups, tasks] = await Promise.all([
        d.getJSON("api/status"),
        d.getJSON("api/tasks?limit=100"),
        d.getJSON("api/task-stream?limit=1000&since=" + since),
      ]);
      renderSummary(status);
      renderGroups(groups);
      updateStream(tasks);
    });
    d.startWorkersTable(50);
  }

  start();
})();

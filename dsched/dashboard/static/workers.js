// dsched dashboard: the worker table (#workers-table), on /workers and /status.
"use strict";

(function () {
  const d = window.dsched;

  function memoryBar(worker) {
    const limit = worker.memory_limit;
    const used = worker.memory;
    const fraction = limit ? Math.min(1, used / limit) : 0;
    const fill = d.el("div", {
      class: "fill" + (fraction >= 0.95 ? " full" : fraction >= 0.7 ? " high" : ""),
      style: { width: (fraction * 100).toFixed(1) + "%" },
    });
    const text = limit ? d.fmtBytes(used) + " / " + d.fmtBytes(limit) : d.fmtBytes(used);
    return d.el("div", { class: "membar", title: limit ? d.fmtPercent(used / limit) + " of the limit" : "no limit" },
      fill, d.el("span", { class: "text", text }));
  }

  // [key, heading, cell(worker) -> text or node, class]
  const COLUMNS = [
    ["address", "Worker", (w) => [
      w.address,
      w.name && w.name !== w.address ? d.el("span", { class: "name", text: w.name }) : null,
      w.paused ? d.el("span", { class: "paused", title: "paused: memory is past its pause threshold", text: "paused" }) : null,
    ], "address"],
    ["nthreads", "Threads", (w) => d.fmtNumber(w.nthreads)],
    ["cpu", "CPU", (w) => (w.cpu === null || w.cpu === undefined ? "–" : d.fmtNumber(w.cpu, 0) + "%")],
    ["memory", "Memory", memoryBar, "memory"],
    ["processing", "Processing", (w) => d.fmtNumber(w.processing)],
    ["in_memory", "In memory", (w) => d.fmtNumber(w.in_memory)],
    ["nbytes", "Stored", (w) => d.fmtBytes(w.nbytes)],
    ["spilled", "Spilled", (w) => d.fmtBytes(w.spilled || 0)],
    ["tasks_finished", "Finished", (w) => d.fmtNumber(w.tasks_finished)],
    ["latency_ms", "Latency", (w) => (w.latency_ms === null || w.latency_ms === undefined ? "–" : d.fmtNumber(w.latency_ms, 1) + " ms")],
    ["last_seen_s", "Last seen", (w) => (w.last_seen_s === null || w.last_seen_s === undefined ? "–" : d.fmtDuration(w.last_seen_s) + " ago")],
  ];

  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;
    if (b === null || b === undefined) return -1;
    if (typeof a === "string" || typeof b === "string") return String(a).localeCompare(String(b), "en", { numeric: true });
    return a < b ? -1 : 1;
  }

  // A sortable, filterable table in `table` fed by update(workers).
  function WorkersTable(table, filterInput) {
    this.table = table;
    this.filterInput = filterInput;
    this.sortKey = "address";
    this.ascending = true;
    this.rows = [];
    const headRow = d.el("tr");
    for (const [key, heading] of COLUMNS) {
      headRow.appendChild(d.el("th", { dataset: { key }, text: heading, onclick: () => this.sortBy(key) }));
    }
    table.tHead.replaceChildren(headRow);
    if (filterInput) filterInput.addEventListener("input", () => this.render());
    this.markSorted();
  }

  WorkersTable.prototype.sortBy = function (key) {
    if (this.sortKey === key) this.ascending = !this.ascending;
    else {
      this.sortKey = key;
      this.ascending = key === "address";
    }
    this.markSorted();
    this.render();
  };

  WorkersTable.prototype.markSorted = function () {
    for (const th of this.table.tHead.querySelectorAll("th")) {
      const sorted = th.dataset.key === this.sortKey;
      th.classList.toggle("sorted", sorted);
      th.classList.toggle("asc", sorted && this.ascending);
    }
  };

  WorkersTable.prototype.update = function (workers) {
    this.rows = workers;
    this.render();
  };

  WorkersTable.prototype.render = function () {
    const needle = this.filterInput ? this.filterInput.value.trim().toLowerCase() : "";
    let rows = this.rows;
    if (needle) {
      rows = rows.filter((w) => String(w.address).toLowerCase().includes(needle) || String(w.name || "").toLowerCase().includes(needle));
    }
    const key = this.sortKey;
    const sign = this.ascending ? 1 : -1;
    rows = rows.slice().sort((a, b) => sign * compare(a[key], b[key]) || compare(a.address, b.address));
    const body = d.el("tbody");
    if (rows.length === 0) {
      body.appendChild(d.el("tr", { class: "empty-row" }, d.el("td", { colspan: COLUMNS.length, class: "empty", text: "No workers." })));
    }
    for (const worker of rows) {
      const tr = d.el("tr", { dataset: { address: worker.address } });
      for (const [, , cell, cls] of COLUMNS) {
        const content = cell(worker);
        tr.appendChild(d.el("td", { class: cls || null }, ...(Array.isArray(content) ? content : [content])));
      }
      body.appendChild(tr);
    }
    this.table.tBodies[0].replaceWith(body);
  };

  // Poll api/workers into the page's table; `limit` caps the rows asked for.
  function startWorkersTable(limit) {
    const table = document.getElementById("workers-table");
    const note = document.getElementById("workers-note");
    const view = new WorkersTable(table, document.getElementById("workers-filter"));
    let rows = 0;
    // Thousands of workers: poll less often, so a big table costs the scheduler
    // about what a thousand rows a period would.
    const period = () => d.refreshMs * Math.max(1, Math.ceil(rows / 1000));
    return d.poll(async () => {
      const data = await d.getJSON("api/workers?limit=" + limit);
      rows = data.workers.length;
      view.update(data.workers);
      if (note) {
        const n = data.workers.length;
        note.textContent = n >= data.limit ? "the first " + d.fmtNumber(n) : d.fmtNumber(n) + (n === 1 ? " worker" : " workers");
      }
    }, period);
  }

  d.WorkersTable = WorkersTable;
  d.startWorkersTable = startWorkersTable;

  if (document.body.dataset.page === "workers") startWorkersTable(10000);
})();

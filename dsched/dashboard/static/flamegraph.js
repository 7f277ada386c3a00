// dsched dashboard: flame graphs of sampled profiles (/profile, /profile-server).
// The tree is {name, filename, line, count, children}; the root is drawn at the
// top and each call below its caller, as wide as its share of the samples.
"use strict";

(function () {
  const d = window.dsched;
  const ROW = 18;
  const CHAR_WIDTH = 6.7; // of the 11 px monospace labels
  const MIN_WIDTH = 0.5; // px: narrower frames (and their callees) are not drawn
  const MAX_FRAMES = 20000;
  const CHAIN_KEPT = 2; // frames of a chain drawn above its first branch (run_forever, _run_once)
  const CHAIN_MIN_FOLD = 3; // fold no fewer frames than this

  function frameId(node) {
    return node.filename + ":" + node.line + ":" + node.name;
  }

  function label(node, width) {
    const fits = Math.floor((width - 6) / CHAR_WIDTH);
    if (fits < 3) return "";
    return node.name.length <= fits ? node.name : node.name.slice(0, fits - 1) + "…";
  }

  // A flame graph in `container`: show(tree) draws (keeping the zoom when the
  // zoomed frame is still there); clicking a frame zooms into it, clicking the
  // root or a greyed caller zooms back out, clicking a folded chain unfolds it.
  function FlameGraph(container, onZoom) {
    this.container = container;
    this.onZoom = onZoom || (() => {});
    this.tree = null;
    this.zoomIds = []; // frame ids from the root's child down to the zoomed frame
    this.chainsOpen = false; // whether chains of single callees are drawn frame by frame
    this.frames = [];
    this.svg = d.svg("svg", { class: "flame", role: "img", "aria-label": "Flame graph" });
    container.replaceChildren(this.svg);
    this.svg.addEventListener("mousemove", (event) => this.hover(event));
    this.svg.addEventListener("mouseleave", () => d.tooltip.hide());
    this.svg.addEventListener("click", (event) => this.click(event));
    window.addEventListener("resize", () => this.draw());
  }

  FlameGraph.prototype.show = function (tree) {
    this.tree = tree;
    // A zoomed frame that is gone from the new tree zooms out for good, rather
    // than coming back whenever it reappears.
    this.zoomIds = this.zoomIds.slice(0, this.zoomPath().length - 1);
    this.draw();
  };

  // The nodes from the root to the zoomed frame (as far as they still exist).
  FlameGraph.prototype.zoomPath = function () {
    const path = [this.tree];
    for (const id of this.zoomIds) {
      const next = (path[path.length - 1].children || []).find((child) => frameId(child) === id);
      if (!next) break;
      path.push(next);
    }
    return path;
  };

  // A chain: frames that each have one callee, with all their samples (the
  // interpreter's, the command line's and the event loop's entry points: some
  // twenty rows above a scheduler's or a worker's loop).  All but the last
  // CHAIN_KEPT of a chain starting at `node` are folded into one bar, until a
  // folded bar is clicked (which unfolds every chain; clicking one of their
  // frames folds them again).
  function foldableChain(node) {
    const chain = [node];
    for (let n = node; n.children && n.children.length === 1 && n.children[0].count === n.count;) {
      n = n.children[0];
      chain.push(n);
    }
    return chain.length >= CHAIN_KEPT + CHAIN_MIN_FOLD ? chain.slice(0, chain.length - CHAIN_KEPT) : [];
  }

  function foldedBar(chain) {
    const names = chain.map((n) => n.name).join(" › ");
    return { name: chain.length + " frames: " + names, filename: "", line: 0, count: chain[0].count };
  }

  FlameGraph.prototype.layout = function (width) {
    const frames = [];
    const path = this.zoomPath();
    const open = this.chainsOpen;
    const trunk = this.tree.count && this.tree.children && this.tree.children.length === 1
      && this.tree.children[0].count === this.tree.count ? foldableChain(this.tree.children[0]) : [];
    const folded = open ? [] : trunk;
    // A zoom that ends inside the folded trunk shows what a zoom to its end would.
    if (folded.length && path.length <= folded.length) path.push(...folded.slice(path.length - 1));
    let depth = 0;
    path.forEach((node, index) => {
      const fold = folded.indexOf(node);
      if (fold > 0) return; // drawn as part of the bar
      const frame = { node, depth, x: 0, w: width, parent: depth - 1, ancestor: index < path.length - 1 };
      if (fold === 0) Object.assign(frame, { node: foldedBar(folded), folded });
      else if (open && trunk.includes(node)) frame.foldable = true;
      frames.push(frame);
      depth += 1;
    });
    const focus = path[path.length - 1];
    const scale = focus.count > 0 ? width / focus.count : 0;
    const walk = (node, parent, depth, x, foldable) => {
      let left = x;
      for (const child of node.children || []) {
        const w = child.count * scale;
        if (w >= MIN_WIDTH && frames.length < MAX_FRAMES) {
          const chain = foldable.includes(child) ? [] : foldableChain(child);
          if (chain.length && !open) {
            frames.push({ node: foldedBar(chain), folded: chain, depth, x: left, w, parent, ancestor: false });
            walk(chain[chain.length - 1], frames.length - 1, depth + 1, left, []);
          } else {
            frames.push({ node: child, depth, x: left, w, parent, ancestor: false, foldable: open && (chain.length > 0 || foldable.includes(child)) });
            walk(child, frames.length - 1, depth + 1, left, chain.length ? chain.slice(1) : foldable);
          }
        }
        left += w;
      }
    };
    walk(focus, frames.length - 1, depth, 0, []);
    return frames;
  };

  FlameGraph.prototype.draw = function () {
    if (!this.tree) return;
    const width = Math.max(300, this.container.clientWidth);
    const frames = this.layout(width);
    this.frames = frames;
    const depth = frames.reduce((max, frame) => Math.max(max, frame.depth), 0) + 1;
    const height = depth * ROW;
    this.svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    this.svg.setAttribute("height", height);
    const nodes = frames.map((frame, index) => {
      const node = frame.node;
      const isRoot = index === 0;
      const fill = isRoot || frame.folded ? "#cbd5e1" : d.colorFor(node.filename || node.name, 55, 72);
      return d.svg("g", {
        class: "frame" + (frame.ancestor ? " ancestor" : "") + (isRoot ? " root" : "") + (frame.folded ? " folded" : ""),
        dataset: { index, depth: frame.depth },
        transform: "translate(" + frame.x.toFixed(2) + "," + frame.depth * ROW + ")",
      },
        d.svg("rect", { class: "frame", width: Math.max(0.5, frame.w).toFixed(2), height: ROW - 1, fill, rx: 1.5 }),
        frame.w > 3 * CHAR_WIDTH ? d.svg("text", { x: 4, y: ROW - 5, text: isRoot ? rootLabel(this.tree) : label(node, frame.w) }) : null,
        frame.folded ? d.svg("title", { text: node.name }) : null);
    });
    this.svg.replaceChildren(...nodes);
  };

  function rootLabel(tree) {
    return "all (" + d.fmtNumber(tree.count) + " samples)";
  }

  FlameGraph.prototype.frameAt = function (event) {
    const g = event.target.closest && event.target.closest("g.frame");
    return g ? this.frames[Number(g.dataset.index)] : null;
  };

  FlameGraph.prototype.hover = function (event) {
    const frame = this.frameAt(event);
    if (!frame) {
      d.tooltip.hide();
      return;
    }
    const node = frame.node;
    const total = this.tree.count;
    if (frame.folded) {
      const lines = frame.folded.map((n) => n.name + (n.filename ? "  " + n.filename + ":" + n.line : ""));
      d.tooltip.show(event, frame.folded.length + " frames, each the only callee of the one above", [...lines, "click to unfold"]);
      return;
    }
    const lines = [];
    if (node.filename) lines.push(node.filename + ":" + node.line);
    lines.push(d.fmtNumber(node.count) + " samples, " + d.fmtPercent(total ? node.count / total : 0, 2) + " of all");
    const zoomed = this.zoomIds.length > 0 ? this.zoomPath().slice(-1)[0] : null;
    if (zoomed && zoomed.count && !frame.ancestor) lines.push(d.fmtPercent(node.count / zoomed.count, 2) + " of the zoomed frame");
    if (frame.foldable) lines.push("click to fold the chains of single callees again");
    else if (frame.ancestor) lines.push("click to zoom out to here");
    else if (frame.node !== zoomed && frame.parent !== -1) lines.push("click to zoom in");
    d.tooltip.show(event, node.name, lines);
  };

  FlameGraph.prototype.click = function (event) {
    const frame = this.frameAt(event);
    if (!frame) return;
    d.tooltip.hide(); // it described the frame clicked, which has moved
    if (frame.folded || frame.foldable) {
      // A chain's frames all have the same samples: zooming into one would show
      // little, so a click folds or unfolds the chains instead.
      this.chainsOpen = !frame.folded;
      this.draw();
      return;
    }
    const ids = [];
    for (let f = frame; f.parent !== -1; f = this.frames[f.parent]) {
      ids.unshift(...(f.folded ? f.folded.map(frameId) : [frameId(f.node)]));
    }
    this.zoomIds = ids;
    this.draw();
    this.onZoom(this.zoomPath());
  };

  // The page: controls, polling, downloads.
  function start() {
    const page = document.body.dataset.page;
    const api = page === "profile" ? "api/profile" : "api/profile-server";
    const info = document.getElementById("profile-info");
    const windowSelect = document.getElementById("window");
    const workerSelect = document.getElementById("worker");
    const prefixInput = document.getElementById("prefix");
    const live = document.getElementById("live");
    let lastTree = null;

    function query() {
      const params = new URLSearchParams();
      if (windowSelect.value !== "all") params.set("start", "-" + windowSelect.value);
      if (workerSelect && workerSelect.value) params.append("worker", workerSelect.value);
      if (prefixInput && prefixInput.value.trim()) params.set("prefix", prefixInput.value.trim());
      return params;
    }

    function url(format) {
      const params = query();
      if (format) params.set("format", format);
      const qs = params.toString();
      return api + (qs ? "?" + qs : "");
    }

    function describe(path) {
      if (!lastTree) return;
      const parts = [d.fmtNumber(lastTree.count) + " samples"];
      if (lastTree.missing && lastTree.missing.length) parts.push("no answer from " + lastTree.missing.join(", "));
      if (path && path.length > 1) parts.push("zoomed into " + path[path.length - 1].name + " (click the top bar to zoom out)");
      else if (lastTree.count > 0) parts.push("click a frame to zoom in");
      info.textContent = parts.join(" · ");
    }

    const graph = new FlameGraph(document.getElementById("flamegraph"), describe);

    function updateDownloads() {
      document.getElementById("download-speedscope").href = d.withToken(url("speedscope"));
      document.getElementById("download-collapsed").href = d.withToken(url("collapsed"));
    }

    let polls = 0;
    async function refreshFilters() {
      if (!workerSelect) return;
      const [workers, groups] = await Promise.all([d.getJSON("api/workers?limit=1000"), d.getJSON("api/tasks?limit=100")]);
      const chosen = workerSelect.value;
      const addresses = workers.workers.map((w) => w.address).sort();
      if (chosen && !addresses.includes(chosen)) addresses.unshift(chosen);
      workerSelect.replaceChildren(d.el("option", { value: "", text: "all workers" }),
        ...addresses.map((a) => d.el("option", { value: a, text: a, selected: a === chosen })));
      const prefixes = Array.from(new Set(groups.groups.map((g) => g.prefix))).sort();
      document.getElementById("prefixes").replaceChildren(...prefixes.map((p) => d.el("option", { value: p })));
    }

    const poller = d.poll(async () => {
      if (polls++ % 10 === 0) await refreshFilters();
      if (!live.checked && lastTree) return;
      lastTree = await d.getJSON(url(null));
      if (lastTree.count === 0) {
        graph.show(lastTree);
        info.textContent = "No samples in this window." + (lastTree.missing && lastTree.missing.length ? " No answer from " + lastTree.missing.join(", ") + "." : "");
      } else {
        graph.show(lastTree);
        describe(graph.zoomPath());
      }
    }, Math.max(d.refreshMs, 1000));

    const changed = () => {
      updateDownloads();
      lastTree = null;
      poller.refresh();
    };
    for (const control of [windowSelect, workerSelect, prefixInput]) if (control) control.addEventListener("change", changed);
    live.addEventListener("change", () => live.checked && poller.refresh());
    updateDownloads();

    for (const button of document.querySelectorAll("button[data-kind]")) button.addEventListener("click", () => capture(button));
  }

  async function capture(button) {
    const info = document.getElementById("capture-info");
    const seconds = Number(document.getElementById("capture-seconds").value) || 5;
    const buttons = document.querySelectorAll("button[data-kind]");
    buttons.forEach((b) => (b.disabled = true));
    info.textContent = "tracing the scheduler for " + seconds + " s…";
    try {
      const size = await d.postDownload("api/capture?kind=" + button.dataset.kind + "&seconds=" + seconds, "scheduler-capture");
      info.textContent = "saved " + d.fmtBytes(size);
    } catch (err) {
      info.textContent = "capture failed: " + err.message;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  d.FlameGraph = FlameGraph;
  start();
})();

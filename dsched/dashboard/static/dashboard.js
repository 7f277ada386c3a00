// dsched dashboard: helpers shared by every page (window.dsched).
// Text from the scheduler (task keys, names) is only ever set as textContent or
// an attribute value, never parsed as HTML.
"use strict";

(function () {
  const refreshMs = Math.max(50, Number(document.body.dataset.refreshMs) || 1000);
  // A ?token= in the page's address: the server also set a cookie from it, but
  // sending it as a header keeps the fetches working where cookies are blocked.
  const token = new URLSearchParams(window.location.search).get("token");

  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  function headers(extra) {
    const result = Object.assign({ Accept: "application/json" }, extra || {});
    if (token) result.Authorization = "Bearer " + token;
    return result;
  }

  async function failure(response) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (_) {
      // not JSON: keep the status line
    }
    return new Error(message);
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: headers(), credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  // POST `body` as JSON and return the JSON answer.
  async function postJSON(url, body) {
    const init = { method: "POST", headers: headers({ "Content-Type": "application/json" }), credentials: "same-origin" };
    const response = await fetch(url, Object.assign(init, { body: JSON.stringify(body) }));
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  // POST and save the answer as a file named by the server's Content-Disposition.
  async function postDownload(url, fallbackName) {
    const response = await fetch(url, { method: "POST", headers: headers(), credentials: "same-origin" });
    if (!response.ok) throw await failure(response);
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const blob = await response.blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: match ? match[1] : fallbackName });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    return blob.size;
  }

  // Run `step` now and then `ms` (a number, or a function giving one) after each
  // run settles, never two at once; nothing runs while the tab is hidden.
  // Returns {refresh(), stop()}.
  function poll(step, ms) {
    let timer = null;
    let running = false;
    let again = false;
    let stopped = false;
    async function tick() {
      clearTimeout(timer);
      if (stopped) return;
      if (running) {
        again = true;
        return;
      }
      running = true;
      if (!document.hidden) {
        try {
          await step();
          setConnection(null);
        } catch (err) {
          setConnection(err);
        }
      }
      running = false;
      if (again) {
        again = false;
        tick();
      } else if (!stopped) {
        timer = setTimeout(tick, (typeof ms === "function" ? ms() : ms) || refreshMs);
      }
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    tick();
    return {
      refresh: tick,
      stop() {
        stopped = true;
        clearTimeout(timer);
      },
    };
  }

  function setConnection(err) {
    const badge = document.getElementById("connection");
    if (!badge) return;
    badge.className = err ? "connection" : "connection ok";
    badge.textContent = err ? "update failed: " + err.message : "live";
  }

  // DOM building.  attrs: class, text, style (CSS property names, custom
  // properties too), dataset (object),
  // on<event> (listener); anything else is an attribute.
  function build(node, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "style") for (const [property, v] of Object.entries(value)) node.style.setProperty(property, v);
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  function svg(tag, attrs, ...children) {
    return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
  }

  // Formatting
  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let v = Math.abs(n);
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (n < 0 ? "-" : "") + (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.abs(seconds);
    if (s < 1e-3) return (seconds * 1e6).toFixed(0) + " µs";
    if (s < 1) return (seconds * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
    if (s < 60) return seconds.toFixed(2) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.round((s % 86400) / 3600) + " h";
  }

  function fmtNumber(n, digits) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }

  function fmtPercent(fraction, digits) {
    if (fraction === null || fraction === undefined || !isFinite(fraction)) return "–";
    return (fraction * 100).toFixed(digits === undefined ? 1 : digits) + "%";
  }

  // A stable colour per name (task prefix, function file): a hash picks the hue.
  const colours = new Map();
  function colorFor(name, saturation, lightness) {
    const cacheKey = name + "|" + saturation + "|" + lightness;
    let colour = colours.get(cacheKey);
    if (colour === undefined) {
      let hash = 2166136261;
      for (let i = 0; i < name.length; i++) {
        hash ^= name.charCodeAt(i);
        hash = Math.imul(hash, 16777619);
      }
      const hue = (hash >>> 0) % 360;
      colour = "hsl(" + hue + ", " + (saturation || 65) + "%, " + (lightness || 62) + "%)";
      if (colours.size > 5000) colours.clear();
      colours.set(cacheKey, colour);
    }
    return colour;
  }

  // One tooltip for the page: show(event, title, lines) / hide().
  const tooltip = {
    show(event, title, lines) {
      const box = document.getElementById("tooltip");
      if (!box) return;
      box.replaceChildren(
        el("div", { class: "tt-title", text: title }),
        ...(lines || []).map((line) => el("div", { class: "tt-line", text: line }))
      );
      box.hidden = false;
      const pad = 14;
      const width = box.offsetWidth;
      const height = box.offsetHeight;
      let x = event.clientX + pad;
      let y = event.clientY + pad;
      if (x + width > window.innerWidth) x = Math.max(0, event.clientX - width - pad);
      if (y + height > window.innerHeight) y = Math.max(0, event.clientY - height - pad);
      box.style.left = x + "px";
      box.style.top = y + "px";
    },
    hide() {
      const box = document.getElementById("tooltip");
      if (box) box.hidden = true;
    },
  };

  window.dsched = {
    refreshMs,
    token,
    withToken,
    getJSON,
    postDownload,
    postJSON,
    poll,
    el,
    svg,
    fmtBytes,
    fmtDuration,
    fmtNumber,
    fmtPercent,
    colorFor,
    tooltip,
  };
})();

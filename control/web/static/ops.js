// nearcast operations view: read-only calls to the control API with an operator token (kept for this tab
// only, in sessionStorage).  Appliances, fill progress, misses, recent steering, and per title the measured
// (bitrate, PSNR) points with the chosen ladder drawn as inline SVG.
"use strict";

const ops = { state: "idle", appliances: 0, titles: 0, charts: 0, errors: [] };
window.nearcastOps = ops;
const SVG = "http://www.w3.org/2000/svg";
const HEIGHT_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"];

function status(text) { document.getElementById("status").textContent = text; }

async function api(path) {
  const token = sessionStorage.getItem("nearcast-token") || "";
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  const body = await resp.json();
  if (!resp.ok) throw new Error(`${path}: ${body.error || resp.status}`);
  return body;
}

function table(id, head, rows) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const tr = t.insertRow();
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.append(th); }
  for (const row of rows) {
    const r = t.insertRow();
    for (const cell of row) r.insertCell().textContent = cell === null || cell === undefined ? "-" : String(cell);
  }
  if (!rows.length) t.insertRow().insertCell().textContent = "nothing yet";
}

const gib = (n) => (n ? `${(n / 2 ** 30).toFixed(1)} GiB` : "-");
const ago = (ts) => (ts ? `${Math.max(0, Math.round(Date.now() / 1000 - ts))} s ago` : "-");

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Bitrate (log scale) against quality: every trial point, coloured by height, and the ladder's rungs.
function ladderChart(doc) {
  const W = 520, H = 260, L = 48, R = 12, T = 12, B = 36;
  const points = (doc.ladder.points || []).filter((p) => p.quality > 0);
  const rungs = doc.ladder.rungs || [];
  const rates = [...points.map((p) => p.bitrate), ...rungs.map((r) => r.bitrate)].filter((b) => b > 0);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                          "aria-label": `ladder of ${doc.title_id}` });
  if (!rates.length) { svg.append(el("text", { x: 10, y: 20, fill: "#999" }, "no ladder recorded")); return svg; }
  const lo = Math.log10(Math.min(...rates) * 0.8), hi = Math.log10(Math.max(...rates) * 1.25);
  const quals = points.map((p) => p.quality);
  const qlo = quals.length ? Math.floor(Math.min(...quals) - 1) : 0, qhi = quals.length ? Math.ceil(Math.max(...quals) + 1) : 1;
  const x = (b) => L + ((Math.log10(b) - lo) / (hi - lo)) * (W - L - R);
  const y = (q) => T + (1 - (q - qlo) / (qhi - qlo || 1)) * (H - T - B);
  svg.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#666" }),
             el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#666" }),
             el("text", { x: W / 2, y: H - 6, fill: "#aaa", "font-size": 11, "text-anchor": "middle" },
                "bitrate (kbps, log scale)"),
             el("text", { x: 12, y: H / 2, fill: "#aaa", "font-size": 11, transform: `rotate(-90 12 ${H / 2})`,
                          "text-anchor": "middle" }, quals.length ? "PSNR-Y (dB)" : ""));
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of [1, 2, 5]) {
      const b = m * 10 ** e;
      if (Math.log10(b) < lo || Math.log10(b) > hi) continue;
      svg.append(el("text", { x: x(b), y: H - B + 14, fill: "#888", "font-size": 10, "text-anchor": "middle" },
                    String(Math.round(b / 1000))));
    }
  }
  if (quals.length) {
    for (const q of [qlo, (qlo + qhi) / 2, qhi]) {
      svg.append(el("text", { x: L - 6, y: y(q) + 3, fill: "#888", "font-size": 10, "text-anchor": "end" }, q.toFixed(0)));
    }
  }
  const heights = [...new Set(points.map((p) => p.height))].sort((a, b) => a - b);
  for (const p of points) {
    const colour = HEIGHT_COLOURS[heights.indexOf(p.height) % HEIGHT_COLOURS.length];
    svg.append(el("circle", { cx: x(p.bitrate), cy: y(p.quality), r: 3, fill: colour, opacity: 0.8 },
                  undefined));
  }
  // Rungs: on their measured point when there is one, else as ticks along the axis (fixed ladders).
  const rungPts = rungs.map((r) => {
    const hit = points.find((p) => p.height === r.height && p.codec === r.codec && Math.abs(p.bitrate - r.bitrate) < 1);
    return { r, q: hit ? hit.quality : null };
  });
  const measured = rungPts.filter((p) => p.q !== null);
  if (measured.length > 1) {
    svg.append(el("polyline", { points: measured.map((p) => `${x(p.r.bitrate)},${y(p.q)}`).join(" "),
                                fill: "none", stroke: "#e50914", "stroke-width": 2 }));
  }
  for (const p of rungPts) {
    const cy = p.q !== null ? y(p.q) : H - B - 8;
    svg.append(el("rect", { x: x(p.r.bitrate) - 5, y: cy - 5, width: 10, height: 10, fill: "none", stroke: "#e50914",
                            "stroke-width": 2, class: "rung" }),
               el("text", { x: x(p.r.bitrate) + 7, y: cy - 7, fill: "#ddd", "font-size": 10 },
                  `${p.r.codec} ${p.r.height}p`));
  }
  heights.forEach((h, i) => svg.append(
    el("text", { x: W - R - 4, y: T + 12 + 12 * i, fill: HEIGHT_COLOURS[i % HEIGHT_COLOURS.length], "font-size": 10,
                 "text-anchor": "end" }, `${h}p trials`)));
  return svg;
}

async function load() {
  ops.state = "loading"; ops.errors = [];
  status("loading…");
  try {
    const [apps, fill, misses, steering, titles] = await Promise.all([
      api("/v1/appliances"), api("/v1/fill/status"), api("/v1/telemetry/misses?hours=1"), api("/v1/steer/recent"),
      api("/v1/titles")]);
    const fillBy = Object.fromEntries(fill.appliances.map((f) => [f.appliance_id, f]));
    table("appliances", ["appliance", "state", "site", "ISP", "load", "disk", "planned", "fill", "titles held", "seen"],
          apps.appliances.map((a) => {
            const f = fillBy[a.id] || {};
            const meta = a.meta || {};
            return [a.id, a.state, meta.site, meta.isp || meta.asn, a.load === null ? null : a.load.toFixed(2),
                    gib(meta.disk_bytes), gib(f.bytes_planned),
                    f.ack ? `${f.ack}${f.progress !== null && f.progress !== undefined ? ` ${Math.round(f.progress * 100)}%` : ""}` : null,
                    (a.titles_complete || []).length, a.last_seen_s_ago === null ? null : `${a.last_seen_s_ago} s ago`];
          }));
    ops.appliances = apps.appliances.length;
    table("misses", ["site", "cause", "misses"],
          Object.entries(misses.sites).flatMap(([site, causes]) =>
            Object.entries(causes).map(([cause, n]) => [site, cause, Math.round(n)])));
    table("steering", ["when", "client", "title", "answer", "why"],
          steering.decisions.slice(0, 20).map((d) => [ago(d.ts), d.client_prefix, d.title_id, d.ranked.join(" > "),
                                                      d.reason]));
    const box = document.getElementById("ladders");
    box.replaceChildren();
    ops.titles = titles.titles.length; ops.charts = 0;
    for (const t of titles.titles) {
      const fig = document.createElement("figure");
      const cap = document.createElement("figcaption");
      cap.textContent = `${t.name} (${t.title_id})`;
      fig.append(cap);
      try {
        const doc = await api(`/v1/titles/${encodeURIComponent(t.title_id)}/ladder`);
        cap.textContent += ` — ${doc.ladder.mode || "?"} ladder, ${(doc.ladder.rungs || []).length} rungs, ` +
                           `${(doc.ladder.points || []).length} measured points`;
        fig.append(ladderChart(doc));
        ops.charts += 1;
      } catch (e) { cap.textContent += ` — ${e.message}`; }
      box.append(fig);
    }
    status(`${ops.appliances} appliances, ${ops.titles} titles; updated ${new Date().toLocaleTimeString()}`);
    ops.state = "ready";
  } catch (e) {
    ops.state = "error"; ops.errors.push(e.message); status(e.message);
  }
}

document.getElementById("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("nearcast-token", document.getElementById("token").value.trim());
  load();
});
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) { sessionStorage.setItem("nearcast-token", fromHash); history.replaceState(null, "", location.pathname); }
if (sessionStorage.getItem("nearcast-token")) { load(); setInterval(load, 15000); }

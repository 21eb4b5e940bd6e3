// nearcast homepage: rows for a profile from the steered edge's re-ranker (/v1/home/{profile}), with the
// artwork variant the edge's bandit chose; every tile shown is logged as an impression with its propensity.
"use strict";

const params = new URLSearchParams(location.search);
const profile = params.get("profile") || localStorage.getItem("nearcast-profile") || "demo-viewer";
const viewer = params.get("as") || "";
const home = { state: "loading", source: null, edge: null, model_version: null, rows: 0, tiles: 0, imagesLoaded: 0,
               errors: [] };
window.nearcastHome = home;

function status(text) { document.getElementById("status").textContent = text; }

async function fetchJson(url, timeoutMs) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const resp = await fetch(url, { signal: ctrl.signal });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
    return body;
  } finally { clearTimeout(timer); }
}

// The steered edges first (they re-rank and pick artwork); the control plane's candidates as a last resort.
async function loadRows() {
  const asQuery = viewer ? `?as=${encodeURIComponent(viewer)}` : "";
  let edges = [];
  try { edges = (await fetchJson(`/v1/edges${asQuery}`, 3000)).edges; } catch (e) { home.errors.push(`edges: ${e.message}`); }
  for (const edge of edges) {
    try {
      const page = await fetchJson(`${edge.url}/v1/home/${encodeURIComponent(profile)}?device=web`, 3000);
      home.edge = edge.appliance_id;
      return page;
    } catch (e) { home.errors.push(`${edge.appliance_id}: ${e.message}`); }
  }
  const page = await fetchJson(`/v1/profiles/${encodeURIComponent(profile)}/home`, 5000);
  page.source = "control-direct";
  return page;
}

function tile(row, item, position) {
  const a = document.createElement("a");
  a.className = "tile";
  const q = new URLSearchParams({ title: item.title_id, profile });
  if (viewer) q.set("as", viewer);
  if (item.impression_id) q.set("impression", item.impression_id);
  a.href = `player.html?${q}`;
  a.dataset.title = item.title_id;
  const img = document.createElement("img");
  img.alt = item.name || item.title_id;
  img.loading = "lazy";
  if (item.artwork) {
    img.src = `/v1/artwork/${encodeURIComponent(item.title_id)}/${encodeURIComponent(item.artwork)}.jpg`;
    img.addEventListener("load", () => { home.imagesLoaded += 1; });
  }
  const name = document.createElement("span");
  name.textContent = item.name || item.title_id;
  a.append(img, name);
  return a;
}

async function main() {
  document.getElementById("profile").value = profile;
  document.getElementById("as").value = viewer;
  localStorage.setItem("nearcast-profile", profile);
  let page;
  try { page = await loadRows(); } catch (e) {
    home.state = "error"; status(`no rows: ${e.message}`); return;
  }
  home.source = page.source;
  home.model_version = page.model_version || null;
  const container = document.getElementById("rows");
  const impressions = [];
  for (const row of page.rows) {
    if (!row.items.length) continue;
    const section = document.createElement("section");
    section.className = "row";
    section.dataset.row = row.id;
    const h2 = document.createElement("h2");
    h2.textContent = row.title;
    const tiles = document.createElement("div");
    tiles.className = "tiles";
    row.items.forEach((item, i) => {
      tiles.append(tile(row, item, i));
      home.tiles += 1;
      if (item.impression_id) {
        const ev = { type: "impression", profile_id: profile, title_id: item.title_id, row: row.id, position: i,
                     propensity: item.propensity || 1, impression_id: item.impression_id };
        if (item.artwork) ev.artwork = item.artwork;
        impressions.push(ev);
      }
    });
    section.append(h2, tiles);
    container.append(section);
    home.rows += 1;
  }
  const via = home.edge ? `edge ${home.edge}` : "the control plane";
  status(`${profile}: ${home.rows} rows from ${via} (${page.source}${page.model_version ? `, model ${page.model_version}` : ""})`);
  await nearcastSend(impressions, false);
  home.state = "ready";
}

main();

// nearcast player: plays a title from the steered edges with Shaka Player.
// Sources come from the control plane (/v1/play/{title}) or, for tests, from ?src= URLs.
// On a fatal error it fails over to the next source.  Viewing events (play start, progress, complete)
// and QoE (startup time, stalls, bitrate switches) go to /v1/events (events.js).
"use strict";

const params = new URLSearchParams(location.search);
const state = { state: "loading", sourceIndex: -1, source: null, startupMs: null, stalls: 0, stallMs: 0,
                switches: 0, errors: [], failovers: 0, height: 0, bandwidth: 0 };
window.nearcastState = state;

function show(id, value) { const el = document.getElementById(id); if (el) el.textContent = value; }
function setState(s) { state.state = s; show("state", s); }

async function steeredSources() {
  const explicit = params.getAll("src");
  if (explicit.length) return explicit.map((u) => ({ hls: u.endsWith(".m3u8") ? u : null,
                                                     dash: u.endsWith(".mpd") ? u : null }));
  const title = params.get("title");
  if (!title) throw new Error("no title given");
  const query = params.get("as") ? `?as=${encodeURIComponent(params.get("as"))}` : "";
  const resp = await fetch(`/v1/play/${encodeURIComponent(title)}${query}`);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || `play request failed (${resp.status})`);
  show("title-name", body.name || title);
  state.license = body.license_url || null;
  return body.sources;
}

function viewing(type, extra, leaving) {
  const title = params.get("title");
  if (!title || params.getAll("src").length) return;  // test sources: no title to report on
  nearcastSend([{ type, title_id: title, profile_id: params.get("profile") || "anonymous", ...extra }], leaving);
}

function qoe(leaving) {
  if (state.startupMs === null) return;
  viewing("qoe", { startup_ms: state.startupMs, stalls: state.stalls, stall_ms: Math.round(state.stallMs),
                   switches: state.switches, bitrate_kbps: Math.round(state.bandwidth / 1000) }, leaving);
}

async function main() {
  shaka.polyfill.installAll();
  if (!shaka.Player.isBrowserSupported()) { setState("unsupported browser"); return; }
  const video = document.getElementById("video");
  const player = new shaka.Player();
  await player.attach(video);
  let sources;
  try { sources = await steeredSources(); } catch (e) { setState("error"); show("error", e.message); return; }
  if (state.license) {
    player.configure({ drm: { servers: { "org.w3.clearkey": state.license } } });
    // The MPD names a license path of its own; the play answer's URL carries this viewer's token.
    player.getNetworkingEngine().registerRequestFilter((type, request) => {
      if (type === shaka.net.NetworkingEngine.RequestType.LICENSE) request.uris = [state.license];
    });
  }
  player.configure({ streaming: { retryParameters: { maxAttempts: 2, timeout: 4000 } } });

  const loadStarted = performance.now();
  let stallStarted = null;
  let lastVariant = null;

  player.addEventListener("buffering", (ev) => {
    if (state.startupMs === null) return;  // start-up buffering is counted as startup time
    if (ev.buffering) { stallStarted = performance.now(); state.stalls += 1; show("stalls", state.stalls); }
    else if (stallStarted !== null) { state.stallMs += performance.now() - stallStarted; stallStarted = null; }
  });
  player.addEventListener("adaptation", () => {
    const v = player.getVariantTracks().find((t) => t.active);
    if (v && lastVariant !== null && v.id !== lastVariant) { state.switches += 1; show("switches", state.switches); }
    if (v) { lastVariant = v.id; state.height = v.height; state.bandwidth = v.bandwidth; show("resolution", `${v.width}x${v.height} @ ${Math.round(v.bandwidth / 1000)} kbps`); }
  });
  video.addEventListener("playing", () => {
    if (state.startupMs === null) {
      state.startupMs = Math.round(performance.now() - loadStarted);
      show("startup", `${state.startupMs} ms`);
      const start = { position_s: video.currentTime || 0 };
      if (params.get("impression")) start.impression_id = params.get("impression");
      viewing("play_start", start);
      qoe(false);
    }
    setState("playing");
  });
  const progress = (leaving) => {
    if (state.startupMs !== null && Number.isFinite(video.duration) && video.duration > 0) {
      viewing("progress", { position_s: Math.min(video.currentTime, video.duration), duration_s: video.duration },
              leaving);
    }
  };
  video.addEventListener("ended", () => { setState("ended"); viewing("complete", {}); qoe(false); });
  setInterval(() => { if (state.state === "playing") progress(false); }, 10000);
  addEventListener("pagehide", () => { if (state.state !== "ended") { progress(true); qoe(true); } });

  async function loadFrom(first) {
    for (let i = first; i < sources.length; i++) {
      const src = sources[i];
      // DASH where the browser's MediaSource can play it, HLS otherwise; Shaka drops variants whose
      // codecs the browser cannot decode (HEVC in Chromium), so the ladder adapts to the browser.
      const url = src.dash || src.hls;
      if (!url) continue;
      if (i > 0) state.failovers += 1;
      state.sourceIndex = i; state.source = url; show("source", `${i + 1} of ${sources.length}`);
      try {
        await player.load(url, video.currentTime || null);
        return;
      } catch (e) {
        state.errors.push(`${url}: ${e.code || e.message}`);
      }
    }
    setState("error");
    show("error", "no source could play this title: " + state.errors.join("; "));
  }

  // A fatal error while playing (the edge died): resume from the same position on the next source.
  player.addEventListener("error", (ev) => {
    const err = ev.detail;
    state.errors.push(String(err && err.code));
    if (err && err.severity === shaka.util.Error.Severity.CRITICAL && state.state !== "error") {
      loadFrom(state.sourceIndex + 1);
    }
  });
  await loadFrom(0);
}

main().catch((e) => { setState("error"); show("error", e.message); });

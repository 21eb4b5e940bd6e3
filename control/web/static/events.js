// Viewing events for POST /v1/events: one schema for the homepage and the player.
"use strict";

function nearcastEventId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(16) + "-" + Math.random().toString(16).slice(2, 14);
}

// Send events; sendBeacon when the page is going away (it survives unload), fetch otherwise.
function nearcastSend(events, leaving) {
  if (!events.length) return Promise.resolve();
  const body = JSON.stringify({ events: events.map((e) => ({ event_id: nearcastEventId(), ts: Date.now() / 1000,
                                                            device: "web", ...e })) });
  if (leaving && navigator.sendBeacon) {
    navigator.sendBeacon("/v1/events", new Blob([body], { type: "application/json" }));
    return Promise.resolve();
  }
  return fetch("/v1/events", { method: "POST", body, keepalive: true,
                               headers: { "Content-Type": "application/json" } }).catch(() => {});
}

// trustmesh GUI: the few things the server cannot render because they change every second.
// SVID expiry counts down here (the server sends the instant, not the remainder), and "last seen"
// ages here, so neither depends on how often htmx refreshes the table.
"use strict";
(function () {
  function human(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h > 0) return h + "h " + String(m).padStart(2, "0") + "m " + String(r).padStart(2, "0") + "s";
    if (m > 0) return m + "m " + String(r).padStart(2, "0") + "s";
    return r + "s";
  }
  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-expires-at]").forEach(function (el) {
      const left = (Number(el.dataset.expiresAt) - now) / 1000;
      const lifetime = Number(el.dataset.lifetimeS || "0");
      // Warn when under a quarter of the lifetime is left: sidecars renew at half-life, so an SVID
      // this close to expiry means renewal has been failing for a while.
      const warnBelow = Math.max(60, lifetime / 4);
      el.classList.toggle("expired", left <= 0);
      el.classList.toggle("warn", left > 0 && left < warnBelow);
      el.textContent = left <= 0 ? "expired " + human(-left) + " ago" : human(left);
      el.title = left > 0 && left < warnBelow ? "expires soon: is the sidecar renewing?" : "";
    });
    document.querySelectorAll("[data-seen-at]").forEach(function (el) {
      const at = Number(el.dataset.seenAt);
      el.textContent = at ? human((now - at) / 1000) + " ago" : "never";
    });
  }
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSwap", tick);
  setInterval(tick, 1000);
})();

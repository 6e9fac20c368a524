(function () {
  "use strict";
  var every = $refresh_s * 1000, live = document.getElementById("live"), refreshes = 0;
  function show(ok, text) {
    live.className = ok ? "on" : "off";
    live.textContent = text;
  }
  function tick() {
    var ctl = new AbortController(), timer = setTimeout(function () { ctl.abort(); }, 4000);
    fetch(location.href, {cache: "no-store", signal: ctl.signal, headers: {Accept: "text/html"}})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("status"), old = document.getElementById("status");
        if (!fresh || !old) { throw new Error("unexpected answer"); }
        old.replaceWith(document.importNode(fresh, true));
        refreshes += 1;
        live.setAttribute("data-refreshes", String(refreshes));
        show(true, "live \u00b7 updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) {
        show(false, "not updating (" + (e && e.name === "AbortError" ? "timeout" : e.message) +
             ") \u00b7 showing data from " + new Date(
               document.getElementById("status").getAttribute("data-generated-at")
             ).toLocaleTimeString());
      })
      .finally(function () { clearTimeout(timer); setTimeout(tick, every); });
  }
  show(true, "live \u00b7 refreshes every " + (every / 1000) + " s");
  setTimeout(tick, every);
})();

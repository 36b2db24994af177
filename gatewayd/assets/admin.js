// Keyline office admin: live parts follow the gateway's event stream
// (server-sent events); each event re-renders the page's live part from
// the server. Nothing is polled.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var url = live.getAttribute("data-live");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) { window.location.href = "/login"; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) {
        // Keep what the admin is typing in a field of the live part.
        var active = document.activeElement;
        var keep = active && live.contains(active) && active.id ? [active.id, active.value] : null;
        // And a refused field's value and the error beside it, until the
        // admin sends that form again.
        var refused = [];
        live.querySelectorAll("input[aria-invalid=true]").forEach(function (f) {
          var err = document.getElementById(f.getAttribute("aria-describedby"));
          if (f.id && err) { refused.push([f.id, f.value, err.cloneNode(true)]); }
        });
        live.innerHTML = html;
        refused.forEach(function (r) {
          var f = document.getElementById(r[0]);
          var form = f && f.closest("form");
          if (!form) { return; }
          f.value = r[1];
          f.setAttribute("aria-invalid", "true");
          f.setAttribute("aria-describedby", r[2].id);
          form.appendChild(r[2]);
        });
        if (keep) {
          var el = document.getElementById(keep[0]);
          if (el) { el.value = keep[1]; el.focus(); }
        }
      }
    }).finally(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  function connect() {
    var es = new EventSource("/events");
    es.onmessage = refresh;
    es.addEventListener("dropped", function () { es.close(); refresh(); connect(); });
    es.onopen = refresh;
  }
  connect();
})();

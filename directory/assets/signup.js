// Availability of the ID and number as they are typed; the server checks
// again when the form is sent, and the form works without this script.
(function () {
  "use strict";
  var form = document.getElementById("signup");
  if (!form) { return; }
  var id = document.getElementById("id");
  var number = document.getElementById("number");
  var timer = null;
  var seq = 0;
  function show(el, r) {
    if (!el) { return; }
    if (!r) { el.textContent = ""; el.className = "status"; return; }
    el.textContent = r.message;
    el.className = r.ok ? "status ok" : "status error";
  }
  function check() {
    var q = new URLSearchParams();
    if (id.value) { q.set("id", id.value); }
    if (number.value) { q.set("number", number.value); }
    var mine = ++seq;
    fetch("/signup/check?" + q.toString(), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (r) {
        if (!r || mine !== seq) { return; }
        show(document.getElementById("id-status"), id.value ? r.id : null);
        show(document.getElementById("number-status"), number.value ? r.number : null);
      })
      .catch(function () {});
  }
  function later() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(check, 250);
  }
  id.addEventListener("input", later);
  number.addEventListener("input", later);
})();

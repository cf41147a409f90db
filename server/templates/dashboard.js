// The coordinator page refreshes its live part from /fragment (server-rendered HTML; GET only).
(function () {
  "use strict";
  var seconds = Number(document.body.dataset.refresh) || 3;
  var live = document.getElementById("live");
  var banner = document.getElementById("offline-banner");
  function refresh() {
    fetch("/fragment", { cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) { live.innerHTML = html; banner.style.display = "none"; })
      .catch(function () { banner.style.display = "block"; })
      .finally(function () { setTimeout(refresh, seconds * 1000); });
  }
  setTimeout(refresh, seconds * 1000);
})();

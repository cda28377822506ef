// langgraph-moa dashboard: follow a run live over server-sent events (no build step).
(function () {
  "use strict";
  function follow(el) {
    var url = el.getAttribute("data-live");
    if (!url || !window.EventSource) return;
    var reload = el.hasAttribute("data-reload");
    var source = new EventSource(url);
    source.addEventListener("view", function (e) {
      var data = JSON.parse(e.data);
      if (!reload) el.innerHTML = data.html;
      var badge = document.getElementById("run-status");
      if (badge) { badge.textContent = data.status; badge.className = "badge " + data.status; }
    });
    source.addEventListener("end", function () {
      source.close();
      if (reload) window.location.reload();
    });
    source.onerror = function () {
      // the stream closed (the run ended or the server restarted): show the latest page
      source.close();
      window.setTimeout(function () { window.location.reload(); }, 2000);
    };
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-live]");
    for (var i = 0; i < live.length; i++) follow(live[i]);
  });
})();

/* radiolens book: draw every chart with the site's own vega (no network), keeping its PNG
 * until the live chart is drawn. window.radiolensCharts counts drawn and failed charts (the
 * browser test waits on it). */
(function () {
  "use strict";
  var state = window.radiolensCharts = {total: 0, drawn: 0, failed: 0, errors: []};
  function draw() {
    var charts = document.querySelectorAll("div.radiolens-chart");
    state.total = charts.length;
    if (!charts.length) { return; }
    if (typeof vegaEmbed !== "function") {
      console.error("radiolens book: vega-embed is missing, charts stay as pictures");
      state.failed = charts.length;
      return;
    }
    charts.forEach(function (el) {
      var spec = JSON.parse(document.getElementById(el.id + "-spec").textContent);
      var target = document.createElement("div");
      target.className = "radiolens-chart-live";
      el.appendChild(target);
      vegaEmbed(target, spec, {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}})
        .then(function () {
          var picture = el.querySelector("img.radiolens-chart-fallback");
          if (picture) { picture.remove(); }
          el.setAttribute("data-rendered", "1");
          state.drawn += 1;
        })
        .catch(function (err) {
          target.remove();
          el.setAttribute("data-error", String(err));
          state.failed += 1;
          state.errors.push(el.id + ": " + err);
          console.error("radiolens book: chart " + el.id + " failed, its picture stays: " + err);
        });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();

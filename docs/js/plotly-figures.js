// Draws every figure a notebook page holds: docs/build.py turns each plotly output into
// <div class="kc-plotly"><script type="application/json">{figure}</script></div>; plotly.min.js loads first.
function drawPlotlyFigures() {
  document.querySelectorAll("div.kc-plotly").forEach(function (div) {
    if (div.dataset.drawn) return;
    var figure = JSON.parse(div.querySelector("script").textContent);
    div.dataset.drawn = "yes";
    window.Plotly.newPlot(div, figure.data, figure.layout || {}, { responsive: true });
  });
}
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", drawPlotlyFigures);
} else {
  drawPlotlyFigures();
}

// The endpoint page's serving dashboard: fetches the JSON partial and draws one uPlot chart per
// panel. Shape: {window, message?, panels: [{key, title, unit, series: [{label, points: [[t, v]]}]}]}
// with t in seconds since the epoch and v a number or null (a gap).
(function () {
  "use strict";
  var root = document.getElementById("dashboard");
  if (!root || typeof uPlot === "undefined") return;
  var chartsEl = document.getElementById("charts");
  var messageEl = document.getElementById("dash-message");
  var url = root.getAttribute("data-metrics-url");
  var plots = [];
  var COLORS = ["#2554c7", "#d0742a", "#127a3e", "#8e44ad", "#b42318"];

  // Values with their unit, for the figure above a chart and the cursor legend.
  function format(value, unit) {
    if (value === null || value === undefined || isNaN(value)) return "—";
    var abs = Math.abs(value);
    if (unit === "s") {
      if (abs < 1) return (value * 1000).toFixed(abs < 0.01 ? 1 : 0) + " ms";
      return value.toFixed(abs < 10 ? 2 : 1) + " s";
    }
    if (unit === "%" || unit === "percent") return value.toFixed(abs < 10 ? 1 : 0) + "%";
    if (unit === "ratio" || unit === "fraction") return (value * 100).toFixed(abs < 0.1 ? 1 : 0) + "%";
    return compact(value) + (unit ? " " + unit : "");
  }

  // Axis ticks: short, no unit (the chart's title says it).
  function tick(value, unit) {
    if (value === null || value === undefined) return "";
    if (unit === "s") return Math.abs(value) < 1 ? Math.round(value * 1000) + "ms" : +value.toFixed(2) + "s";
    if (unit === "ratio" || unit === "fraction") return Math.round(value * 100) + "%";
    return compact(value);
  }

  function compact(value) {
    var abs = Math.abs(value);
    if (abs >= 1e6) return +(value / 1e6).toFixed(1) + "M";
    if (abs >= 1e3) return +(value / 1e3).toFixed(1) + "k";
    if (abs >= 10 || value === Math.round(value)) return String(Math.round(value));
    return String(+value.toFixed(2));
  }

  var UNIT_WORDS = { s: "seconds", "req/s": "per second", requests: "requests" };

  function align(series) {
    // uPlot wants one shared x array; series may have been sampled at the same steps (PromQL
    // range queries do), but join on time to be safe.
    var times = {};
    series.forEach(function (s) { (s.points || []).forEach(function (p) { times[p[0]] = true; }); });
    var xs = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
    var data = [xs];
    series.forEach(function (s) {
      var byTime = {};
      (s.points || []).forEach(function (p) { byTime[p[0]] = p[1] === null ? null : Number(p[1]); });
      data.push(xs.map(function (t) { return t in byTime ? byTime[t] : null; }));
    });
    return data;
  }

  function lastValue(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] !== null && !isNaN(values[i])) return values[i];
    return null;
  }

  function draw(payload) {
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    chartsEl.innerHTML = "";
    var panels = payload.panels || [];
    messageEl.textContent = payload.message || (panels.length ? "" : "No serving data in this window yet.");
    messageEl.hidden = !messageEl.textContent;
    panels.forEach(function (panel) {
      var box = document.createElement("figure");
      box.className = "chart";
      box.style.margin = "0";
      var head = document.createElement("h3");
      head.textContent = panel.title;
      box.appendChild(head);
      var latest = document.createElement("div");
      latest.className = "latest";
      box.appendChild(latest);
      chartsEl.appendChild(box);
      var series = panel.series || [];
      var data = align(series);
      head.textContent = panel.title + (UNIT_WORDS[panel.unit] ? " (" + UNIT_WORDS[panel.unit] + ")" : "");
      var hasData = data[0].length > 1 && data.slice(1).some(function (v) { return lastValue(v) !== null; });
      var figures = series.map(function (s, i) {
        var now = s.current !== undefined && s.current !== null ? s.current : lastValue(data[i + 1]);
        return (series.length > 1 ? s.label + " " : "") + format(now, panel.unit);
      });
      latest.textContent = figures.join(" · ");
      if (!hasData) {
        var empty = document.createElement("div");
        empty.className = "chart-empty";
        empty.textContent = "No data in this window yet";
        box.appendChild(empty);
        return;
      }
      var width = Math.max(240, box.clientWidth || 320);
      var opts = {
        width: width,
        height: 150,
        legend: { show: series.length > 1 },
        cursor: { drag: { x: false, y: false } },
        scales: {
          x: { time: true, range: payload.start && payload.end ? [payload.start, payload.end] : null },
          y: { range: function (u, min, max) { return [Math.min(0, min), max > 0 ? max * 1.1 : 1]; } },
        },
        axes: [
          { stroke: "#5b6675", grid: { stroke: "#eef0f3" }, size: 30 },
          { stroke: "#5b6675", grid: { stroke: "#eef0f3" }, size: 48, values: function (u, vals) { return vals.map(function (v) { return tick(v, panel.unit); }); } },
        ],
        series: [{}].concat(series.map(function (s, i) {
          return { label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
                   value: function (u, v) { return format(v, panel.unit); } };
        })),
      };
      var plot = new uPlot(opts, data, box);
      box.setAttribute("aria-label", panel.title + ": " + latest.textContent);
      plots.push(plot);
    });
  }

  function load(win) {
    messageEl.hidden = false;
    messageEl.textContent = "Loading metrics…";
    fetch(url + "?window=" + encodeURIComponent(win), { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(draw)
      .catch(function () { messageEl.textContent = "Could not load metrics; try again shortly."; });
  }

  root.querySelectorAll("[data-window]").forEach(function (button) {
    button.addEventListener("click", function () {
      root.querySelectorAll("[data-window]").forEach(function (b) {
        var on = b === button;
        b.classList.toggle("is-on", on);
        b.setAttribute("aria-pressed", on ? "true" : "false");
      });
      load(button.getAttribute("data-window"));
    });
  });

  var resizeTimer;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      plots.forEach(function (p) {
        var w = p.root.parentNode.clientWidth;
        if (w) p.setSize({ width: w, height: 150 });
      });
    }, 150);
  });

  var current = root.querySelector("[data-window].is-on");
  load(current ? current.getAttribute("data-window") : "1h");
})();

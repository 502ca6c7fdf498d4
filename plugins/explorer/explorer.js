/* featsurv feature explorer: a table, a scatter and a feature view over the run's embedded data.
   No network, no libraries: everything it shows is in the #data element of this page. */
(function () {
  "use strict";
  var BANDS = ["survived", "blurred", "damaged"];
  var COLORS = ["#2e8b57", "#d4a017", "#c0392b"];
  var FP_RGB = "214,69,65", COMP_RGB = "52,101,164";
  var STAT_NAMES = {firing_rate: "firing rate", mean_act: "mean activation", peak_act: "peak activation",
                    decoder_norm: "decoder norm", encoder_norm: "encoder norm", encoder_bias: "encoder bias",
                    threshold: "threshold"};
  var COLUMNS = [
    {key: "h", label: "hook", left: true}, {key: "c", label: "config", left: true},
    {key: "f", label: "feature"}, {key: "r", label: "r"}, {key: "b", label: "band", left: true},
    {key: "fr", label: "firing rate"}, {key: "pk", label: "peak"}, {key: "d", label: "damage 1-r"},
    {key: "ov", label: "top-k overlap"}
  ];
  var D = null, ROWS = [], VIEW = [], WATCH = {}, POINTS = [];
  var S = {hook: "all", config: "all", band: "all", query: "", watched: false, key: "d", dir: -1,
           page: 0, size: 25, sel: null, ctxConfig: 0};

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] === undefined || attrs[k] === null) continue;
        if (k === "text") node.textContent = attrs[k];
        else if (k === "cls") node.className = attrs[k];
        else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), attrs[k]);
        else node.setAttribute(k, attrs[k]);
      }
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v, digits) {
    if (!isNum(v)) return "n/a";
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(digits || 4)));
    return v.toExponential((digits || 4) - 1);
  }
  function pct(v) { return isNum(v) ? (100 * v).toFixed(1) + "%" : "n/a"; }

  function loadData() {
    var node = document.getElementById("data");
    var enc = node.getAttribute("data-enc"), text = node.textContent;
    if (enc === "json") return Promise.resolve(JSON.parse(text));
    if (typeof DecompressionStream === "undefined") {
      return Promise.reject(new Error("this browser has no DecompressionStream; open the page in a current " +
                                      "Chrome, Edge, Firefox or Safari"));
    }
    var bin = atob(text.trim()), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).text().then(JSON.parse);
  }

  // ------------------------------------------------------------------ rows
  function buildRows() {
    ROWS = [];
    D.watched.forEach(function (w) { WATCH[w[0] + ":" + w[1]] = {name: w[2], note: w[3]}; });
    D.feats.forEach(function (F, h) {
      var fr = F.s.firing_rate || [], pk = F.s.peak_act || [], mean = F.s.mean_act || [];
      D.configs.forEach(function (_, c) {
        var rs = F.r[c] || [], bs = F.b[c] || [], ov = F.ov[c] || [];
        for (var i = 0; i < F.id.length; i++) {
          var r = rs[i];
          if (r === null || r === undefined) continue;
          ROWS.push({h: h, c: c, i: i, f: F.id[i], r: r, b: bs[i], fr: fr[i], pk: pk[i], mean: mean[i],
                     d: 1 - r, ov: isNum(ov[i]) ? ov[i] : null, w: WATCH[h + ":" + F.id[i]] ? 1 : 0});
        }
      });
    });
  }

  function parseQuery(q) {
    var ids = [], ranges = [], words = [];
    q.split(/[\s,;]+/).forEach(function (t) {
      if (!t) return;
      var m = /^(\d+)-(\d+)$/.exec(t);
      if (m) ranges.push([+m[1], +m[2]]);
      else if (/^\d+$/.test(t)) ids.push(+t);
      else words.push(t.toLowerCase());
    });
    return {ids: ids, ranges: ranges, words: words, empty: !ids.length && !ranges.length && !words.length};
  }

  function matches(row, q) {
    if (q.empty) return true;
    if (q.ids.indexOf(row.f) >= 0) return true;
    for (var j = 0; j < q.ranges.length; j++) if (row.f >= q.ranges[j][0] && row.f <= q.ranges[j][1]) return true;
    var w = WATCH[row.h + ":" + row.f];
    if (w && q.words.length) {
      var text = (w.name + " " + w.note).toLowerCase();
      for (var k = 0; k < q.words.length; k++) if (text.indexOf(q.words[k]) >= 0) return true;
    }
    return false;
  }

  function compare(a, b) {
    var key = S.key, x = a[key], y = b[key];
    if (key === "h") { x = D.hooks[a.h]; y = D.hooks[b.h]; }
    if (key === "c") { x = a.c; y = b.c; }
    var xn = x === null || x === undefined || (typeof x === "number" && isNaN(x));
    var yn = y === null || y === undefined || (typeof y === "number" && isNaN(y));
    if (xn || yn) return xn && yn ? a.f - b.f : (xn ? 1 : -1);
    if (x < y) return -S.dir;
    if (x > y) return S.dir;
    return a.f - b.f || a.h - b.h || a.c - b.c;
  }

  function applyView() {
    var q = parseQuery(S.query);
    VIEW = ROWS.filter(function (row) {
      return (S.hook === "all" || row.h === +S.hook) && (S.config === "all" || row.c === +S.config) &&
             (S.band === "all" || row.b === +S.band) && (!S.watched || row.w) && matches(row, q);
    });
    VIEW.sort(compare);
    var pages = Math.max(1, Math.ceil(VIEW.length / S.size));
    if (S.page >= pages) S.page = pages - 1;
    renderTable();
    drawScatter();
  }

  // ------------------------------------------------------------------ layout
  function select(id, options, value, onchange) {
    var s = el("select", {id: id, onchange: function () { onchange(s.value); }});
    options.forEach(function (o) {
      var opt = el("option", {value: o[0], text: o[1]});
      if (String(o[0]) === String(value)) opt.selected = true;
      s.appendChild(opt);
    });
    return s;
  }

  function layout() {
    var app = document.getElementById("app");
    app.textContent = "";
    var nFeat = D.feats.reduce(function (n, F) { return n + F.id.length; }, 0);
    var ctxNote = D.has_contexts
      ? "Top-activating contexts embedded for " + D.n_cx + " of " + D.n_cx_total + " features" +
        (D.n_cx < D.n_cx_total ? " (the most damaged first, to keep the page small)" : "") + "."
      : "No contexts in this run (the contexts metric did not run).";
    app.appendChild(el("h1", {text: "featsurv feature explorer"}));
    app.appendChild(el("p", {cls: "sub", text: nFeat + " active features · " + D.hooks.length + " hook point(s) · " +
      D.configs.length + " configuration(s)" + (D.run.n_tokens ? " · " + D.run.n_tokens + " audit tokens" : "") +
      ". " + ctxNote}));
    var hookOpts = [["all", "all hooks"]].concat(D.hooks.map(function (h, i) { return [i, h]; }));
    var confOpts = [["all", "all configurations"]].concat(D.configs.map(function (c, i) { return [i, c]; }));
    var bandOpts = [["all", "all bands"]].concat(BANDS.map(function (b, i) { return [i, b]; }));
    var search = el("input", {id: "search", type: "search", placeholder: "feature id, 10-20, name",
                              oninput: function () { S.query = search.value; S.page = 0; applyView(); }});
    var controls = el("div", {cls: "controls"},
      el("label", null, "Hook ", select("hook", hookOpts, S.hook, function (v) { S.hook = v; S.page = 0; applyView(); })),
      el("label", null, "Config ", select("config", confOpts, S.config, function (v) {
        S.config = v; S.page = 0; if (v !== "all") S.ctxConfig = +v; applyView(); if (S.sel) renderFeature(); })),
      el("label", null, "Band ", select("band", bandOpts, S.band, function (v) { S.band = v; S.page = 0; applyView(); })),
      el("label", null, "Search ", search));
    if (D.watched.length) {
      var box = el("input", {id: "watched", type: "checkbox", onchange: function () {
        S.watched = box.checked; S.page = 0; applyView(); }});
      controls.appendChild(el("label", null, box, " watched only (" + D.watched.length + ")"));
    }
    app.appendChild(controls);
    var head = el("tr");
    COLUMNS.forEach(function (col) {
      if (col.key === "ov" && !D.has_contexts) return;
      if (col.key === "h" && D.hooks.length < 2) return;
      head.appendChild(el("th", {"data-key": col.key, cls: col.left ? "l" : "", text: col.label,
        onclick: function () {
          if (S.key === col.key) S.dir = -S.dir; else { S.key = col.key; S.dir = col.key === "d" ? -1 : 1; }
          S.page = 0; applyView();
        }}));
    });
    var pager = el("div", {cls: "pager"},
      el("button", {id: "prev", text: "‹ prev", onclick: function () { if (S.page > 0) { S.page--; renderTable(); } }}),
      el("span", {id: "pageinfo"}),
      el("button", {id: "next", text: "next ›", onclick: function () {
        if ((S.page + 1) * S.size < VIEW.length) { S.page++; renderTable(); } }}),
      el("span", {id: "count", cls: "note"}));
    var left = el("div", null, pager, el("table", {id: "table"}, el("thead", null, head), el("tbody", {id: "rows"})));
    var canvas = el("canvas", {id: "scatter", width: 1120, height: 760});
    var right = el("div", {cls: "plot"},
      el("h2", {text: "r against FP firing rate"}),
      canvas, el("div", {id: "tip"}),
      el("p", {cls: "legend note"},
        el("span", null, el("span", {cls: "dot", style: "background:" + COLORS[0]}), "survived r > " + D.th.survived_above),
        el("span", null, el("span", {cls: "dot", style: "background:" + COLORS[1]}), "blurred"),
        el("span", null, el("span", {cls: "dot", style: "background:" + COLORS[2]}), "damaged r < " + D.th.damaged_below)),
      el("p", {cls: "note", text: "Points: the rows the table's filters keep (log firing rate). Hover for a feature, click to open it."}));
    right.appendChild(el("div", {id: "feature"}, el("p", {cls: "note", text: "Click a row or a point to see a feature."})));
    app.appendChild(el("div", {cls: "grid"}, left, right));
    canvas.addEventListener("mousemove", hover);
    canvas.addEventListener("mouseleave", function () { document.getElementById("tip").style.display = "none"; });
    canvas.addEventListener("click", function (ev) {
      var p = nearest(ev);
      if (p) openFeature(p.h, p.f, p.c);
    });
  }

  function renderTable() {
    var body = document.getElementById("rows");
    body.textContent = "";
    var start = S.page * S.size, rows = VIEW.slice(start, start + S.size);
    rows.forEach(function (row) {
      var tr = el("tr", {"data-h": row.h, "data-f": row.f, "data-c": row.c,
                         cls: S.sel && S.sel.h === row.h && S.sel.f === row.f ? "sel" : "",
                         onclick: function () { openFeature(row.h, row.f, row.c); }});
      COLUMNS.forEach(function (col) {
        if (col.key === "ov" && !D.has_contexts) return;
        if (col.key === "h" && D.hooks.length < 2) return;
        var td;
        if (col.key === "h") td = el("td", {cls: "l", text: D.hooks[row.h]});
        else if (col.key === "c") td = el("td", {cls: "l", text: D.configs[row.c]});
        else if (col.key === "f") td = el("td", null, row.w ? el("span", {cls: "star", text: "★ "}) : null, String(row.f));
        else if (col.key === "b") td = el("td", {cls: "l b" + row.b, text: BANDS[row.b] || "?"});
        else td = el("td", {text: fmt(row[col.key])});
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var pages = Math.max(1, Math.ceil(VIEW.length / S.size));
    document.getElementById("pageinfo").textContent = "page " + (S.page + 1) + " of " + pages;
    document.getElementById("count").textContent = VIEW.length + " of " + ROWS.length + " rows";
    document.querySelectorAll("#table th").forEach(function (th) {
      th.classList.toggle("sorted", th.getAttribute("data-key") === S.key);
      th.classList.toggle("desc", th.getAttribute("data-key") === S.key && S.dir < 0);
    });
  }

  // ------------------------------------------------------------------ scatter
  var AX = null;
  function axes() {
    if (AX) return AX;
    var xs = [], y0 = 0;
    ROWS.forEach(function (r) { if (isNum(r.fr) && r.fr > 0) xs.push(Math.log10(r.fr)); if (r.r < y0) y0 = r.r; });
    var x0 = Math.min.apply(null, xs.length ? xs.slice(0, 1) : [-4]), x1 = x0;
    for (var i = 0; i < xs.length; i++) { if (xs[i] < x0) x0 = xs[i]; if (xs[i] > x1) x1 = xs[i]; }
    if (x1 - x0 < 1e-9) { x0 -= 0.5; x1 += 0.5; }
    AX = {x0: Math.floor(x0 * 2) / 2, x1: Math.ceil(x1 * 2) / 2, y0: Math.max(-1, Math.floor(y0 * 10) / 10), y1: 1.0,
          l: 110, r: 30, t: 30, b: 90};
    return AX;
  }
  function px(ax, c, v) { return ax.l + (v - ax.x0) / (ax.x1 - ax.x0) * (c.width - ax.l - ax.r); }
  function py(ax, c, v) { return c.height - ax.b - (v - ax.y0) / (ax.y1 - ax.y0) * (c.height - ax.t - ax.b); }

  function drawScatter() {
    var c = document.getElementById("scatter"), g = c.getContext("2d"), ax = axes();
    g.clearRect(0, 0, c.width, c.height);
    g.fillStyle = "#fff"; g.fillRect(0, 0, c.width, c.height);
    g.strokeStyle = "#999"; g.lineWidth = 2; g.font = "22px sans-serif"; g.fillStyle = "#333";
    g.beginPath(); g.moveTo(ax.l, ax.t); g.lineTo(ax.l, c.height - ax.b); g.lineTo(c.width - ax.r, c.height - ax.b); g.stroke();
    g.textAlign = "center";
    for (var e = Math.ceil(ax.x0); e <= Math.floor(ax.x1); e++) {
      var x = px(ax, c, e);
      g.fillText("1e" + e, x, c.height - ax.b + 32);
      g.beginPath(); g.moveTo(x, c.height - ax.b); g.lineTo(x, c.height - ax.b + 8); g.stroke();
    }
    g.fillText("FP firing rate (log scale)", (ax.l + c.width - ax.r) / 2, c.height - 18);
    g.textAlign = "right";
    for (var t = Math.ceil(ax.y0 * 5) / 5; t <= 1.0001; t += 0.2) {
      var y = py(ax, c, t);
      g.fillText(t.toFixed(1), ax.l - 12, y + 7);
    }
    g.save(); g.translate(30, (ax.t + c.height - ax.b) / 2); g.rotate(-Math.PI / 2); g.textAlign = "center";
    g.fillText("survival r", 0, 0); g.restore();
    g.setLineDash([8, 6]); g.strokeStyle = "#bbb";
    [D.th.survived_above, D.th.damaged_below].forEach(function (v) {
      if (v < ax.y0) return;
      var y = py(ax, c, v); g.beginPath(); g.moveTo(ax.l, y); g.lineTo(c.width - ax.r, y); g.stroke();
    });
    g.setLineDash([]);
    POINTS = [];
    var size = VIEW.length > 5000 ? 3 : 5;
    VIEW.forEach(function (row) {
      if (!isNum(row.fr) || row.fr <= 0 || !isNum(row.r)) return;
      var x = px(ax, c, Math.log10(row.fr)), y = py(ax, c, row.r);
      POINTS.push({x: x, y: y, row: row});
      g.fillStyle = COLORS[row.b] || "#888";
      g.fillRect(x - size / 2, y - size / 2, size, size);
    });
    if (S.sel) {
      g.strokeStyle = "#000"; g.lineWidth = 3;
      POINTS.forEach(function (p) {
        if (p.row.h === S.sel.h && p.row.f === S.sel.f) { g.beginPath(); g.arc(p.x, p.y, 11, 0, 2 * Math.PI); g.stroke(); }
      });
    }
  }

  function nearest(ev) {
    var c = document.getElementById("scatter"), rect = c.getBoundingClientRect();
    var k = c.width / rect.width, x = (ev.clientX - rect.left) * k, y = (ev.clientY - rect.top) * k;
    var best = null, bd = (10 * k) * (10 * k);
    for (var i = 0; i < POINTS.length; i++) {
      var dx = POINTS[i].x - x, dy = POINTS[i].y - y, dd = dx * dx + dy * dy;
      if (dd < bd) { bd = dd; best = POINTS[i].row; }
    }
    return best;
  }

  function hover(ev) {
    var tip = document.getElementById("tip"), row = nearest(ev);
    if (!row) { tip.style.display = "none"; return; }
    var rect = ev.target.getBoundingClientRect();
    tip.textContent = "feature " + row.f + (D.hooks.length > 1 ? " @ " + D.hooks[row.h] : "") + " · " +
      D.configs[row.c] + " · r " + fmt(row.r) + " · firing rate " + fmt(row.fr);
    tip.style.left = (ev.clientX - rect.left + 14) + "px";
    tip.style.top = (ev.clientY - rect.top + ev.target.offsetTop + 10) + "px";
    tip.style.display = "block";
  }

  // ------------------------------------------------------------------ feature view
  function openFeature(h, f, c) {
    S.sel = {h: h, f: f};
    if (c !== undefined && c !== null) S.ctxConfig = c;
    try { history.replaceState(null, "", "#h=" + h + "&f=" + f + "&c=" + S.ctxConfig); } catch (err) { /* file:// in some browsers */ }
    renderFeature();
    renderTable();
    drawScatter();
  }

  function tokenStrip(kind, ctxId, pos, sparse, scale, target) {
    var toks = D.ctx[String(ctxId)], lab = kind === "fp" ? "FP" : "compressed";
    var line = el("div", {cls: "strip " + kind}, el("span", {cls: "lab", text: lab}));
    if (!toks) { line.appendChild(document.createTextNode("(tokens not stored)")); return line; }
    var digits = sparse || "";
    var start = pos - D.window, first = toks[0], rgb = kind === "fp" ? FP_RGB : COMP_RGB;
    for (var j = 0; j <= 2 * D.window; j++) {
      var p = start + j, idx = toks[1 + p - first];
      if (p < first || idx === undefined || idx < 0) continue;
      var text = D.tok[idx].replace(/\n/g, "↵").replace(/\t/g, "→");
      var q = j < digits.length ? digits.charCodeAt(j) - 48 : 0, lv = D.levels || 9;
      var value = p === pos ? fmt(target, 4) : (q ? "≈" + fmt(q / lv * scale, 2) : "0");
      var span = el("span", {cls: "tok" + (p === pos ? " tgt" : ""), text: text === "" ? "\u00a0" : text,
                             title: JSON.stringify(D.tok[idx]) + " · " + lab + " " + value, "data-q": q});
      if (q) span.style.background = "rgba(" + rgb + "," + (0.12 + 0.78 * q / lv).toFixed(3) + ")";
      line.appendChild(span);
    }
    return line;
  }

  function contextBox(head, strips, isNew) {
    var box = el("div", {cls: "ctx"}, el("div", {cls: "head", text: head},
      isNew === undefined ? null : el("span", {cls: "badge" + (isNew ? "" : " same"),
                                               text: isNew ? "new under compression" : "also an FP top context"})));
    strips.forEach(function (s) { box.appendChild(s); });
    return box;
  }

  function renderFeature() {
    var box = document.getElementById("feature"), h = S.sel.h, f = S.sel.f, F = D.feats[h];
    var i = F.id.indexOf(f), c = S.ctxConfig;
    box.textContent = "";
    var w = WATCH[h + ":" + f];
    var title = el("h2", {id: "ftitle"}, w ? el("span", {cls: "star", text: "★ "}) : null,
                   "Feature " + f + " · " + D.hooks[h], w && w.name ? " · " + w.name : null);
    box.appendChild(title);
    if (w && w.note) box.appendChild(el("p", {cls: "note", text: w.note}));
    if (D.np[h]) {
      box.appendChild(el("p", null, el("a", {id: "neuronpedia", href: "https://neuronpedia.org/" + D.np[h] + "/" + f,
        target: "_blank", rel: "noopener", text: "Open on Neuronpedia (" + D.np[h] + "/" + f + ")"})));
    }
    var stats = el("table", {id: "fpstats"}, el("tr", null, el("th", {cls: "l", text: "FP statistic"}), el("th", {text: "value"})));
    D.stats.forEach(function (s) {
      var v = (F.s[s] || [])[i];
      stats.appendChild(el("tr", null, el("td", {cls: "l", text: STAT_NAMES[s] || s}), el("td", {text: fmt(v)})));
    });
    var rt = el("table", {id: "rtable"}, el("tr", null, el("th", {cls: "l", text: "configuration"}), el("th", {text: "r"}),
      el("th", {cls: "l", text: "band"}), el("th", {cls: "l", text: ""}),
      D.has_contexts ? el("th", {text: "top-k overlap"}) : null));
    D.configs.forEach(function (name, k) {
      var r = (F.r[k] || [])[i], b = (F.b[k] || [])[i], sil = (F.sil[k] || [])[i], ov = (F.ov[k] || [])[i];
      var bar = el("span", {cls: "bar", style: "width:" + Math.max(0, Math.round(60 * (isNum(r) ? Math.max(r, 0) : 0))) + "px"});
      rt.appendChild(el("tr", {"data-c": k, cls: k === c ? "sel" : ""}, el("td", {cls: "l", text: name}),
        el("td", {cls: "rval", text: fmt(r)}), el("td", {cls: "l b" + b, text: (BANDS[b] || "?") + (sil ? " (silenced)" : "")}),
        el("td", {cls: "l"}, bar), D.has_contexts ? el("td", {text: isNum(ov) ? pct(ov) : "n/a"}) : null));
    });
    box.appendChild(el("div", {cls: "facts"}, el("div", null, el("h3", {text: "FP statistics"}), stats),
                       el("div", null, el("h3", {text: "r across configurations"}), rt)));
    if (!D.has_contexts) return;
    var block = D.cx[h + ":" + f];
    if (!block) {
      box.appendChild(el("p", {cls: "note", text: "Contexts of this feature are not embedded in this page (size budget). " +
        "In a terminal: featsurv features RUN --feature " + f + (D.hooks.length > 1 ? " --hook " + D.hooks[h] : "")}));
      return;
    }
    var bar2 = el("div", {cls: "cfgs"}, "Compressed shading: ");
    D.configs.forEach(function (name, k) {
      bar2.appendChild(el("button", {cls: k === c ? "on" : "", text: name, "data-c": k,
                                     onclick: function () { S.ctxConfig = k; renderFeature(); }}));
    });
    box.appendChild(bar2);
    var comp = (block.c || [])[c] || [];
    box.appendChild(el("h3", {text: "Top FP contexts (FP shading beside " + D.configs[c] + " shading)"}));
    var list = el("div", {id: "fpctx"});
    block.f.forEach(function (e, k) {
      var ce = comp[k] || [null, ""];
      list.appendChild(contextBox("#" + (k + 1) + " · context " + e[0] + ", position " + e[1] + " · FP " + fmt(e[2]) +
        " → compressed " + fmt(ce[0]), [tokenStrip("fp", e[0], e[1], e[3], block.s, e[2]),
                                         tokenStrip("comp", e[0], e[1], ce[1], block.s, ce[0])]));
    });
    box.appendChild(list);
    var top = (block.t || [])[c] || [];
    box.appendChild(el("h3", {text: "Top contexts under " + D.configs[c]}));
    var list2 = el("div", {id: "compctx"});
    top.forEach(function (e, k) {
      if (e.length === 1) {  // the same position as FP top context e[0]
        var fe = block.f[e[0]], ce = comp[e[0]] || [null, ""];
        e = [fe[0], fe[1], ce[0], fe[2], ce[1], fe[3], 1];
      }
      list2.appendChild(contextBox("#" + (k + 1) + " · context " + e[0] + ", position " + e[1] + " · compressed " +
        fmt(e[2]) + " · FP " + fmt(e[3]), [tokenStrip("comp", e[0], e[1], e[4], block.s, e[2]),
                                           tokenStrip("fp", e[0], e[1], e[5], block.s, e[3])], !e[6]));
    });
    if (!top.length) list2.appendChild(el("p", {cls: "note", text: "The feature does not fire under this configuration."}));
    box.appendChild(list2);
  }

  function fromHash() {
    var m = /h=(\d+)&f=(\d+)(?:&c=(\d+))?/.exec(location.hash || "");
    if (!m) return;
    var h = +m[1], f = +m[2];
    if (D.feats[h] && D.feats[h].id.indexOf(f) >= 0) openFeature(h, f, m[3] !== undefined ? Math.min(+m[3], D.configs.length - 1) : 0);
  }

  function fail(err) {
    var app = document.getElementById("app");
    app.textContent = "";
    app.appendChild(el("p", {cls: "err", text: "The explorer could not load its data: " + (err && err.message || err)}));
    console.error(err);
  }

  function start() {
    loadData().then(function (data) {
      D = data;
      D.cx = D.cx || {}; D.ctx = D.ctx || {}; D.tok = D.tok || []; D.watched = D.watched || [];
      buildRows();
      layout();
      applyView();
      fromHash();
      document.body.setAttribute("data-ready", "1");
    }).catch(fail);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();

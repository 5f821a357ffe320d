/* exprof report: the per-sample table, rendered a page at a time from the embedded JSON.
   Data is only ever put into the page as text nodes (textContent), never as HTML. */
(function () {
  "use strict";
  var PAGE = 50;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /* Text with the given facts marked (case-insensitive, as the scorer finds them). */
  function highlight(parent, text, marks) {
    var lower = text.toLowerCase();
    var spans = [];
    if (lower.length === text.length) {
      marks.forEach(function (m) {
        var fact = m[0].toLowerCase();
        if (!fact) return;
        var i = lower.indexOf(fact);
        while (i >= 0) {
          spans.push([i, i + fact.length, m[1]]);
          i = lower.indexOf(fact, i + fact.length);
        }
      });
    }
    spans.sort(function (a, b) { return a[0] - b[0] || b[1] - a[1]; });
    var pos = 0;
    spans.forEach(function (s) {
      if (s[0] < pos) return;
      if (s[0] > pos) parent.appendChild(document.createTextNode(text.slice(pos, s[0])));
      parent.appendChild(el("mark", s[2], text.slice(s[0], s[1])));
      pos = s[1];
    });
    if (pos < text.length) parent.appendChild(document.createTextNode(text.slice(pos)));
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(digits || 4);
    }
    return String(value);
  }

  function chip(text, cls) { return el("span", "chip " + cls, text); }

  function decodeBase64(text) {
    var bin = atob(text);
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  function loadData(node) {
    if (node.getAttribute("data-encoding") !== "gzip") {
      return Promise.resolve(JSON.parse(node.textContent));
    }
    var stream = new Blob([decodeBase64(JSON.parse(node.textContent))])
      .stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }

  /* Column specs per page kind: key (row index), label, type, and how a cell is drawn. */
  var VIEWS = {
    run: function (data) {
      var C = {};
      data.columns.forEach(function (name, i) { C[name] = i; });
      var facts = data.facts;
      var hasLatency = data.rows.some(function (r) { return r[C.latency_ms] !== null; });
      var columns = [
        { label: "dialogue id", key: C.dialogue_id, cls: "id" },
        { label: "status", key: C.status, draw: function (td, r) {
            td.appendChild(chip(r[C.status], "status-" + r[C.status]));
          } },
        { label: "coverage", key: C.coverage, num: true, draw: function (td, r) {
            td.textContent = fmt(r[C.coverage], 2);
          } },
        { label: "refused", key: C.refused, num: true, draw: function (td, r) {
            if (r[C.refused] === 1) td.appendChild(chip("refused", "refused"));
            else td.textContent = r[C.refused] === 0 ? "no" : "–";
          } },
        { label: "tokens", key: C.output_tokens, num: true },
      ];
      if (hasLatency) columns.push({ label: "latency ms", key: C.latency_ms, num: true });
      columns.push({ label: "answer (found facts marked; missing listed)", key: null, cls: "answer",
        draw: function (td, r) {
          if (r[C.prompt]) td.appendChild(el("div", "prompt", r[C.prompt]));
          if (r[C.status] === "failed") {
            var err = el("div", "error");
            err.appendChild(chip(r[C.error_class] || "error", "failed"));
            err.appendChild(document.createTextNode(" " + (r[C.error] || "")));
            td.appendChild(err);
            return;
          }
          if (r[C.completion] !== null) {
            var missing = new Set(r[C.missing]);
            var found = r[C.facts].filter(function (f) { return !missing.has(f); });
            var body = el("div", "completion");
            highlight(body, r[C.completion], found.map(function (f) { return [facts[f], "found"]; }));
            body.title = "click to expand";
            body.addEventListener("click", function () { body.classList.toggle("open"); });
            td.appendChild(body);
          }
          if (r[C.trajectory]) {
            var path = el("details", "trajectory");
            var calls = r[C.trajectory].reduce(function (n, t) { return n + t.calls.length; }, 0);
            path.appendChild(el("summary", null, r[C.trajectory].length + " turns · " + calls + " tool calls"));
            var list = el("ol");
            r[C.trajectory].forEach(function (t) {
              var item = el("li", null, t.text || "");
              t.calls.forEach(function (c) {
                var call = el("div", "tool-call", c[0] + " " + c[1] + " → ");
                call.appendChild(c[3] ? chip(c[2], "failed") : document.createTextNode(c[2]));
                item.appendChild(call);
              });
              item.appendChild(el("div", "hint", "stop: " + t.stop));
              list.appendChild(item);
            });
            path.appendChild(list);
            td.appendChild(path);
          }
          if (r[C.metrics]) {
            var values = el("div", "missing");
            Object.keys(r[C.metrics]).forEach(function (name) {
              values.appendChild(chip(name + " = " + fmt(r[C.metrics][name], 3), "metric"));
            });
            td.appendChild(values);
          }
          if (r[C.missing].length) {
            var line = el("div", "missing", "missing: ");
            r[C.missing].forEach(function (f) { line.appendChild(chip(facts[f], "lost")); });
            td.appendChild(line);
          }
        } });
      var haystacks = null;
      return {
        columns: columns,
        filters: [["all", "all samples"], ["ok", "answered"], ["failed", "failed"],
                  ["refused", "refused"], ["partial", "coverage < 1"], ["pending", "not sent yet"]],
        keep: function (r, filter) {
          switch (filter) {
            case "ok": case "failed": case "pending": return r[C.status] === filter;
            case "refused": return r[C.refused] === 1;
            case "partial": return r[C.coverage] !== null && r[C.coverage] < 1;
            default: return true;
          }
        },
        text: function (r, i) {
          if (!haystacks) haystacks = new Array(data.rows.length);
          var h = haystacks[i];
          if (h === undefined) {
            h = haystacks[i] = [r[C.dialogue_id], r[C.prompt], r[C.completion], r[C.error_class],
                                r[C.error]].join("\n").toLowerCase();
          }
          return h;
        },
      };
    },
    compare: function (data) {
      var C = {};
      data.columns.forEach(function (name, i) { C[name] = i; });
      function refusal(key) {
        return function (td, r) {
          if (r[key] === 1) td.appendChild(chip("refused", "refused"));
          else td.textContent = "no";
        };
      }
      return {
        columns: [
          { label: "dialogue id", key: C.dialogue_id, cls: "id" },
          { label: "coverage A", key: C.coverage_a, num: true },
          { label: "coverage B", key: C.coverage_b, num: true },
          { label: "B − A", key: C.delta, num: true, draw: function (td, r) {
              var d = r[C.delta];
              td.textContent = d > 0 ? "+" + fmt(d) : fmt(d);
              td.className += d > 0 ? " good" : d < 0 ? " bad" : "";
            } },
          { label: "refused A", key: C.refused_a, num: true, draw: refusal(C.refused_a) },
          { label: "refused B", key: C.refused_b, num: true, draw: refusal(C.refused_b) },
        ],
        filters: [["all", "all common samples"], ["changed", "coverage changed"],
                  ["better", "B better"], ["worse", "B worse"], ["flips", "refusal flipped"]],
        keep: function (r, filter) {
          switch (filter) {
            case "changed": return r[C.delta] !== 0;
            case "better": return r[C.delta] > 0;
            case "worse": return r[C.delta] < 0;
            case "flips": return r[C.refused_a] !== r[C.refused_b];
            default: return true;
          }
        },
        text: function (r) { return r[C.dialogue_id].toLowerCase(); },
      };
    },
  };

  function Table(root, data, view) {
    var rows = data.rows;
    var state = { query: "", filter: "all", sortKey: null, desc: false, page: 0, shown: rows };
    var search = root.querySelector("#filter");
    var select = root.querySelector("#status-filter");
    var head = root.querySelector("thead tr");
    var body = root.querySelector("tbody");
    var counts = root.querySelectorAll(".row-count");
    var prevs = root.querySelectorAll("button.prev");
    var nexts = root.querySelectorAll("button.next");

    view.filters.forEach(function (f) {
      var option = el("option", null, f[1]);
      option.value = f[0];
      select.appendChild(option);
    });
    view.columns.forEach(function (col) {
      var th = el("th", col.num ? "num" : "", col.label);
      if (col.key !== null) {
        th.classList.add("sortable");
        th.tabIndex = 0;
        th.addEventListener("click", function () { sortBy(col, th); });
        th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(col, th); });
      }
      head.appendChild(th);
    });

    function sortBy(col, th) {
      state.desc = state.sortKey === col.key ? !state.desc : !!col.num;
      state.sortKey = col.key;
      head.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-sort"); });
      th.setAttribute("data-sort", state.desc ? "desc" : "asc");
      apply();
    }

    function apply() {
      var q = state.query.trim().toLowerCase();
      var shown = [];
      for (var i = 0; i < rows.length; i++) {
        var r = rows[i];
        if (!view.keep(r, state.filter)) continue;
        if (q && view.text(r, i).indexOf(q) < 0) continue;
        shown.push(r);
      }
      if (state.sortKey !== null) {
        var k = state.sortKey, sign = state.desc ? -1 : 1;
        shown.sort(function (a, b) {
          var x = a[k], y = b[k];
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;  /* blanks last, either way */
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * sign;
        });
      }
      state.shown = shown;
      state.page = 0;
      draw();
    }

    function draw() {
      var start = state.page * PAGE;
      var page = state.shown.slice(start, start + PAGE);
      var frag = document.createDocumentFragment();
      page.forEach(function (r) {
        var tr = el("tr");
        view.columns.forEach(function (col) {
          var td = el("td", (col.num ? "num " : "") + (col.cls || ""));
          if (col.draw) col.draw(td, r);
          else td.textContent = fmt(r[col.key], 2);
          tr.appendChild(td);
        });
        frag.appendChild(tr);
      });
      body.replaceChildren(frag);
      var total = state.shown.length;
      var label = total === 0 ? "no matching samples" :
        (start + 1).toLocaleString("en-US") + "–" + (start + page.length).toLocaleString("en-US") +
        " of " + total.toLocaleString("en-US") +
        (total < rows.length ? " (filtered from " + rows.length.toLocaleString("en-US") + ")" : "");
      counts.forEach(function (c) { c.textContent = label; });
      prevs.forEach(function (b) { b.disabled = state.page === 0; });
      nexts.forEach(function (b) { b.disabled = start + PAGE >= total; });
    }

    function turn(step, fromBottom) {
      state.page += step;
      draw();
      if (fromBottom) root.scrollIntoView();
    }

    var timer = null;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.query = search.value; apply(); }, 120);
    });
    select.addEventListener("change", function () { state.filter = select.value; apply(); });
    prevs.forEach(function (b, i) { b.addEventListener("click", function () { turn(-1, i > 0); }); });
    nexts.forEach(function (b, i) { b.addEventListener("click", function () { turn(1, i > 0); }); });
    apply();
    root.setAttribute("data-ready", "true");
  }

  var node = document.getElementById("table-data");
  var root = document.getElementById("samples");
  if (node && root) {
    loadData(node).then(function (data) {
      Table(root, data, VIEWS[root.getAttribute("data-view")](data));
    }).catch(function (err) {
      root.querySelector("#row-count").textContent = "could not read the embedded samples: " + err;
      console.error(err);
    });
  }
})();

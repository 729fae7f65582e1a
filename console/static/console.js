// The console's small script: remembered column layouts (localStorage), local times, the
// column chooser, and diffs expanded in place. Every page works without it, plainer.
(function () {
  "use strict";
  var PREFIX = "auditConsole.columns.";
  var PANEL = "auditConsole.columnPanelOpen";
  var meta = document.querySelector('meta[name="console-view"]');

  function store(key, value) {
    try {
      if (value === null) { localStorage.removeItem(key); } else { localStorage.setItem(key, value); }
    } catch (e) { /* storage disabled: the URL still carries the layout */ }
  }
  function stored(key) {
    try { return localStorage.getItem(key); } catch (e) { return null; }
  }

  // A tab opened without ?cols= shows the layout this browser remembers for it.
  if (meta) {
    var here = new URL(window.location.href);
    var mine = stored(PREFIX + meta.dataset.tab);
    if (!here.searchParams.has("cols") && mine && mine !== meta.dataset.defaultCols &&
        /^[A-Za-z0-9_.,-]+$/.test(mine)) {
      here.searchParams.set("cols", mine);
      window.location.replace(here.toString());
      return;
    }
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localText(date) {
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      " " + pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }
  function zoneName() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { return ""; }
  }

  function showLocalTimes(root) {
    root.querySelectorAll("time.local").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (!isNaN(date.getTime())) {
        el.title = el.getAttribute("datetime");
        el.textContent = localText(date);
      }
    });
  }

  function applyColumns(keys) {
    var url = new URL(window.location.href);
    url.searchParams.delete("page");
    url.searchParams.delete("at");
    var text = keys.join(",");
    if (text === meta.dataset.defaultCols) {
      store(PREFIX + meta.dataset.tab, null);
      url.searchParams.delete("cols");
    } else {
      store(PREFIX + meta.dataset.tab, text);
      url.searchParams.set("cols", text);
    }
    try { sessionStorage.setItem(PANEL, "1"); } catch (e) { /* ignore */ }
    window.location.assign(url.toString());
  }

  function setUpColumns() {
    var panel = document.getElementById("column-panel");
    var list = document.getElementById("column-list");
    if (!panel || !list || !meta) { return; }
    try {
      if (sessionStorage.getItem(PANEL) === "1") {
        panel.open = true;
        sessionStorage.removeItem(PANEL);
      }
    } catch (e) { /* ignore */ }
    function chosen() {
      var keys = [];
      list.querySelectorAll("li").forEach(function (li) {
        if (li.querySelector("input").checked) { keys.push(li.dataset.key); }
      });
      return keys;
    }
    list.addEventListener("change", function () {
      var keys = chosen();
      if (keys.length) { applyColumns(keys); }
    });
    list.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) { return; }
      var li = button.closest("li");
      if (button.classList.contains("up") && li.previousElementSibling) {
        list.insertBefore(li, li.previousElementSibling);
      } else if (button.classList.contains("down") && li.nextElementSibling) {
        list.insertBefore(li.nextElementSibling, li);
      } else {
        return;
      }
      if (li.querySelector("input").checked) { applyColumns(chosen()); }
    });
    var apply = panel.querySelector("button.apply");
    if (apply) { apply.hidden = true; }
    var reset = document.getElementById("reset-columns");
    if (reset) {
      reset.addEventListener("click", function () { store(PREFIX + meta.dataset.tab, null); });
    }
  }

  function setUpDiffs() {
    var table = document.getElementById("events");
    if (!table) { return; }
    table.addEventListener("click", function (event) {
      var link = event.target.closest("a.expand");
      if (!link) { return; }
      event.preventDefault();
      var row = link.closest("tr");
      var open = row.nextElementSibling;
      if (open && open.classList.contains("diff-row")) {
        open.remove();
        link.setAttribute("aria-expanded", "false");
        link.textContent = "▸";
        return;
      }
      var diffRow = document.createElement("tr");
      diffRow.className = "diff-row";
      var cell = document.createElement("td");
      cell.colSpan = row.children.length;
      cell.textContent = "Loading the diff…";
      diffRow.appendChild(cell);
      row.after(diffRow);
      link.setAttribute("aria-expanded", "true");
      link.textContent = "▾";
      fetch("/diff/" + encodeURIComponent(link.dataset.id) + "?fragment=1", {
        credentials: "same-origin",
        headers: { "Accept": "text/html" }
      }).then(function (response) {
        if (response.status === 401) {
          window.location.reload();
          return "";
        }
        return response.text();
      }).then(function (html) {
        // The fragment is rendered by the console with every value HTML-escaped.
        cell.innerHTML = html;
      }).catch(function () {
        cell.textContent = "The diff could not be loaded: the console did not answer.";
      });
    });
  }

  function setUpFilters() {
    var offset = String(-new Date().getTimezoneOffset());
    document.querySelectorAll("input.tzo").forEach(function (input) { input.value = offset; });
    var zone = zoneName();
    document.querySelectorAll("th .tz").forEach(function (el) {
      el.textContent = zone ? " (" + zone + ")" : " (local)";
    });
    // One filter menu open at a time.
    document.querySelectorAll("details.filter").forEach(function (details) {
      details.addEventListener("toggle", function () {
        if (!details.open) { return; }
        document.querySelectorAll("details.filter[open]").forEach(function (other) {
          if (other !== details) { other.open = false; }
        });
        var field = details.querySelector("input[name=value], select[name=value]");
        if (field) { field.focus(); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    showLocalTimes(document);
    setUpColumns();
    setUpDiffs();
    setUpFilters();
  });
})();

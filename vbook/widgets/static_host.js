// vbook static host: runs an anywidget ESM in a plain HTML page, no kernel,
// no widget manager, no network. vbook.widgets.static_html() inlines this
// script after the widget's ESM source and state (both JSON in
// <script type="application/json"> tags of the same .vbook-static element).
// The model is a small stand-in for anywidget's: get / set / save_changes /
// on / off; changes stay in the page.
(function () {
  "use strict";
  var root = document.currentScript.parentElement;
  var read = function (cls) {
    return JSON.parse(root.querySelector("script." + cls).textContent);
  };
  var esm = read("vbook-esm");
  var state = read("vbook-state");
  var mount = root.querySelector(".vbook-mount");
  var listeners = {};

  var model = {
    get: function (name) { return state[name]; },
    set: function (name, value) {
      var old = state[name];
      state[name] = value;
      if (old !== value) {
        (listeners["change:" + name] || []).slice().forEach(function (cb) { cb(); });
      }
    },
    save_changes: function () {},
    send: function () {},
    on: function (evt, cb) { (listeners[evt] = listeners[evt] || []).push(cb); },
    off: function (evt, cb) {
      if (!evt) { listeners = {}; return; }
      if (!cb) { delete listeners[evt]; return; }
      listeners[evt] = (listeners[evt] || []).filter(function (f) { return f !== cb; });
    },
  };

  // one module per distinct source, shared by every player on the page
  var cache = window.__vbookModules || (window.__vbookModules = new Map());
  var loading = cache.get(esm);
  if (!loading) {
    var url = URL.createObjectURL(new Blob([esm], { type: "text/javascript" }));
    loading = import(url);
    cache.set(esm, loading);
  }
  loading.then(function (mod) {
    var widget = mod.default || mod;
    var render = widget.render || mod.render;
    render({ model: model, el: mount });
  }).catch(function (err) {
    mount.textContent = "vbook widget failed to load: " + err;
  });
})();

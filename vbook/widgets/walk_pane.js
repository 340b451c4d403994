// ---- the page-walk pane (vbook.widgets.walk.WalkView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, PANES, describe, makeContext, render). It renders one x86-64 or EPT walk
// from the trace's meta.walk, which Python computed entirely: the address split
// into its index fields, one row per entry with its bits as labelled boxes, the
// outcome, and per event a "frame" (which row is current, which index field is
// lit, which bits are marked, the caption). Nothing here decides anything about
// paging: it indexes meta.walk.
//
// Interaction. A click on an editable bit box, a new address-field value, or a
// new address / access kind is a request sent to Python with model.send();
// Python walks again and replaces the trace, and the player rebuilds. Clicks
// are enabled only after Python has answered this page's "hello" — in a static
// page (static_host.js, nbconvert's widget manager, a notebook whose kernel is
// gone) nobody answers, so the boxes are shown but stay inert, with a note.

const WALK_HUBS = new WeakMap();

// per model: is a kernel answering (live), is a request under way, the panes to tell
function walkHub(model) {
  let hub = WALK_HUBS.get(model);
  if (!hub) {
    hub = { live: false, pending: false, local: "", views: new Set(), nextId: 1, timer: null };
    WALK_HUBS.set(model, hub);
  }
  return hub;
}

function walkNotify(hub) {
  for (const v of hub.views) v.refresh();
}

// the pane reaches its model through the context
try {
  const walkBaseContext = makeContext;
  makeContext = function makeWalkContext(model) {
    const ctx = walkBaseContext(model);
    ctx.model = model;
    return ctx;
  };
} catch (e) {
  // keep the player's own context
}

// render: say hello to Python once per view, and listen for its answers
try {
  const walkBaseRender = render;
  render = function renderWalk(args) {
    const model = args.model;
    const hub = walkHub(model);
    const onMsg = (msg) => {
      if (!msg || typeof msg !== "object" || msg.vbook !== "walk") return; // not this pane's
      if (msg.kind === "hello") hub.live = true;
      if (msg.kind === "done" || msg.kind === "error") {
        hub.pending = false;
        clearTimeout(hub.timer);
      }
      hub.local = "";
      walkNotify(hub);
    };
    const onError = () => walkNotify(hub);
    model.on("msg:custom", onMsg);
    model.on("change:error", onError);
    const cleanup = walkBaseRender(args);
    try {
      if (typeof model.send === "function") model.send({ vbook: "walk", kind: "hello", id: 0 });
    } catch (e) {
      // no kernel behind this model: the view stays static
    }
    return () => {
      model.off("msg:custom", onMsg);
      model.off("change:error", onError);
      if (typeof cleanup === "function") cleanup();
    };
  };
} catch (e) {
  // keep the player's own render
}

function walkBox(b) {
  const el = h("div", {
    class: `vp-w-f k-${b.kind}${b.set ? " on" : ""}${b.moot ? " moot" : ""}`,
    title: b.title,
    "data-key": b.key,
  }, [
    h("div", { class: "n", text: b.name }),
    h("div", { class: "v", text: b.text }),
    h("div", { class: "b", text: b.bits }),
  ]);
  if (b.edit) el.dataset.edit = b.edit;
  return el;
}

function walkPane(ctx) {
  const W = (ctx.meta || {}).walk;
  if (!W || !Array.isArray(W.frames)) {
    return { el: h("div", { class: "vp-walk", text: "this trace holds no walk (meta.walk)" }), update() {} };
  }
  const model = ctx.model;
  const hub = model ? walkHub(model) : { live: false, pending: false, local: "", views: new Set(), nextId: 1, timer: null };

  // --- the address, split into its fields
  const splitEls = W.split.map((f) =>
    h("div", { class: "vp-w-sf", title: f.title }, [
      h("div", { class: "n", text: f.name }),
      h("div", { class: "v", text: f.text }),
      h("div", { class: "b", text: f.bits }),
    ]),
  );
  const head = h("div", { class: "vp-w-head" }, [
    h("span", { class: "vp-w-addrname", text: `${W.address_name} ${W.address}` }),
    h("span", { class: "vp-w-root", title: W.root.note, text: `${W.root.name} = ${W.root.value}` }),
    h("span", { class: "vp-w-opts", text: W.options }),
  ]);
  const split = h("div", { class: "vp-w-split" }, splitEls);

  // --- one row per entry read
  const boxEls = [];
  const rowEls = W.rows.map((r, k) => {
    const boxes = {};
    const bits = h("div", { class: "vp-w-bits" }, r.boxes.map((b) => {
      const el = walkBox(b);
      boxes[b.key] = el;
      if (b.edit) {
        el.addEventListener("click", (e) => onBox(e, r, b, el));
        el.addEventListener("keydown", (e) => {
          if (!el.classList.contains("can-edit") || (e.key !== "Enter" && e.key !== " ")) return;
          if (e.target !== el) return; // keys typed into an inline editor
          e.preventDefault();
          e.stopPropagation(); // not the player's play/pause
          onBox(e, r, b, el);
        });
      }
      return el;
    }));
    boxEls.push(boxes);
    return h("div", { class: "vp-w-row" + (r.patched ? " patched" : ""), "data-level": String(r.level), "data-row": String(k) }, [
      h("div", { class: "vp-w-rowhead" }, [
        h("b", { text: r.title }),
        h("span", { class: "idx", text: `index ${r.index} (bits ${r.index_bits})` }),
        h("span", { class: "at", text: `at ${r.entry_addr} = ${r.where}` }),
      ]),
      h("div", { class: "vp-w-entry", text: `${r.entry}  ${r.flags}` }),
      bits,
      h("div", { class: "vp-w-sum", text: r.summary }),
    ]);
  });
  const rows = h("div", { class: "vp-w-rows" }, rowEls);

  // --- the outcome
  const O = W.outcome;
  const outBits = O.bits && O.bits.length
    ? h("table", { class: "vp-w-obits" }, [
        h("tbody", {}, O.bits.map((b) =>
          h("tr", { class: b.set ? "on" : "" }, [
            h("td", { class: "bit", text: `bit ${b.bit}` }),
            h("td", { class: "name", text: b.name }),
            h("td", { class: "val", text: b.set ? "1" : "0" }),
            h("td", { class: "mean", text: b.meaning }),
          ]),
        )),
      ])
    : null;
  const outEl = h("div", { class: `vp-w-out ${O.ok ? "ok" : "bad"}`, "data-kind": O.kind }, [
    h("div", { class: "vp-w-outhead", text: O.head }),
    h("table", { class: "vp-w-lines" }, [
      h("tbody", {}, O.lines.map(([a, b, c]) =>
        h("tr", {}, [h("th", { text: a }), h("td", { class: "val", text: b }), h("td", { text: c })]),
      )),
    ]),
    outBits,
  ]);

  // --- asking Python (only where it answers)
  const addrIn = h("input", { class: "vp-w-in", type: "text", value: W.address, "aria-label": W.address_name, spellcheck: "false" });
  const accSel = h("select", { class: "vp-w-acc", "aria-label": "access" },
    W.accesses.map(([v, t]) => h("option", { value: v, text: t })));
  accSel.value = W.access;
  const userCb = W.user === null || W.user === undefined ? null : h("input", { type: "checkbox", class: "vp-w-user" });
  if (userCb) userCb.checked = !!W.user;
  const walkBtn = h("button", { class: "vp-btn vp-w-walk", text: "walk" });
  const resetBtn = h("button", { class: "vp-btn vp-w-reset", text: "reset", title: "back to the first walk" });
  const status = h("div", { class: "vp-w-status", "aria-live": "polite" });
  const edits = h("ul", { class: "vp-w-edits" }, W.edits.map((t) => h("li", { text: t })));
  const form = h("div", { class: "vp-w-form" }, [
    h("label", {}, [`${W.address_name} `, addrIn]),
    h("label", {}, ["access ", accSel]),
    userCb ? h("label", {}, [userCb, " user (CPL 3)"]) : null,
    walkBtn,
    resetBtn,
  ]);
  for (const inp of [addrIn, accSel, userCb]) {
    if (inp) inp.addEventListener("keydown", (e) => {
      e.stopPropagation(); // the player's keys (space, arrows) are not for this field
      if (e.key === "Enter") walkAgain();
    });
  }

  const wrap = h("div", { class: `vp-walk mmu-${W.mmu}` }, [head, split, rows, outEl, form, status, edits]);

  function ask(req) {
    if (!hub.live || hub.pending || !model) return false;
    req.vbook = "walk";
    req.id = hub.nextId++;
    hub.pending = true;
    hub.local = "";
    try {
      model.send(req);
      clearTimeout(hub.timer);
      hub.timer = setTimeout(() => {
        if (!hub.pending) return;
        hub.pending = false;
        hub.live = false; // no answer: treat the kernel as gone (a new hello makes it live again)
        hub.local = "Python did not answer: is the kernel still running? Flipping bits needs a running kernel.";
        walkNotify(hub);
      }, 10000);
    } catch (e) {
      hub.pending = false;
      hub.live = false; // e.g. after a kernel restart: the comm is closed, the view is static now
      hub.local = `could not reach Python (${e}): flipping bits needs a running kernel.`;
    }
    walkNotify(hub);
    return true;
  }
  function walkAgain() {
    const req = { kind: "walk", address: addrIn.value, access: accSel.value };
    if (userCb) req.user = userCb.checked;
    ask(req);
  }
  walkBtn.addEventListener("click", walkAgain);
  resetBtn.addEventListener("click", () => ask({ kind: "reset" }));

  function inline(el, control, send) {
    const keep = [...el.childNodes];
    const done = () => el.replaceChildren(...keep);
    control.addEventListener("click", (e) => e.stopPropagation());
    control.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Escape") done();
      if (e.key === "Enter") { send(control.value); done(); }
    });
    control.addEventListener("blur", done);
    el.replaceChildren(control);
    control.focus();
    if (control.select) control.select();
    return control;
  }

  function onBox(e, r, b, el) {
    if (!hub.live || hub.pending) return; // static page, or waiting for Python
    if (b.edit === "flip") ask({ kind: "flip", level: r.level, bit: b.key });
    else if (b.edit === "set") {
      if (el.querySelector("input")) return;
      inline(el, h("input", { class: "vp-w-in", type: "text", value: b.text, spellcheck: "false" }),
        (v) => ask({ kind: "set", level: r.level, field: b.key, value: v }));
    } else if (b.edit === "choose") {
      if (el.querySelector("select")) return;
      const sel = h("select", { class: "vp-w-mt" }, W.mt_options.map(([v, t]) => h("option", { value: String(v), text: t })));
      sel.value = b.text.split(" ")[0];
      sel.addEventListener("change", () => ask({ kind: "set", level: r.level, field: b.key, value: Number(sel.value) }));
      inline(el, sel, () => {});
    }
  }

  const view = {
    el: wrap,
    refresh() {
      const live = hub.live;
      wrap.classList.toggle("live", live);
      wrap.classList.toggle("pending", hub.pending);
      for (const boxes of boxEls) {
        for (const el of Object.values(boxes)) {
          if (!el.dataset.edit) continue;
          el.classList.toggle("can-edit", live);
          if (live) {
            el.setAttribute("role", "button");
            el.setAttribute("tabindex", "0");
          } else {
            el.removeAttribute("role");
            el.removeAttribute("tabindex");
          }
        }
      }
      for (const c of [addrIn, accSel, userCb, walkBtn]) if (c) c.disabled = !live || hub.pending;
      resetBtn.disabled = !live || hub.pending || !W.modified;
      const err = (model && model.get("error")) || hub.local;
      status.classList.toggle("err", !!err);
      status.textContent = err || (hub.pending ? "asking Python…" : live ? W.live_note : W.static_note);
    },
  };
  for (const v of [...hub.views]) if (!v.el.isConnected) hub.views.delete(v);
  hub.views.add(view);
  view.refresh();

  let marked = [];
  function update(step) {
    const f = W.frames[step];
    if (!f) return;
    rowEls.forEach((el, k) => {
      el.classList.toggle("cur", k === f.row && !f.outcome);
      el.classList.toggle("future", k > f.row);
    });
    splitEls.forEach((el, j) => el.classList.toggle("cur", f.split.includes(j)));
    for (const el of marked) el.classList.remove("m-ok", "m-bad", "m-info");
    marked = [];
    for (const [k, key, cls] of f.marks) {
      const el = boxEls[k] && boxEls[k][key];
      if (el) {
        el.classList.add(`m-${cls}`);
        marked.push(el);
      }
    }
    outEl.classList.toggle("future", !f.outcome);
    outEl.classList.toggle("cur", !!f.outcome);
  }
  return { el: wrap, update };
}

PANES.walk = walkPane;

// Captions: the ones Python wrote for each event of the walk.
try {
  const walkBaseDescribe = describe;
  describe = function describeWalk(ctx, i) {
    const W = (ctx.meta || {}).walk;
    const f = W && Array.isArray(W.frames) ? W.frames[i] : null;
    if (f && f.caption) return f.caption;
    return walkBaseDescribe(ctx, i);
  };
} catch (e) {
  // keep the generic captions
}

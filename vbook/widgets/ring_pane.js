// ---- the virtqueue pane (vbook.widgets.ring.RingView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, PANES, describe). What it draws was noted while the run happened
// (vbook.widgets.ring.RingRecorder) and laid out in Python (ring_view); it
// arrives in trace.meta.ring_view:
//   * queues: [{key, title, index, layouts: [{at, num, desc, avail, used, …}],
//               born, snaps: [state …], parts: [part …],
//               versions: [[event, snap id | -1, changed keys]],
//               hot: {event: {text, chain?, ind?, avail?, used?, fields?, heads?}}}];
//     a state: avail {flags, idx, used_event, slots: [part id]}, used {flags, idx,
//     avail_event, slots: [part id]}, dev, owners, desc_note: part ids, descs and
//     event_note: [part id], warn [text], pending. The parts are the
//     rows, each once: an avail slot {k, slot, head, state}, a used slot {k, slot,
//     id, len, state}, a descriptor {i, addr, len, flags, next, owner, head,
//     is_head, ind?}, a gap {gap}, the indices {last_avail_idx, …}, the owner counts,
//     a note (text);
//   * kinds[fn] = caption note of each QEMU function; help {event_idx, flags}.
// At step s a card shows the last version at or before s, marks the keys that
// changed exactly at s, and the chain / slots / fields the event s touched.
// Nothing is computed here beyond that lookup.

const rgVersion = lastVersion; // trace_player.js

function ringView(ctx) {
  const v = ctx.meta.ring_view;
  return v && typeof v === "object" ? v : null;
}

const RG_OWNERS = [
  ["driver", "driver", "free: the guest's to fill"],
  ["avail", "avail", "published in the avail ring, not yet popped"],
  ["device", "device", "popped by QEMU: in flight"],
  ["used", "used", "returned in the used ring"],
];

const RG_DEV = [
  ["last_avail_idx", "last_avail_idx", "the next avail entry QEMU pops"],
  ["shadow_avail_idx", "shadow_avail_idx", "avail->idx as QEMU last read it"],
  ["used_idx", "used_idx", "the next used entry QEMU fills"],
  ["signalled_used", "signalled_used", "used_idx at the last interrupt decision"],
  ["inuse", "inuse", "elements popped and not pushed back"],
];

function rgField(key, name, value, cls) {
  return h("span", { class: "vp-rg-f" + (cls ? " " + cls : ""), "data-k": key }, [
    h("span", { class: "name", text: name }),
    h("span", { class: "val", text: String(value) }),
  ]);
}

function rgTable(head, rows) {
  return h("table", { class: "vp-rg-table" }, [
    h("thead", {}, [h("tr", {}, head.map((t) => h("th", { text: t })))]),
    h("tbody", {}, rows),
  ]);
}

function rgGap(cols, n, what) {
  return h("tr", { class: "gap" }, [h("td", { colspan: String(cols), text: `… ${n} ${what} …` })]);
}

// a state with its parts looked up
function rgUnpack(q, snap) {
  const p = q.parts || [];
  return {
    ...snap,
    dev: p[snap.dev],
    owners: p[snap.owners],
    desc_note: p[snap.desc_note],
    event_note: snap.event_note.map((k) => p[k]),
    descs: snap.descs.map((k) => p[k]),
    avail: { ...snap.avail, slots: snap.avail.slots.map((k) => p[k]) },
    used: { ...snap.used, slots: snap.used.slots.map((k) => p[k]) },
  };
}

function rgCard(q, snap, changed, hot, lay, help) {
  const ch = new Set(changed || []);
  const hotFields = new Set(hot ? hot.fields || [] : []);
  const hotChain = new Set(hot ? hot.chain || [] : []);
  const hotAvail = new Set(hot ? hot.avail || [] : []);
  const hotUsed = new Set(hot ? hot.used || [] : []);
  const mark = (el, key, isHot) => {
    if (ch.has(key)) el.classList.add("changed");
    if (isHot || hotFields.has(key)) el.classList.add("hot");
    return el;
  };
  const parts = [];
  parts.push(h("div", { class: "vp-rg-now", text: hot && hot.text ? `this event: ${hot.text}` : "" }));
  if (!snap) {
    parts.push(h("div", { class: "vp-rg-empty", text: "no ring: the guest has not written QUEUE_PFN" }));
    return parts;
  }
  const d = snap.dev;
  const devEls = RG_DEV.map(([k, name, tipText]) => {
    let val = d[k];
    if (k === "signalled_used") val += d.signalled_used_valid ? " (valid)" : " (not valid)";
    const el = rgField(`dev.${k}`, name, val);
    el.title = tipText;
    return mark(el, `dev.${k}`);
  });
  devEls.push(mark(rgField("dev.notification", "notifications", d.notification ? "on" : "off"), "dev.notification"));
  devEls.push(rgField("dev.event_idx", "EVENT_IDX", d.event_idx ? "on" : "off"));
  if (d.broken) devEls.push(rgField("dev.broken", "broken", "yes", "bad"));
  parts.push(h("div", { class: "vp-rg-dev" }, [h("span", { class: "who", text: "QEMU VirtQueue" }), ...devEls]));

  const owners = RG_OWNERS.map(([k, name, tipText]) => {
    const el = h("span", { class: `vp-rg-own owner-${k}`, title: tipText }, [
      h("span", { class: "name", text: name }),
      h("span", { class: "val", text: String(snap.owners[k]) }),
    ]);
    return el;
  });
  parts.push(h("div", { class: "vp-rg-owners" }, [h("span", { class: "who", text: "descriptors owned by" }), ...owners]));

  // the avail ring
  const av = snap.avail;
  const avRows = av.slots.map((s) => {
    if (s.gap !== undefined) return rgGap(4, s.gap, "entries");
    const tr = h("tr", { class: `st-${s.state}`, "data-k": `avail.slot.${s.slot}`, "data-idx": String(s.k) }, [
      h("td", { class: "idx", text: String(s.k) }),
      h("td", { class: "slot", text: `[${s.slot}]` }),
      h("td", { class: "head", text: String(s.head) }),
      h("td", { class: "state", text: s.state }),
    ]);
    return mark(tr, `avail.slot.${s.slot}`, hotAvail.has(s.k));
  });
  const avail = h("div", { class: "vp-rg-area vp-rg-avail" }, [
    h("div", { class: "vp-rg-h", text: `avail ring (driver → device) @ ${lay ? lay.avail : "?"}` }),
    h("div", { class: "vp-rg-fields" }, [
      mark(rgField("avail.flags", "flags", av.flags), "avail.flags"),
      mark(rgField("avail.idx", "idx", av.idx), "avail.idx"),
      mark(rgField("avail.used_event", "used_event", av.used_event, d.event_idx ? "" : "unused"), "avail.used_event"),
    ]),
    rgTable(["idx", "slot", "head", ""], avRows),
  ]);
  // the used ring
  const us = snap.used;
  const usRows = us.slots.map((s) => {
    if (s.gap !== undefined) return rgGap(5, s.gap, "entries");
    const tr = h("tr", { class: `st-${s.state}`, "data-k": `used.slot.${s.slot}`, "data-idx": String(s.k) }, [
      h("td", { class: "idx", text: String(s.k) }),
      h("td", { class: "slot", text: `[${s.slot}]` }),
      h("td", { class: "head", text: String(s.id) }),
      h("td", { class: "len", text: String(s.len) }),
      h("td", { class: "state", text: s.state }),
    ]);
    return mark(tr, `used.slot.${s.slot}`, hotUsed.has(s.k));
  });
  const used = h("div", { class: "vp-rg-area vp-rg-used" }, [
    h("div", { class: "vp-rg-h", text: `used ring (device → driver) @ ${lay ? lay.used : "?"}` }),
    h("div", { class: "vp-rg-fields" }, [
      mark(rgField("used.flags", "flags", us.flags), "used.flags"),
      mark(rgField("used.idx", "idx", us.idx), "used.idx"),
      mark(rgField("used.avail_event", "avail_event", us.avail_event, d.event_idx ? "" : "unused"), "used.avail_event"),
    ]),
    rgTable(["idx", "slot", "id", "len", ""], usRows),
  ]);
  parts.push(h("div", { class: "vp-rg-rings" }, [avail, used]));

  // the descriptor table
  const dRows = [];
  for (const r of snap.descs) {
    if (r.gap !== undefined) {
      dRows.push(rgGap(6, r.gap, "descriptors"));
      continue;
    }
    const own = r.owner + (r.head !== null && r.head !== undefined && !r.is_head ? ` (chain of ${r.head})` : r.is_head ? " · head" : "");
    const tr = h("tr", { class: `owner-${r.owner}` + (r.is_head ? " is-head" : ""), "data-k": `desc.${r.i}`, "data-desc": String(r.i) }, [
      h("td", { class: "idx", text: String(r.i) }),
      h("td", { class: "addr", text: r.addr }),
      h("td", { class: "len", text: String(r.len) }),
      h("td", { class: "flags", text: r.flags }),
      h("td", { class: "next", text: r.next }),
      h("td", { class: "owner", text: own }),
    ]);
    dRows.push(mark(tr, `desc.${r.i}`, hotChain.has(r.i)));
    if (r.ind) {
      const hotInd = new Set(hot ? hot.ind || [] : []);
      for (const e of r.ind) {
        const sub = h("tr", { class: "ind" }, [
          h("td", { class: "idx", text: `↳ ${e.i}` }),
          h("td", { class: "addr", text: e.addr }),
          h("td", { class: "len", text: String(e.len) }),
          h("td", { class: "flags", text: e.flags }),
          h("td", { class: "next", text: e.next }),
          h("td", { class: "owner", text: "indirect table" }),
        ]);
        if (hotChain.has(r.i) && hotInd.has(e.i)) sub.classList.add("hot");
        dRows.push(sub);
      }
      if (r.ind_more) dRows.push(rgGap(6, r.ind_more, "more indirect entries"));
    }
  }
  const descBox = h("div", { class: "vp-rg-area vp-rg-desc" }, [
    h("div", { class: "vp-rg-h", text: `descriptor table @ ${lay ? lay.desc : "?"}` }),
    snap.descs.length
      ? rgTable(["#", "addr", "len", "flags", "next", "owner"], dRows)
      : h("div", { class: "vp-rg-empty", text: "no descriptor is in a ring entry yet" }),
    h("div", { class: "vp-rg-note", text: snap.desc_note }),
  ]);
  parts.push(descBox);
  const helpText = (help || {})[d.event_idx ? "event_idx" : "flags"];
  parts.push(h("div", { class: "vp-rg-events" }, [
    ...snap.event_note.map((t) => h("div", { class: "ev", text: t })),
    helpText ? h("div", { class: "help", text: helpText }) : null,
  ]));
  if (snap.warn && snap.warn.length) {
    parts.push(h("div", { class: "vp-rg-warn" }, snap.warn.map((t) => h("div", { text: t }))));
  }
  return parts;
}

function ringPane(ctx) {
  const view = ringView(ctx) || { queues: [], kinds: {}, recorded: false };
  const note = view.recorded
    ? view.queues.length
      ? null
      : h("div", {
          class: "vp-rg-note",
          text: view.bound
            ? "no virtqueue had a ring during this run"
            : "no virtqueue: the RingRecorder was given no machine (RingRecorder(machine))",
        })
    : h("div", {
        class: "vp-rg-note",
        text:
          "Not recorded with a RingRecorder: run with run_loop.run(guest, backend, machine=m, " +
          "trace=RingRecorder(m)) to see the rings.",
      });
  const cards = view.queues.map((q) => {
    const title = h("span", { class: "t", text: q.title });
    const lay = h("span", { class: "lay" });
    const body = h("div", { class: "vp-rg-body" });
    const el = h("div", { class: "vp-rg-card", "data-vq": String(q.index), "data-key": q.key }, [
      h("div", { class: "vp-rg-title" }, [title, lay]),
      body,
    ]);
    return { q, el, lay, body, shown: null };
  });
  const wrap = h("div", { class: "vp-ring" }, [note, h("div", { class: "vp-rg-cards" }, cards.map((c) => c.el))]);

  function update(step) {
    for (const c of cards) {
      const q = c.q;
      const k = rgVersion(q.versions, step);
      const ver = k >= 0 ? q.versions[k] : null;
      const sid = ver ? ver[1] : -1;
      const atStep = ver && ver[0] === step && step > 0;
      const hot = (q.hot || {})[String(step)] || null;
      const li = rgVersion(q.layouts.map((l) => [l.at]), step);
      const lay = li >= 0 ? q.layouts[li] : null;
      const key = `${sid}|${atStep ? step : ""}|${hot ? step : ""}|${li}`;
      if (key === c.shown) continue;
      c.shown = key;
      c.lay.textContent = lay
        ? ` num ${lay.num} · desc ${lay.desc} · avail ${lay.avail} · used ${lay.used} · ${lay.size} bytes (align ${lay.align})`
        : "";
      const snap = sid >= 0 ? rgUnpack(q, q.snaps[sid]) : null;
      c.body.replaceChildren(...rgCard(q, snap, atStep ? ver[2] : [], hot, lay, view.help));
      c.el.classList.toggle("hot", !!hot);
      c.el.classList.toggle("future", step < q.born);
    }
  }

  return { el: wrap, update };
}

PANES.ring = ringPane;

// Captions for QEMU's ring functions; the other events keep the player's own.
try {
  const baseDescribeRg = describe;
  describe = function describeWithRing(ctx, i) {
    const view = ringView(ctx);
    const ev = ctx.events[i];
    const d = ev.data || {};
    const note = view && d.vq !== undefined && (view.kinds || {})[d.fn];
    if (!note) return baseDescribeRg(ctx, i);
    return { text: ev.label, note };
  };
} catch (e) {
  // keep the generic captions
}

// ---- the packet-flow pane (vbook.widgets.packet_flow.PacketFlowView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, s, tip, hex, spacedHex, PANES, describe, shortLabel). It draws the
// trace's meta.packet_flow, which Python computed entirely: the lane of every
// event (guest / KVM / QEMU vCPU thread / QEMU main loop / host), each frame's
// journey, the decoded frames, the counters where they change. Here we only
// index it: one mark per event at its time step, a marker that moves, what the
// current event is and does, the counters so far. The pane has its own ◀ ▶,
// which step by event, by VM exit or through one frame's journey (optionally
// showing only that journey's events); the player's controls step by event.

const PF_SLOTS = [3, 5, 8, 12, 16, 24, 32, 44, 60];
const PF_LANE_H = 30;
const PF_TOP = 18; // the journeys strip above the lanes
const PF_X0 = 10;
const PF_SLOT = 14; // px per event, every event shown
const PF_ONLY_SLOT = 44; // px per event, one journey's events

function pfIndex(ctx) {
  if (ctx.pfIndex) return ctx.pfIndex;
  const v = ctx.meta.packet_flow || {};
  const n = ctx.events.length;
  const lanes = Array.isArray(v.lanes) ? v.lanes : [];
  const laneNo = {};
  lanes.forEach((l, k) => (laneNo[l.id] = k));
  const lane = (v.lane || []).map((id) => laneNo[id] ?? 0);
  const journeys = Array.isArray(v.journeys) ? v.journeys : [];
  const inJourney = Array.from({ length: n }, () => []);
  journeys.forEach((j, k) => {
    for (const i of j.events) if (i >= 0 && i < n) inJourney[i].push(k);
  });
  // each counter's value at every event: the change list, filled forward
  const names = Array.isArray(v.counter_names) ? v.counter_names : [];
  const values = {};
  for (const [key] of names) {
    const arr = new Array(n).fill(0);
    const changes = (v.counters || {})[key] || [];
    let c = 0;
    let cur = 0;
    for (let i = 0; i < n; i++) {
      while (c < changes.length && changes[c][0] <= i) cur = changes[c++][1];
      arr[i] = cur;
    }
    values[key] = arr;
  }
  ctx.pfIndex = {
    v, lanes, lane, journeys, inJourney, names, values,
    frames: v.frames || {},
    exits: Array.isArray(v.exits) ? v.exits : ctx.exits,
    start: v.start || { by: "event", journey: null, only: false },
  };
  return ctx.pfIndex;
}

// "TX 1", "RX 2"
const pfName = (j) => `${String(j.dir).toUpperCase()} ${j.n}`;

function pfLaneOf(ctx, i) {
  const idx = pfIndex(ctx);
  return idx.lanes[idx.lane[i]] || { id: "", title: "" };
}

function flowPane(ctx) {
  const idx = pfIndex(ctx);
  const n = ctx.events.length;
  if (!ctx.meta.packet_flow || idx.lane.length !== n) {
    const el = h("div", { class: "vp-pflow", text: "This trace has no meta.packet_flow: show it with vbook.widgets.PacketFlowView." });
    return { el, update() {} };
  }

  // ---- toolbar: what ◀ ▶ step through
  const mode = h("select", { class: "vp-pf-mode", title: "what ◀ ▶ step through" }, [
    h("option", { value: "event", text: "every event" }),
    h("option", { value: "exit", text: "VM exits" }),
  ]);
  if (idx.journeys.length) {
    const grp = h("optgroup", { label: "one frame's journey" });
    idx.journeys.forEach((j) => grp.append(h("option", { value: j.id, text: j.title })));
    mode.append(grp);
  }
  const prev = h("button", { class: "vp-btn vp-pf-prev", title: "previous stop", text: "◀" });
  const next = h("button", { class: "vp-btn vp-pf-next", title: "next stop", text: "▶" });
  const pos = h("span", { class: "vp-pf-pos" });
  const onlyBox = h("input", { type: "checkbox", class: "vp-pf-only" });
  const only = h("label", { class: "vp-pf-onlylabel", title: "hide the events of everything else" }, [
    onlyBox, " only this frame's events",
  ]);
  const zoomOut = h("button", { class: "vp-btn", title: "zoom out", text: "−" });
  const zoomIn = h("button", { class: "vp-btn", title: "zoom in", text: "+" });
  const zoomFit = h("button", { class: "vp-btn", title: "fit the width", text: "fit" });
  const bar = h("div", { class: "vp-pf-bar" }, [
    h("span", { class: "vp-pf-by", text: "step by" }), mode, prev, next, pos, only,
    h("span", { class: "vp-pf-zoom" }, [zoomOut, zoomIn, zoomFit]),
  ]);

  // ---- lanes
  const labels = h("div", { class: "vp-pf-labels" }, [
    h("div", { class: "vp-pf-jlabel", style: `height:${PF_TOP}px`, text: "frames" }),
    ...idx.lanes.map((l) =>
      h("div", { class: `vp-pf-lane-label lane-${l.id}`, style: `height:${PF_LANE_H}px` }, [
        h("span", { text: l.title }), l.sub ? h("small", { text: l.sub }) : null,
      ]),
    ),
  ]);
  const scroller = h("div", { class: "vp-pf-scroll" });
  const body = h("div", { class: "vp-pf-body" }, [labels, scroller]);

  // ---- what happens now, the frame, the counters
  const nowLabel = h("div", { class: "vp-pf-label" });
  const nowFn = h("div", { class: "vp-pf-fn" });
  const nowWhere = h("div", { class: "vp-pf-where" });
  const now = h("div", { class: "vp-pf-box vp-pf-now" }, [h("div", { class: "vp-pf-head", text: "this event" }), nowLabel, nowFn, nowWhere]);
  const frameText = h("div", { class: "vp-pf-frame-text" });
  const frameHex = h("div", { class: "vp-pf-hex" });
  const journeyText = h("div", { class: "vp-pf-journey" });
  const frameBox = h("div", { class: "vp-pf-box vp-pf-frame" }, [h("div", { class: "vp-pf-head", text: "the frame" }), frameText, frameHex, journeyText]);
  const cells = {};
  const rows = idx.names.map(([key, label]) => {
    cells[key] = h("td", { class: "vp-pf-val", "data-key": key });
    return h("tr", { "data-key": key }, [h("td", { text: label }), cells[key]]);
  });
  const counters = h("div", { class: "vp-pf-box vp-pf-counters" }, [
    h("div", { class: "vp-pf-head", text: "so far" }),
    h("table", {}, [h("tbody", {}, rows)]),
  ]);
  const info = h("div", { class: "vp-pf-info" }, [now, frameBox, counters]);
  const wrap = h("div", { class: "vp-pflow" }, [bar, body, info]);

  // ---- state
  let sel = idx.start.journey || (idx.start.by === "exit" ? "exit" : "event");
  let onlyOn = !!idx.start.only && !!idx.start.journey;
  let slot = onlyOn ? PF_ONLY_SLOT : PF_SLOT;
  let g = null; // the drawn layout
  let shown = -1;

  const journeyNo = () => idx.journeys.findIndex((j) => j.id === sel);
  const visible = () => {
    const k = journeyNo();
    return k >= 0 && onlyOn ? idx.journeys[k].events.filter((i) => i < n) : ctx.events.map((_, i) => i);
  };
  const stops = () => {
    const k = journeyNo();
    if (k >= 0) return idx.journeys[k].events.filter((i) => i < n);
    if (sel === "exit" && idx.exits.length) return idx.exits;
    return visible();
  };

  function build() {
    const vis = visible();
    const at = new Array(n).fill(-1);
    vis.forEach((i, k) => (at[i] = k));
    const xOf = (k) => PF_X0 + k * slot + slot / 2;
    const laneY = (l) => PF_TOP + l * PF_LANE_H + PF_LANE_H / 2;
    const width = PF_X0 * 2 + vis.length * slot;
    const height = PF_TOP + idx.lanes.length * PF_LANE_H + 2;
    const root = s("svg", { class: "vp-pf-svg", width, height, viewBox: `0 0 ${width} ${height}` });
    idx.lanes.forEach((l, k) => s("rect", { class: `vp-pf-lane lane-${l.id}`, x: 0, y: PF_TOP + k * PF_LANE_H, width, height: PF_LANE_H }, root));
    // VM exits: a thin line across the lanes
    for (const e of idx.exits) {
      if (at[e] < 0) continue;
      const x = xOf(at[e]);
      s("line", { class: "vp-pf-exitline", x1: x, x2: x, y1: PF_TOP, y2: height - 2 }, root);
    }
    // the journeys strip
    const jk = journeyNo();
    idx.journeys.forEach((j, k) => {
      const ks = j.events.map((i) => at[i]).filter((p) => p >= 0);
      if (!ks.length) return;
      const x0 = xOf(Math.min(...ks)) - slot / 2 + 1;
      const x1 = xOf(Math.max(...ks)) + slot / 2 - 1;
      const r = s("rect", {
        class: `vp-pf-jbar ${j.dir}${j.fate === "dropped" || j.fate === "queued" ? " lost" : ""}${k === jk ? " sel" : ""}`,
        x: x0, y: 3, width: Math.max(2, x1 - x0), height: PF_TOP - 6, rx: 3, "data-j": j.id,
      }, root);
      tip(r, j.title);
      r.addEventListener("click", () => selectJourney(j.id));
    });
    // the whole flow, faint
    const pts = vis.map((i, k) => `${xOf(k).toFixed(1)},${laneY(idx.lane[i]).toFixed(1)}`);
    if (pts.length > 1) s("path", { class: "vp-pf-flow", d: "M" + pts.join(" L") }, root);
    const hop = s("path", { class: "vp-pf-hop", d: "M0,0" }, root);
    const markLayer = s("g", {}, root);
    const marks = new Array(n).fill(null);
    const r = Math.max(1.5, Math.min(5, slot / 2 - 0.5));
    vis.forEach((i, k) => {
      const ev = ctx.events[i];
      const x = xOf(k);
      const y = laneY(idx.lane[i]);
      const isFrame = String(i) in idx.frames;
      const cls = ["vp-pf-mark", `lane-${pfLaneOf(ctx, i).id}`, `actor-${ev.actor}`];
      if (isFrame) cls.push("frame");
      if (ev.actor === "kvm" && (ev.kind === "exit" || ev.kind === "vmexit")) cls.push("exit");
      for (const jj of idx.inJourney[i]) cls.push(`in-${idx.journeys[jj].dir}`);
      if (jk >= 0 && !idx.inJourney[i].includes(jk)) cls.push("dim");
      const gEl = s("g", { class: cls.join(" "), "data-i": i }, markLayer);
      s("rect", { class: "hit", x: x - slot / 2, y: y - PF_LANE_H / 2, width: slot, height: PF_LANE_H }, gEl);
      if (isFrame) s("rect", { class: "dot", x: x - r, y: y - r, width: 2 * r, height: 2 * r, transform: `rotate(45 ${x} ${y})` }, gEl);
      else s("circle", { class: "dot", cx: x, cy: y, r }, gEl);
      if (slot >= 40) {
        // labels alternate below and above the marks so that neighbours do not collide
        const max = Math.floor((2 * slot) / 5.6);
        let t = shortLabel(ev);
        if (t.length > max) t = t.slice(0, max - 1) + "…";
        s("text", { x, y: k % 2 ? y - r - 3 : y + r + 9 }, gEl).textContent = t;
      }
      tip(gEl, `${i + 1}. ${describe(ctx, i).text}`);
      gEl.addEventListener("click", () => wrap.dispatchEvent(new CustomEvent("vp-seek", { detail: i, bubbles: true })));
      marks[i] = gEl;
    });
    const marker = s("g", { class: "vp-pf-marker" }, root);
    s("circle", { r: 8 }, marker);
    scroller.replaceChildren(root);
    g = { vis, at, xOf, laneY, marks, marker, hop, past: -1, width };
    wrap.dataset.visible = String(vis.length);
    wrap.dataset.mode = sel;
    wrap.dataset.only = onlyOn ? "1" : "0";
    onlyBox.checked = onlyOn;
    onlyBox.disabled = journeyNo() < 0;
    only.classList.toggle("off", journeyNo() < 0);
    mode.value = sel;
  }

  // the event the marker stands on: the step, or the last visible event before it
  function standOn(step) {
    if (g.at[step] >= 0) return step;
    let best = -1;
    for (const i of g.vis) if (i <= step) best = i;
    return best >= 0 ? best : g.vis[0] ?? -1;
  }

  function update(step, prevStep, animate) {
    if (!g) build();
    if (shown >= 0 && g.marks[shown]) g.marks[shown].classList.remove("cur");
    shown = step;
    if (g.marks[step]) g.marks[step].classList.add("cur");
    // past marks: toggle only the range that changed
    const lo = Math.min(g.past, step - 1);
    const hi = Math.max(g.past, step - 1);
    for (let i = Math.max(0, lo + 1); i <= hi && i < n; i++) g.marks[i]?.classList.toggle("past", i <= step - 1);
    g.past = step - 1;

    const on = standOn(step);
    if (on >= 0) {
      const x = g.xOf(g.at[on]);
      const y = g.laneY(idx.lane[on]);
      g.marker.style.transition = animate ? `transform ${Math.round(animate)}ms ease-in-out` : "none";
      g.marker.style.transform = `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px)`;
      g.marker.classList.toggle("off", on !== step);
      // the hop from the previous visible event
      const k = g.at[on];
      if (k > 0) {
        const p = g.vis[k - 1];
        g.hop.setAttribute("d", `M${g.xOf(k - 1).toFixed(1)},${g.laneY(idx.lane[p]).toFixed(1)} L${x.toFixed(1)},${y.toFixed(1)}`);
      } else g.hop.setAttribute("d", "M0,0");
      const w = scroller.clientWidth;
      if (w > 0 && (x < scroller.scrollLeft + 30 || x > scroller.scrollLeft + w - 30)) scroller.scrollLeft = Math.max(0, x - w / 2);
    }
    wrap.dataset.step = String(step);
    showInfo(step);
    showPos(step);
  }

  function showInfo(step) {
    const ev = ctx.events[step];
    const d = ev.data || {};
    const lane = pfLaneOf(ctx, step);
    nowLabel.textContent = describe(ctx, step).text;
    nowFn.textContent = typeof d.fn === "string" ? `${d.fn}()${d.file ? ` — ${d.file}` : ""}` : "";
    const thread = typeof d.thread === "string" ? ` · thread ${d.thread}` : "";
    nowWhere.textContent = `${lane.title}${thread}`;
    nowWhere.className = `vp-pf-where lane-${lane.id}`;

    const fr = idx.frames[String(step)];
    const js = idx.inJourney[step];
    const j = js.length ? idx.journeys[js[0]] : null;
    if (fr) {
      frameText.textContent = fr.text;
      frameText.classList.remove("carried");
      const more = fr.len - fr.hdr > 64 ? " …" : "";
      const hdr = fr.hdr ? ` (a ${fr.hdr}-byte virtio-net header, then the frame)` : "";
      frameHex.textContent = `${fr.len} bytes${hdr}: ${spacedHex(fr.hex)}${more}`;
    } else if (j) {
      const where = j.dir === "rx" && j.fate === "delivered" && step >= j.delivered
        ? "in the guest's ring"
        : j.dir === "tx" && step >= j.tap ? "on the tap" : "in flight";
      frameText.textContent = `${where}: ${j.frame.text}`;
      frameText.classList.add("carried");
      frameHex.textContent = "";
    } else {
      frameText.textContent = "no frame in this event";
      frameText.classList.add("carried");
      frameHex.textContent = "";
    }
    if (j) {
      const k = j.events.indexOf(step);
      let fate = "";
      if (j.dir === "rx") {
        if (j.fate === "delivered") fate = step >= j.delivered ? " — in the guest's ring" : "";
        else fate = ` — ${j.fate === "queued" ? "still in QEMU's queue" : "dropped"}: ${j.why}`;
      } else if (step >= j.tap) fate = " — written to the tap";
      journeyText.textContent = `${pfName(j)}: step ${k + 1} of ${j.events.length}${fate}`;
    } else journeyText.textContent = "";

    for (const [key] of idx.names) {
      const vals = idx.values[key];
      const v = vals[step];
      cells[key].textContent = String(v);
      cells[key].parentElement.classList.toggle("changed", step > 0 ? vals[step - 1] !== v : v !== 0);
    }
  }

  function showPos(step) {
    const st = stops();
    const k = st.indexOf(step);
    const jk = journeyNo();
    const what = jk >= 0 ? `${pfName(idx.journeys[jk])}: step` : sel === "exit" ? "VM exit" : "event";
    if (k >= 0) pos.textContent = `${what} ${k + 1} of ${st.length}`;
    else {
      const before = st.filter((i) => i < step).length;
      pos.textContent = before === 0 ? `before ${what} 1 of ${st.length}`
        : before === st.length ? `after ${what} ${st.length} of ${st.length}`
          : `between ${what} ${before} and ${before + 1} of ${st.length}`;
    }
    prev.disabled = !st.some((i) => i < step);
    next.disabled = !st.some((i) => i > step);
  }

  const seek = (i) => wrap.dispatchEvent(new CustomEvent("vp-seek", { detail: i, bubbles: true }));
  prev.addEventListener("click", () => {
    const st = stops().filter((i) => i < shown);
    if (st.length) seek(st[st.length - 1]);
  });
  next.addEventListener("click", () => {
    const st = stops().find((i) => i > shown);
    if (st !== undefined) seek(st);
  });

  function relayout() {
    const cur = shown;
    shown = -1;
    build();
    if (cur >= 0) update(cur, -1, 0);
  }
  function selectJourney(id) {
    sel = id;
    relayout();
    const j = idx.journeys[journeyNo()];
    if (j && !j.events.includes(shown)) seek(j.start);
  }
  mode.addEventListener("change", () => {
    const v = mode.value;
    if (v === "event" || v === "exit") {
      sel = v;
      if (onlyOn) slot = PF_SLOT;
      onlyOn = false;
      relayout();
    } else selectJourney(v);
  });
  onlyBox.addEventListener("change", () => {
    onlyOn = onlyBox.checked && journeyNo() >= 0;
    slot = onlyOn ? PF_ONLY_SLOT : PF_SLOT;
    relayout();
  });
  zoomOut.addEventListener("click", () => ((slot = [...PF_SLOTS].reverse().find((z) => z < slot) ?? slot), relayout()));
  zoomIn.addEventListener("click", () => ((slot = PF_SLOTS.find((z) => z > slot) ?? slot), relayout()));
  zoomFit.addEventListener("click", () => {
    const w = (scroller.clientWidth || 600) - 2 * PF_X0;
    slot = Math.max(1, Math.min(60, w / Math.max(1, visible().length)));
    relayout();
  });

  return { el: wrap, update };
}

PANES.flow = flowPane;

// The caption: the event's label, its function and file, and the frame it carries.
try {
  const pfBaseDescribe = describe;
  const pfBaseShort = shortLabel;
  describe = function describeWithFlow(ctx, i) {
    const base = pfBaseDescribe(ctx, i);
    const v = ctx.meta.packet_flow;
    if (!v) return base;
    const ev = ctx.events[i];
    const d = ev.data || {};
    let out = base;
    if (typeof d.fn === "string" && ev.actor !== "guest" && ev.actor !== "kvm" && !(ev.actor === "qemu" && ev.kind === "ioctl")) {
      const lane = pfLaneOf(ctx, i);
      out = { text: ev.label, note: `${d.fn}() in ${d.file || "?"} — ${lane.title}${typeof d.thread === "string" ? ` (thread ${d.thread})` : ""}` };
    }
    const fr = (v.frames || {})[String(i)];
    if (fr) out = { text: out.text, note: `${out.note ? out.note + " — " : ""}frame: ${fr.text}` };
    return out;
  };
  shortLabel = function shortLabelWithFlow(ev) {
    const d = ev.data || {};
    if (ev.actor === "qemu" && ev.kind === "ioctl") return pfBaseShort(ev);
    if (typeof d.fn === "string" && (ev.actor === "qemu" || ev.actor === "device" || ev.actor === "host")) return d.fn;
    return pfBaseShort(ev);
  };
} catch (e) {
  // keep the generic captions
}

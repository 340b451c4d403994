// vbook trace player: steps through a finished vbook.trace.Trace in the browser.
//
// Python hands over the whole trace in one synced traitlet (`trace`, exactly
// Trace.to_dict()), which panes to draw (`panes`), the struct kvm_run layout
// taken from vbook.models.kvm_api (`kvm_run`) and 64-bit integers JavaScript
// numbers cannot hold (`bigints`). Everything else happens here: play, pause,
// step, scrub, speed. `step` is the index of the current event and is written
// back to the model, so it also works in a static page with no kernel.
//
// Plain DOM + SVG, no imports: it must work offline.

const SVG_NS = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------- DOM helpers

function h(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function s(tag, attrs = {}, parent = null) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function tip(node, text) {
  s("title", {}, node).textContent = text;
}

// ----------------------------------------------------------------- formatting

function toBig(v) {
  if (typeof v === "bigint") return v;
  if (typeof v === "number" && Number.isInteger(v)) return BigInt(v);
  return null;
}

function hex(v) {
  const b = toBig(v);
  if (b === null) return String(v);
  return b < 0n ? "-0x" + (-b).toString(16) : "0x" + b.toString(16);
}

function hexToBytes(str) {
  const out = [];
  if (typeof str !== "string") return out;
  for (let i = 0; i + 1 < str.length; i += 2) out.push(parseInt(str.slice(i, i + 2), 16));
  return out;
}

function spacedHex(str) {
  return hexToBytes(str).map((b) => b.toString(16).padStart(2, "0")).join(" ");
}

// Python's repr of the bytes as text: 48 → 'H', 0a → '\n'.
function pyRepr(bytes) {
  let out = "";
  for (const b of bytes) {
    if (b === 0x5c) out += "\\\\";
    else if (b === 0x27) out += "\\'";
    else if (b === 0x0a) out += "\\n";
    else if (b === 0x0d) out += "\\r";
    else if (b === 0x09) out += "\\t";
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += "\\x" + b.toString(16).padStart(2, "0");
  }
  return "'" + out + "'";
}

function fmtValue(v) {
  if (typeof v === "bigint") return hex(v);
  if (Array.isArray(v)) return "[" + v.map(fmtValue).join(", ") + "]";
  if (v && typeof v === "object") return "{…}";
  if (typeof v === "string") return v;
  return String(v);
}

// ------------------------------------------------------------- trace helpers

// A pane's recorded state is a list of versions [event index, …] in event order:
// the index of the last version at or before `step`, or -1 (panes share this).
function lastVersion(versions, step) {
  let lo = 0;
  let hi = versions.length - 1;
  if (hi < 0 || versions[0][0] > step) return -1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (versions[mid][0] <= step) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Lanes top to bottom. vhost is a kernel thread; "host" is host user space.
const LANES = [
  { id: "guest", title: "guest" },
  { id: "kernel", title: "KVM (kernel)" },
  { id: "user", title: "user space", sub: "QEMU + devices" },
];
const LANE_OF = { guest: 0, kvm: 1, vhost: 1, qemu: 2, device: 2, host: 2 };

const isExit = (ev) => ev.actor === "kvm" && ev.kind === "exit";
const isIoctl = (ev) => ev.actor === "qemu" && ev.kind === "ioctl";
const isRun = (ev) => isIoctl(ev) && ev.label === "KVM_RUN";
const isGuestRun = (ev) => ev.actor === "guest" && ev.kind === "run";
const reasonName = (ev) => String(ev.label || "").replace(/^KVM_EXIT_/, "");

function makeContext(model) {
  const trace = model.get("trace") || {};
  const events = Array.isArray(trace.events) ? trace.events : [];
  const meta = trace.meta || {};
  const big = model.get("bigints") || {};
  const kr = model.get("kvm_run") || {};
  const ctx = { events, meta, big, kr };

  // a value of event i's data; 64-bit integers come exact from `bigints`
  ctx.val = (i, key, j) => {
    const path = j === undefined ? `${i}/${key}` : `${i}/${key}/${j}`;
    if (path in big) return BigInt(big[path]);
    const v = (events[i].data || {})[key];
    return j === undefined ? v : Array.isArray(v) ? v[j] : undefined;
  };
  ctx.exitName = (n) => (kr.exit_names || {})[String(n)] || `KVM_EXIT_${n}`;

  // groups: the events from one qemu ioctl up to the next — one box per exit
  const groups = [];
  const groupOf = new Array(events.length);
  let cur = null;
  events.forEach((ev, i) => {
    if (cur === null || isIoctl(ev)) {
      cur = { start: i, end: i, exit: -1, reply: -1, guest: false };
      groups.push(cur);
    }
    cur.end = i;
    groupOf[i] = groups.length - 1;
    if (ev.actor === "guest") cur.guest = true;
    if (cur.exit < 0 && isExit(ev)) cur.exit = i;
    else if (cur.exit >= 0 && cur.reply < 0 && ev.actor === "device") cur.reply = i;
  });
  ctx.groups = groups;
  ctx.groupOf = groupOf;

  // exits in order; exitNo[i] = how many exits happened up to event i
  ctx.exits = [];
  ctx.exitNo = new Array(events.length);
  ctx.lastExit = new Array(events.length);
  events.forEach((ev, i) => {
    if (isExit(ev)) ctx.exits.push(i);
    ctx.exitNo[i] = ctx.exits.length;
    ctx.lastExit[i] = ctx.exits.length ? ctx.exits[ctx.exits.length - 1] : -1;
  });
  return ctx;
}

function describeExit(ctx, i) {
  const ev = ctx.events[i];
  const d = ev.data || {};
  let out = d.exit_reason !== undefined ? ctx.exitName(d.exit_reason) : `KVM_EXIT_${reasonName(ev)}`;
  if (d.port !== undefined) {
    out += ` ${d.direction} port ${hex(ctx.val(i, "port"))} size ${d.size}`;
    if (d.count !== undefined && d.count !== 1) out += ` count ${d.count}`;
    if (d.data) out += ` data ${spacedHex(d.data)} (${pyRepr(hexToBytes(d.data))})`;
  } else if (d.phys_addr !== undefined) {
    out += ` ${d.is_write ? "write" : "read"} phys_addr ${hex(ctx.val(i, "phys_addr"))}`;
    out += ` len ${d.len}`;
    if (d.data) out += ` data ${spacedHex(d.data)}`;
  } else if (d.nr !== undefined) {
    const name = (ctx.kr.hypercalls || {})[String(d.nr)];
    out += ` nr ${d.nr}${name ? ` (${name})` : ""}`;
    if (Array.isArray(d.args)) out += ` args [${d.args.map((_, j) => hex(ctx.val(i, "args", j))).join(", ")}]`;
  }
  if (d.detail) out += ` — ${d.detail}`;
  return out;
}

function summarize(ctx, i) {
  const d = ctx.events[i].data || {};
  const parts = [];
  for (const k of Object.keys(d).slice(0, 6)) {
    const v = ctx.val(i, k);
    parts.push(`${k}=${typeof v === "bigint" ? hex(v) : fmtValue(v)}`);
  }
  return parts.join(" ");
}

// The caption of event i: {text, note}.
function describe(ctx, i) {
  const ev = ctx.events[i];
  const d = ev.data || {};
  if (isExit(ev)) {
    const n = d.exit_reason;
    return {
      text: describeExit(ctx, i),
      note:
        "VM exit: KVM could not finish this in the kernel, so KVM_RUN returns to user space " +
        `with kvm_run.exit_reason = ${n} (${ctx.exitName(n)}).`,
    };
  }
  if (isIoctl(ev)) {
    const nth = typeof d.n === "number" ? ` (run ${d.n + 1})` : "";
    return {
      text: `ioctl(vcpu_fd, ${ev.label})${nth}`,
      note: isRun(ev)
        ? "QEMU's vCPU thread asks the kernel to run the vCPU: kvm_arch_vcpu_ioctl_run, which " +
          "enters the guest (vcpu_enter_guest) and runs it until something needs the host."
        : "",
    };
  }
  if (ev.actor === "kvm" && ev.kind === "entry") {
    return {
      text: `VM entry${d.rip !== undefined ? ` at rip ${hex(ctx.val(i, "rip"))}` : ""}`,
      note:
        "KVM loads the guest's state and switches the CPU to guest mode " +
        "(VMLAUNCH/VMRESUME on Intel, VMRUN on AMD). The rip is what user space reads " +
        "before KVM_RUN: right after an IN or OUT exit, Linux 6.1 on VMX still shows that " +
        "instruction, and KVM_RUN first finishes it (complete_fast_pio_in/_out skip it), " +
        "so the guest goes on past it.",
    };
  }
  if (isGuestRun(ev)) {
    const from = d.rip !== undefined ? ` from rip ${hex(ctx.val(i, "rip"))}` : "";
    const to = d.exit_rip !== undefined ? `, exits at rip ${hex(ctx.val(i, "exit_rip"))}` : "";
    return {
      text: `the guest runs${from}${to}`,
      note: "Guest instructions run directly on the CPU; the host sees nothing until the guest " +
        "does something it may not do on its own, and the CPU exits to KVM.",
    };
  }
  if (ev.actor === "device" && ev.kind === "io") {
    const reply = d.reply;
    return {
      text: `device: ${ev.label}` + (reply ? ` → answers ${spacedHex(reply)}` : ""),
      note: reply
        ? "QEMU dispatches on exit_reason to the device model; the data it answers goes into " +
          "kvm_run, and the next KVM_RUN completes the guest's instruction."
        : "QEMU dispatches on exit_reason to the device model, which handles the access; " +
          "then the loop calls KVM_RUN again.",
    };
  }
  if (ev.actor === "qemu" && ev.kind === "stop") {
    return {
      text: `QEMU stops the vCPU loop: ${ev.label}`,
      note:
        ev.label === "hlt"
          ? "The guest halted and nothing will interrupt it, so the loop ends."
          : "The loop ends here.",
    };
  }
  const sum = summarize(ctx, i);
  return { text: `${ev.actor} ${ev.kind}: ${ev.label}${sum ? " · " + sum : ""}`, note: "" };
}

function shortLabel(ev) {
  if (isIoctl(ev)) return ev.label.replace(/^KVM_/, "");
  if (isExit(ev)) return reasonName(ev);
  if (ev.kind === "entry") return "entry";
  if (isGuestRun(ev)) return "runs";
  if (ev.actor === "device") return "dev";
  if (ev.kind === "stop") return "stop";
  return (ev.label || ev.kind).split(/\s+/)[0];
}

// --------------------------------------------------------------- timeline pane

const ZOOMS = [4, 6, 9, 13, 18, 24, 30, 40, 50, 62];
let arrowIds = 0; // marker ids must be unique on a page with several players

function timelinePane(ctx) {
  const LANE_H = 42;
  const TOP = 20;
  const BOX_H = 24;
  const laneY = (l) => TOP + l * LANE_H + LANE_H / 2;
  const HEIGHT = TOP + LANES.length * LANE_H + 4;

  const scroller = h("div", { class: "vp-scroll" });
  const labels = h(
    "div",
    { class: "vp-lanes" },
    LANES.map((l) =>
      h("div", { class: `vp-lane-label lane-${l.id}`, style: `height:${LANE_H}px` }, [
        h("span", { text: l.title }),
        l.sub ? h("small", { text: l.sub }) : null,
      ]),
    ),
  );
  let zoom = 40; // px per event slot
  const zoomOut = h("button", { class: "vp-btn", title: "zoom out", text: "−" });
  const zoomIn = h("button", { class: "vp-btn", title: "zoom in", text: "+" });
  const zoomFit = h("button", { class: "vp-btn", title: "fit the whole run", text: "fit" });
  const tools = h("div", { class: "vp-zoom", style: `height:${TOP}px` }, [zoomOut, zoomIn, zoomFit]);
  labels.prepend(tools);
  const wrap = h("div", { class: "vp-timeline" }, [
    h("div", { class: "vp-timeline-body" }, [labels, scroller]),
  ]);

  let g = null; // geometry + element refs of the current layout
  let shown = -1;

  function layout(slotW) {
    const evs = ctx.events;
    const pos = new Array(evs.length);
    const boxes = [];
    const pad = Math.min(3, slotW * 0.1);
    const gap = Math.max(1, Math.min(10, slotW * 0.3));
    let x = 8;
    for (const grp of ctx.groups) {
      const x0 = x;
      for (let i = grp.start; i <= grp.end; i++) {
        const ev = evs[i];
        const lane = LANE_OF[ev.actor] ?? 2;
        const w = isGuestRun(ev) ? slotW * 1.6 : slotW;
        const p = { x: x + w / 2, w, lane, y: laneY(lane) };
        x += w;
        if (isRun(ev) && !grp.guest) {
          p.run = { x0: x + 1, x1: x + slotW * 1.3 - 1 };
          x += slotW * 1.3;
        }
        // where the marker rests: a KVM_RUN ends inside the guest
        p.rest = p.run ? { x: (p.run.x0 + p.run.x1) / 2, y: laneY(0) } : { x: p.x, y: p.y };
        pos[i] = p;
      }
      boxes.push({ x0: x0 - pad, x1: x + pad });
      x += gap;
    }
    // the path the marker follows to reach event i (from where event i-1 left it)
    const hop = (i) => {
      const p = pos[i];
      const pts = [];
      if (i > 0) {
        const r = pos[i - 1].rest;
        pts.push(r);
        const from = Math.round((r.y - TOP) / LANE_H - 0.5);
        if (Math.abs(from - p.lane) === 2) pts.push({ x: (r.x + p.x) / 2, y: laneY(1) });
      }
      pts.push({ x: p.x, y: p.y });
      if (p.run) {
        pts.push({ x: p.x + slotW * 0.5, y: laneY(1) });
        pts.push({ x: p.run.x0, y: laneY(0) });
        pts.push(p.rest);
      }
      return pts;
    };
    return { slotW, pos, boxes, width: x + 8, hop };
  }

  function build() {
    const slotW = zoom;
    const geo = layout(slotW);
    const root = s("svg", {
      class: "vp-svg" + (slotW < 22 ? " compact" : ""),
      width: geo.width,
      height: HEIGHT,
      viewBox: `0 0 ${geo.width} ${HEIGHT}`,
    });
    LANES.forEach((l, k) =>
      s("rect", { class: `vp-lane lane-${l.id}`, x: 0, y: TOP + k * LANE_H, width: geo.width, height: LANE_H }, root),
    );
    const grpEls = ctx.groups.map((grp, k) => {
      const b = geo.boxes[k];
      const r = s("rect", {
        class: "vp-group" + (k % 2 ? " odd" : ""),
        x: b.x0, y: 2, width: b.x1 - b.x0, height: HEIGHT - 4, rx: Math.min(5, (b.x1 - b.x0) / 4),
      }, root);
      const ex = grp.exit;
      let title = ex >= 0 ? `#${ctx.exitNo[ex]} ${reasonName(ctx.events[ex])}` : "setup";
      if (title.length * 6.5 > b.x1 - b.x0) title = ex >= 0 ? `${ctx.exitNo[ex]}` : "";
      if (title.length * 6.5 <= b.x1 - b.x0) {
        s("text", { class: "vp-group-title", x: b.x0 + 4, y: 14 }, root).textContent = title;
      }
      return r;
    });
    // the whole flow, faint; the current hop drawn over it
    const flow = [];
    for (let i = 0; i < ctx.events.length; i++) {
      const pts = geo.hop(i);
      flow.push((i === 0 ? "M" : "L") + pts.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" L"));
    }
    s("path", { class: "vp-flow", d: flow.join(" ") }, root);
    const arrowId = `vp-arrow-${++arrowIds}`;
    const mk = s("marker", {
      id: arrowId, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    }, s("defs", {}, root));
    s("path", { class: "vp-arrowhead", d: "M0,0 L10,5 L0,10 z" }, mk);
    const hopEl = s("path", { class: "vp-hop", d: "M0,0", "marker-end": `url(#${arrowId})` }, root);
    const runEls = [];
    const runLayer = s("g", {}, root); // guest-run bars, under the marker, under the boxes
    const markerLayer = s("g", {}, root);
    const boxEls = ctx.events.map((ev, i) => {
      const p = geo.pos[i];
      const bw = slotW >= 12 ? p.w - 6 : Math.max(1.5, p.w * 0.6);
      const cap = describe(ctx, i).text;
      if (p.run) {
        const rr = s("rect", {
          class: "vp-run", x: p.run.x0, y: laneY(0) - BOX_H / 2 + 4,
          width: Math.max(1, p.run.x1 - p.run.x0), height: BOX_H - 8, rx: 3,
        }, runLayer);
        tip(rr, "the guest runs");
        runEls[i] = rr;
      }
      const gEl = s("g", { class: `vp-ev actor-${ev.actor}${isGuestRun(ev) ? " run" : ""}`, "data-i": i }, root);
      s("rect", { x: p.x - bw / 2, y: p.y - BOX_H / 2, width: bw, height: BOX_H, rx: 4 }, gEl);
      const maxChars = Math.floor((bw - 4) / 5.7);
      if (maxChars >= 2) {
        let t = shortLabel(ev);
        if (t.length > maxChars) t = t.slice(0, maxChars - 1) + "…";
        s("text", { x: p.x, y: p.y + 4 }, gEl).textContent = t;
      }
      tip(gEl, `${i + 1}. ${cap}`);
      return gEl;
    });
    const marker = s("g", { class: "vp-marker" }, markerLayer);
    s("circle", { r: 7 }, marker);
    scroller.replaceChildren(root);
    g = { geo, root, grpEls, boxEls, runEls, hopEl, marker, anim: null, past: -1 };
    for (const [i, el] of boxEls.entries()) el.addEventListener("click", () => wrap.dispatchEvent(new CustomEvent("vp-seek", { detail: i, bubbles: true })));
  }

  function setPast(upto) {
    // events before the current one are "past": toggle only the range that changed
    const lo = Math.min(g.past, upto);
    const hi = Math.max(g.past, upto);
    for (let i = Math.max(0, lo + 1); i <= hi && i < g.boxEls.length; i++) {
      g.boxEls[i].classList.toggle("past", i <= upto);
    }
    g.past = upto;
  }

  function update(step, prev, animate) {
    if (!g) build();
    const { geo } = g;
    if (shown >= 0) {
      g.boxEls[shown].classList.remove("cur");
      g.runEls[shown]?.classList.remove("cur");
      g.grpEls[ctx.groupOf[shown]].classList.remove("cur");
    }
    shown = step;
    g.boxEls[step].classList.add("cur");
    g.runEls[step]?.classList.add("cur");
    g.grpEls[ctx.groupOf[step]].classList.add("cur");
    setPast(step - 1);

    const pts = geo.hop(step);
    g.hopEl.setAttribute("d", "M" + pts.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" L"));
    const end = pts[pts.length - 1];
    const tf = (p) => `translate(${p.x.toFixed(1)}px, ${p.y.toFixed(1)}px)`;
    if (g.anim) g.anim.cancel();
    g.anim = null;
    g.marker.style.transform = tf(end);
    if (animate && pts.length > 1 && g.marker.animate) {
      let total = 0;
      const lens = [0];
      for (let k = 1; k < pts.length; k++) {
        total += Math.hypot(pts[k].x - pts[k - 1].x, pts[k].y - pts[k - 1].y);
        lens.push(total);
      }
      if (total > 0) {
        const frames = pts.map((p, k) => ({ transform: tf(p), offset: lens[k] / total }));
        g.anim = g.marker.animate(frames, { duration: animate, easing: "ease-in-out" });
      }
    }
    // keep the current event in view
    const sc = scroller;
    const w = sc.clientWidth;
    if (w > 0) {
      const x0 = Math.min(geo.pos[step].x, end.x);
      const x1 = Math.max(geo.pos[step].x, end.x);
      if (x0 < sc.scrollLeft + 30 || x1 > sc.scrollLeft + w - 30) {
        sc.scrollLeft = Math.max(0, (x0 + x1) / 2 - w / 2);
      }
    }
  }

  function rezoom(z) {
    zoom = z;
    const cur = shown;
    shown = -1;
    build();
    if (cur >= 0) update(cur, -1, 0);
  }
  zoomOut.addEventListener("click", () => rezoom([...ZOOMS].reverse().find((z) => z < zoom) ?? zoom));
  zoomIn.addEventListener("click", () => rezoom(ZOOMS.find((z) => z > zoom) ?? zoom));
  zoomFit.addEventListener("click", () => {
    // the widest slot whose layout still fits the visible width
    const w = scroller.clientWidth || 600;
    let lo = 1;
    let hi = ZOOMS[ZOOMS.length - 1];
    if (layout(hi).width <= w) lo = hi;
    for (let k = 0; k < 20 && hi - lo > 0.05; k++) {
      const mid = (lo + hi) / 2;
      if (layout(mid).width <= w) lo = mid;
      else hi = mid;
    }
    rezoom(lo);
  });

  return { el: wrap, update };
}

// --------------------------------------------------------------- kvm_run pane

function kvmRunPane(ctx) {
  const kr = ctx.kr;
  const offsets = kr.offsets || {};
  const head = h("div", { class: "vp-kr-head" });
  const map = h("div", { class: "vp-kr-map" });
  const tbody = h("tbody");
  const table = h("table", { class: "vp-kr-table" }, [
    h("thead", {}, [
      h("tr", {}, ["offset", "field", "type", "value"].map((t) => h("th", { text: t }))),
    ]),
    tbody,
  ]);
  const wrap = h("div", { class: "vp-kvmrun" }, [head, map, table]);
  let shown = -2;

  // the value of one C field after exit event i
  function fieldValue(i, member, f) {
    const [name, , , key] = f;
    const ev = ctx.events[i];
    const d = ev.data || {};
    const grp = ctx.groups[ctx.groupOf[i]];
    const reply = grp.reply >= 0 ? (ctx.events[grp.reply].data || {}).reply : null;
    if (member === "io" && name === "direction") {
      const n = (kr.io_directions || {})[d.direction];
      return n === undefined ? String(d.direction) : `${n} (KVM_EXIT_IO_${String(d.direction).toUpperCase()})`;
    }
    if (member === "io" && name === "data_offset") {
      return `${hex(kr.pio_data_offset)} (page KVM_PIO_PAGE_OFFSET of the vCPU mmap)`;
    }
    if (member === "mmio" && name === "data") {
      if (d.is_write) return d.data ? `${spacedHex(d.data)} (written by the guest)` : "";
      return reply ? `${spacedHex(reply)} (filled in by user space)` : "(user space fills this in)";
    }
    if (member === "mmio" && name === "is_write") return d.is_write ? "1" : "0";
    if (member === "hypercall" && name === "nr") {
      const hn = (kr.hypercalls || {})[String(d.nr)];
      return `${d.nr}${hn ? ` (${hn})` : ""}`;
    }
    if (key === null || key === undefined || !(key in d)) return "—";
    const v = ctx.val(i, key);
    if (Array.isArray(v)) return "[" + v.map((_, j) => hex(ctx.val(i, key, j))).join(", ") + "]";
    if (name === "port" || name === "phys_addr") return hex(v);
    return fmtValue(v);
  }

  // rows of struct kvm_run after exit event i: [{path, off, type, size, value}]
  function rowsFor(i) {
    if (i < 0) return [];
    const ev = ctx.events[i];
    const d = ev.data || {};
    const rows = [];
    const n = d.exit_reason;
    for (const [name, type, size] of kr.header || []) {
      if (name === "exit_reason") {
        rows.push({ path: name, off: offsets[name], type, size, value: `${n} (${ctx.exitName(n)})` });
      }
    }
    const u = (kr.union || {})[String(n)];
    if (u) {
      for (const f of u.fields) {
        const path = `${u.member}.${f[0]}`;
        rows.push({ path, off: offsets[path], type: f[1], size: f[2], value: fieldValue(i, u.member, f) });
      }
      if (u.member === "io") {
        const grp = ctx.groups[ctx.groupOf[i]];
        const reply = grp.reply >= 0 ? (ctx.events[grp.reply].data || {}).reply : null;
        const bytes = d.direction === "out" ? d.data : reply;
        const who = d.direction === "out" ? "written by the guest" : "filled in by user space";
        rows.push({
          path: "data area", off: null, type: `__u8[${(d.size || 0) * (d.count || 1)}]`, size: 0,
          value: bytes ? `${spacedHex(bytes)} ${pyRepr(hexToBytes(bytes))} (${who})` : `(${who})`,
          where: "run + io.data_offset",
        });
      }
    } else if (d.detail) {
      rows.push({ path: "(no union member)", off: null, type: "", size: 0, value: d.detail });
    }
    return rows;
  }

  function update(step) {
    const i = ctx.lastExit[step];
    if (i === shown) return;
    shown = i;
    if (i < 0) {
      head.textContent = "struct kvm_run — KVM_RUN has not returned yet";
      table.style.display = "none";
      tbody.replaceChildren();
      map.replaceChildren();
      return;
    }
    const k = ctx.exitNo[i];
    const prevExit = k >= 2 ? ctx.exits[k - 2] : -1;
    const before = new Map(rowsFor(prevExit).map((r) => [r.path, r.value]));
    const rows = rowsFor(i);
    for (const r of rows) r.changed = before.get(r.path) !== r.value;
    table.style.display = "";
    head.textContent =
      `struct kvm_run after exit ${k} of ${ctx.exits.length}` +
      (kr.sizeof ? ` (sizeof ${kr.sizeof})` : "") +
      " — highlighted fields changed since the previous exit";
    tbody.replaceChildren(
      ...rows.map((r) =>
        h("tr", { class: r.changed ? "changed" : "" }, [
          h("td", { class: "off", text: r.off === null || r.off === undefined ? r.where || "" : `${r.off} (${hex(r.off)})` }),
          h("td", { class: "fld", text: r.path }),
          h("td", { class: "typ", text: r.type }),
          h("td", { class: "val", text: r.value }),
        ]),
      ),
    );
    drawMap(rows);
  }

  // a byte map of the start of struct kvm_run: where each field lives
  function drawMap(rows) {
    const placed = rows.filter((r) => typeof r.off === "number" && r.size > 0);
    let end = 56;
    for (const r of placed) end = Math.max(end, r.off + r.size);
    end = Math.ceil(end / 8) * 8;
    const CW = 9;
    const X0 = 2;
    const W = X0 + end * CW + 2;
    const root = s("svg", { class: "vp-kr-svg", width: W, height: 46, viewBox: `0 0 ${W} 46` });
    for (let b = 0; b < end; b++) {
      s("rect", { class: b >= 32 ? "byte union" : "byte", x: X0 + b * CW, y: 14, width: CW - 1, height: 18 }, root);
      if (b % 8 === 0) s("text", { class: "tick", x: X0 + b * CW, y: 42 }, root).textContent = String(b);
    }
    const ul = s("text", { class: "tick", x: X0 + 32 * CW, y: 10 }, root);
    ul.textContent = "union (selected by exit_reason) →";
    for (const r of placed) {
      const x = X0 + r.off * CW;
      const w = Math.min(r.size, end - r.off) * CW - 1;
      const gEl = s("g", { class: "field" + (r.changed ? " changed" : "") }, root);
      s("rect", { x, y: 14, width: w, height: 18, rx: 2 }, gEl);
      const name = r.path.split(".").pop();
      if (name.length * 6 < w) s("text", { x: x + w / 2, y: 27 }, gEl).textContent = name;
      tip(gEl, `${r.path} @${r.off}, ${r.type}: ${r.value}`);
    }
    map.replaceChildren(root);
  }

  return { el: wrap, update };
}

// ---------------------------------------------------------------- events pane

function eventsPane(ctx) {
  const items = ctx.events.map((ev, i) =>
    h("li", { class: `actor-${ev.actor}`, "data-i": i }, [
      h("span", { class: "n", text: String(i + 1) }),
      h("span", { class: "actor", text: ev.actor }),
      h("span", { class: "kind", text: ev.kind }),
      h("span", { class: "label", text: describe(ctx, i).text }),
    ]),
  );
  const list = h("ol", { class: "vp-events" }, items);
  for (const [i, li] of items.entries()) li.addEventListener("click", () => list.dispatchEvent(new CustomEvent("vp-seek", { detail: i, bubbles: true })));
  let shown = -1;
  function update(step) {
    if (shown >= 0) items[shown].classList.remove("cur");
    shown = step;
    const li = items[step];
    li.classList.add("cur");
    if (li.offsetTop < list.scrollTop || li.offsetTop + li.offsetHeight > list.scrollTop + list.clientHeight) {
      list.scrollTop = li.offsetTop - list.clientHeight / 2;
    }
  }
  return { el: list, update };
}

const PANES = { timeline: timelinePane, kvm_run: kvmRunPane, events: eventsPane };

// --------------------------------------------------------------------- player

const SPEEDS = [0.5, 1, 2, 4, 8, 16, 32];

// button icons as inline SVG: no icon font, no unicode glyphs a font may lack
function icon(d) {
  return () => {
    const e = s("svg", { class: "vp-icon", viewBox: "0 0 16 16", width: 14, height: 14, "aria-hidden": "true" });
    s("path", { d }, e);
    return e;
  };
}
const ICONS = {
  first: icon("M3 3h2v10H3z M13 3v10L6 8z"),
  back: icon("M12 3v10L5 8z"),
  play: icon("M4 2.5v11L13.5 8z"),
  pause: icon("M4 3h3v10H4z M9 3h3v10H9z"),
  forward: icon("M4 3v10l7-5z M11 3h2v10h-2z"),
  last: icon("M3 3v10l7-5z M11 3h2v10h-2z"),
};

function render({ model, el: host }) {
  const root = h("div", { class: "vbook-player", tabindex: "0" });
  host.replaceChildren(root);

  const btn = (icon, title) => {
    const b = h("button", { class: "vp-btn", title, "aria-label": title });
    b.append(ICONS[icon]());
    return b;
  };
  const bFirst = btn("first", "first (Home)");
  const bBack = btn("back", "step back (←)");
  const bPlay = btn("play", "play / pause (space)");
  const bFwd = btn("forward", "step forward (→)");
  const bLast = btn("last", "last (End)");
  bPlay.classList.add("vp-play");
  const slider = h("input", { class: "vp-slider", type: "range", min: "0", max: "0", value: "0", "aria-label": "scrub" });
  const speed = h(
    "select",
    { class: "vp-speed", title: "steps per second" },
    SPEEDS.map((v) => h("option", { value: String(v), text: `${v}/s` })),
  );
  const counter = h("span", { class: "vp-counter" });
  const title = h("div", { class: "vp-title" });
  const paneBox = h("div", { class: "vp-panes" });
  const capText = h("div", { class: "vp-caption-text" });
  const capNote = h("div", { class: "vp-caption-note" });
  const caption = h("div", { class: "vp-caption", "aria-live": "polite" }, [capText, capNote]);
  const controls = h("div", { class: "vp-controls" }, [bFirst, bBack, bPlay, bFwd, bLast, slider, speed, counter]);
  root.append(title, paneBox, caption, controls);

  let ctx = null;
  let panes = [];
  let stops = [];
  let cur = -1;
  let timer = null;

  const interval = () => 1000 / (Number(model.get("speed")) || 2);
  const clamp = (i) => Math.max(0, Math.min(ctx.events.length - 1, Math.trunc(Number(i) || 0)));
  // index in `stops` of the last stop at or before event `step`
  const stopIndex = (step) => {
    let lo = 0;
    let hi = stops.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (stops[mid] <= step) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };

  function build() {
    pause();
    ctx = makeContext(model);
    const names = String(model.get("panes") || "events").split(/[\s,+]+/).filter((n) => n in PANES);
    panes = (names.length ? names : ["events"]).map((n) => PANES[n](ctx));
    paneBox.replaceChildren(...panes.map((p) => p.el));
    const onlyExits = names.length === 1 && names[0] === "kvm_run" && ctx.exits.length > 0;
    stops = onlyExits ? ctx.exits.slice() : ctx.events.map((_, i) => i);
    slider.max = String(Math.max(0, stops.length - 1));
    const t = ctx.meta.title;
    title.textContent = t ? String(t) : "";
    title.style.display = t ? "" : "none";
    cur = -1;
    if (!ctx.events.length) {
      capText.textContent = "empty trace";
      capNote.textContent = "";
      counter.textContent = "0 events";
      return;
    }
    show(model.get("step"), 0);
    // a view that stops only at exits starts at the first one
    if (cur < stops[0]) go(stops[0], 0);
  }

  function show(step, animate) {
    const t0 = performance.now();
    step = clamp(step);
    const prev = cur;
    cur = step;
    for (const p of panes) p.update(step, prev, animate);
    slider.value = String(stopIndex(step));
    const d = describe(ctx, step);
    capText.textContent = d.text;
    capNote.textContent = d.note;
    const k = ctx.exitNo[step];
    counter.textContent = `event ${step + 1}/${ctx.events.length}` +
      (ctx.exits.length ? ` · exit ${k}/${ctx.exits.length}` : "");
    root.dataset.step = String(step);
    root.dataset.renderMs = (performance.now() - t0).toFixed(2);
  }

  function go(step, animate = 0) {
    if (!ctx || !ctx.events.length) return;
    step = clamp(step);
    if (step === cur) return;
    show(step, animate);
    if (model.get("step") !== step) {
      model.set("step", step);
      model.save_changes();
    }
  }

  function forward(animate) {
    const k = stopIndex(cur);
    const next = stops[cur < stops[k] ? k : k + 1];
    if (next === undefined) return false;
    // animate only a move to the very next event: the marker follows one hop
    go(next, next === cur + 1 ? animate : 0);
    return true;
  }
  function back() {
    const k = stopIndex(cur);
    const target = stops[k] < cur ? stops[k] : stops[k - 1];
    if (target !== undefined) go(target, 0);
  }

  function tick() {
    const ms = interval();
    if (!forward(Math.min(450, ms * 0.7))) {
      pause();
      return;
    }
    if (stopIndex(cur) >= stops.length - 1) pause();
    else timer = setTimeout(tick, ms);
  }
  function play() {
    if (!ctx || ctx.events.length < 2) return;
    if (stopIndex(cur) >= stops.length - 1) go(stops[0], 0);
    clearTimeout(timer);
    timer = setTimeout(tick, Math.min(250, interval()));
    bPlay.replaceChildren(ICONS.pause());
    root.classList.add("playing");
  }
  function pause() {
    clearTimeout(timer);
    timer = null;
    bPlay.replaceChildren(ICONS.play());
    root.classList.remove("playing");
  }
  const toggle = () => (timer === null ? play() : pause());

  bFirst.addEventListener("click", () => (pause(), go(stops[0] ?? 0)));
  bLast.addEventListener("click", () => (pause(), go(stops[stops.length - 1] ?? 0)));
  bBack.addEventListener("click", () => (pause(), back()));
  bFwd.addEventListener("click", () => (pause(), forward(300)));
  bPlay.addEventListener("click", toggle);
  slider.addEventListener("input", () => (pause(), go(stops[Number(slider.value)] ?? 0)));
  speed.addEventListener("change", () => {
    model.set("speed", Number(speed.value));
    model.save_changes();
  });
  root.addEventListener("vp-seek", (e) => (pause(), go(e.detail)));
  root.addEventListener("keydown", (e) => {
    const keys = {
      ArrowRight: () => (pause(), forward(300)),
      ArrowLeft: () => (pause(), back()),
      " ": toggle,
      Home: () => (pause(), go(stops[0] ?? 0)),
      End: () => (pause(), go(stops[stops.length - 1] ?? 0)),
    };
    if (keys[e.key]) {
      e.preventDefault();
      keys[e.key]();
    }
  });

  const syncSpeed = () => {
    const v = Number(model.get("speed")) || 2;
    if (!SPEEDS.includes(v)) speed.append(h("option", { value: String(v), text: `${v}/s` }));
    speed.value = String(v);
  };
  const onStep = () => {
    const s = model.get("step");
    if (ctx && ctx.events.length && clamp(s) !== cur) show(s, clamp(s) === cur + 1 ? 300 : 0);
  };
  const onRebuild = () => build();
  model.on("change:step", onStep);
  model.on("change:speed", syncSpeed);
  for (const k of ["trace", "panes", "kvm_run", "bigints"]) model.on(`change:${k}`, onRebuild);

  syncSpeed();
  build();

  return () => {
    pause();
    model.off("change:step", onStep);
    model.off("change:speed", syncSpeed);
    for (const k of ["trace", "panes", "kvm_run", "bigints"]) model.off(`change:${k}`, onRebuild);
  };
}

export default { render };

// ---- the kernel pane (vbook.widgets.kernel_loop.KernelLoopView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, s, tip, hex, PANES, describe, shortLabel). It renders the trace
// vbook.models.kvm_kernel.kvm_run records, on three lanes:
//
//   user space   qemu ioctl KVM_RUN … qemu handle (kvm_handle_io, …)
//   kernel       kvm call / return at their call depth (kvm_vcpu_ioctl 0 …
//                handler 6, its helpers deeper), kvm entry (VMLAUNCH/VMRESUME),
//                kvm vmexit (data.where: kernel | user | blocked), kvm exit
//                (KVM_RUN returns, kvm_run.exit_reason)
//   guest        guest run
//
// Each VM exit gets a band from the exit to where it was resolved: a band that
// stays below the user-space lane is an exit KVM handled itself. A side panel
// shows the kernel call stack at the current step. Nothing is computed here
// that the model did not record.

const KL_SLOT = 16;
const KL_ROW = 12;
const KL_DEPTHS = 12;
const KL_USER_H = 34;
const KL_GUEST_H = 34;
const KL_GAP = 6;
const KL_KTOP = KL_USER_H + KL_GAP;
const KL_KBOT = KL_KTOP + KL_DEPTHS * KL_ROW;
const KL_GTOP = KL_KBOT + KL_GAP;
const KL_H = KL_GTOP + KL_GUEST_H + 14;

const klIs = (ev, actor, kind) => ev.actor === actor && ev.kind === kind;
const KL_WHERE = {
  kernel: "handled in the kernel: the handler returned 1 and KVM re-entered the guest — user space never saw it",
  user: "the handler returned 0: KVM_RUN returns to user space",
  blocked: "the handler returned 1, but the vCPU is halted: it sleeps in the kernel until an interrupt",
};

// per event: where it is drawn, the kernel stack, and which VM exit it belongs to
function kernelIndex(ctx) {
  if (ctx.klIndex) return ctx.klIndex;
  const evs = ctx.events;
  const pos = [];
  const stacks = [];
  const exits = []; // VM exits: {i, end, where, name}
  let stack = [];
  let cur = null; // the VM exit being handled
  evs.forEach((ev, i) => {
    const d = ev.data || {};
    const x = 8 + i * KL_SLOT + KL_SLOT / 2;
    let y;
    let shown = stack;
    if (ev.actor === "qemu") {
      y = KL_USER_H / 2;
      stack = [];
      shown = [];
      if (cur && cur.where === "user" && ev.kind === "handle") {
        cur.end = i;
        cur = null;
      }
    } else if (ev.actor === "guest") {
      y = KL_GTOP + KL_GUEST_H / 2;
      shown = stack.concat([{ fn: "(the guest runs)", depth: 6, guest: true }]);
    } else {
      const depth = Math.max(0, Math.min(KL_DEPTHS - 1, Number(d.depth) || 0));
      y = KL_KTOP + depth * KL_ROW + KL_ROW / 2;
      if (ev.kind === "call" || ev.kind === "entry") {
        stack = stack.filter((f) => f.depth < depth);
        stack.push({ fn: d.fn || ev.label, file: d.file || "", depth, insn: d.insn });
        shown = stack;
        if (ev.kind === "entry" && cur && cur.where !== "user") {
          cur.end = i;
          cur = null;
        }
      } else if (ev.kind === "return") {
        shown = stack.filter((f) => f.depth <= depth)
          .map((f) => (f.depth === depth ? { ...f, ret: d.ret } : f));
        stack = stack.filter((f) => f.depth < depth);
      } else if (ev.kind === "vmexit") {
        stack = stack.filter((f) => f.depth < 5);
        shown = stack.concat([{ fn: `VM exit: ${ev.label}`, depth: 5, exit: true }]);
        if (cur) cur.end = i - 1;
        cur = { i, end: evs.length - 1, where: d.where || "kernel", name: d.name || ev.label };
        exits.push(cur);
        y = KL_KBOT - 2;
      } else if (ev.kind === "exit") {
        stack = [];
        shown = [{ fn: `KVM_RUN returns: ${ev.label}`, depth: 0, kvmrun: true }];
        y = KL_KTOP - 2;
      } else {
        shown = stack;
      }
    }
    pos.push({ x, y });
    stacks.push(shown);
  });
  const counts = { kernel: 0, user: 0, blocked: 0 };
  for (const e of exits) counts[e.where] = (counts[e.where] || 0) + 1;
  const userExits = evs.filter((ev) => klIs(ev, "kvm", "exit")).map((ev) => ev.label);
  ctx.klIndex = { pos, stacks, exits, counts, userExits, width: 16 + evs.length * KL_SLOT };
  return ctx.klIndex;
}

// ------------------------------------------------------------------ captions

function kernelCaption(ctx, i) {
  const ev = ctx.events[i];
  const d = ev.data || {};
  if (klIs(ev, "kvm", "call")) {
    return { text: `${d.fn}()   ${d.file || ""}`, note: d.note || "" };
  }
  if (klIs(ev, "kvm", "return")) {
    return { text: `${d.fn} returns ${d.ret}`, note: d.meaning || "" };
  }
  if (klIs(ev, "kvm", "vmexit")) {
    const n = d.basic ?? d.exit_reason;
    const q = d.qual ? ` — ${d.qual}` : "";
    const rip = d.rip === undefined ? "" : ` at rip ${hex(ctx.val(i, "rip"))}`;
    const handler = d.handler ? `handler ${d.handler}` : "no handler in kvm_vmx_exit_handlers";
    return {
      text: `VM exit ${n} (${ev.label})${rip}${q}; ${handler}`,
      note: KL_WHERE[d.where] || "",
    };
  }
  if (klIs(ev, "kvm", "entry") && d.insn) {
    return {
      text: `${d.insn}: __vmx_vcpu_run enters the guest`,
      note: d.insn === "VMLAUNCH"
        ? "The first entry with this VMCS launches it; later ones are VMRESUME."
        : "The CPU loads the guest state from the VMCS and runs guest code natively.",
    };
  }
  if (klIs(ev, "guest", "run") && d.name) {
    return {
      text: `the guest runs until ${d.name} at rip ${hex(ctx.val(i, "exit_rip"))}`,
      note: "Guest instructions run on the CPU; this one makes it leave guest mode (a VM exit).",
    };
  }
  if (klIs(ev, "qemu", "handle")) {
    return {
      text: `user space: ${d.fn} — ${d.exit || ""}`,
      note: "QEMU's vCPU thread (kvm_cpu_exec) switches on kvm_run->exit_reason, lets the " +
        "device model answer, and calls KVM_RUN again.",
    };
  }
  if (klIs(ev, "qemu", "wait")) {
    return {
      text: ev.label,
      note: "HLT with the LAPIC in the kernel: KVM_RUN has not returned; user space is not involved.",
    };
  }
  if (klIs(ev, "kvm", "note")) return { text: ev.label, note: "" };
  return null;
}

try {
  const baseDescribe = describe;
  describe = function describeWithKernel(ctx, i) {
    return kernelCaption(ctx, i) || baseDescribe(ctx, i);
  };
} catch (e) {
  // keep the generic captions
}

// ---------------------------------------------------------------------- pane

PANES.kernel = function kernelPane(ctx) {
  const idx = kernelIndex(ctx);
  const c = idx.counts;
  const total = idx.exits.length;
  const head = h("div", { class: "vp-kl-head" }, [
    h("b", { text: `${total} VM exit${total === 1 ? "" : "s"}` }),
    h("span", { class: "vp-kl-k", text: ` · ${c.kernel} handled in the kernel` }),
    h("span", { class: "vp-kl-u", text: ` · ${c.user} to user space` }),
    c.blocked ? h("span", { class: "vp-kl-b", text: ` · ${c.blocked} asleep in the kernel` }) : null,
    h("span", {
      class: "vp-kl-list",
      text: idx.userExits.length ? `  (KVM_RUN returned: ${idx.userExits.join(", ")})` : "",
    }),
  ]);

  const labels = h("div", { class: "vp-kl-lanes" }, [
    h("div", { class: "vp-kl-lane lane-user", style: `height:${KL_USER_H}px`, text: "user space" }),
    h("div", { style: `height:${KL_GAP}px` }),
    h("div", { class: "vp-kl-lane lane-kernel", style: `height:${KL_DEPTHS * KL_ROW}px`, text: "kernel (KVM)" }),
    h("div", { style: `height:${KL_GAP}px` }),
    h("div", { class: "vp-kl-lane lane-guest", style: `height:${KL_GUEST_H}px`, text: "guest" }),
  ]);
  const scroller = h("div", { class: "vp-kl-scroll" });
  const stackBox = h("div", { class: "vp-kl-stack" });
  const body = h("div", { class: "vp-kl-body" }, [labels, scroller, stackBox]);
  const wrap = h("div", { class: "vp-kl" }, [head, body]);

  const W = idx.width;
  const root = s("svg", {
    class: "vp-kl-svg", width: W, height: KL_H, viewBox: `0 0 ${W} ${KL_H}`,
    // a page's own "svg { max-width: 100% }" must not shrink it away from the lane labels
    style: `width:${W}px;height:${KL_H}px;max-width:none`,
  });
  s("rect", { class: "vp-kl-band lane-user", x: 0, y: 0, width: W, height: KL_USER_H }, root);
  s("rect", { class: "vp-kl-band lane-kernel", x: 0, y: KL_KTOP, width: W, height: KL_DEPTHS * KL_ROW }, root);
  s("rect", { class: "vp-kl-band lane-guest", x: 0, y: KL_GTOP, width: W, height: KL_GUEST_H }, root);
  // one band per VM exit: up to the user lane only if the exit went there
  for (const e of idx.exits) {
    const x0 = idx.pos[e.i].x - KL_SLOT / 2;
    const x1 = idx.pos[Math.max(e.i, e.end)].x + KL_SLOT / 2;
    const top = e.where === "user" ? 0 : KL_KTOP;
    const r = s("rect", {
      class: `vp-kl-exit where-${e.where}`, x: x0, y: top, width: Math.max(2, x1 - x0),
      height: KL_GTOP + KL_GUEST_H - top, rx: 3,
    }, root);
    tip(r, `${e.name}: ${KL_WHERE[e.where] || e.where}`);
    const t = s("text", { class: `vp-kl-exit-label where-${e.where}`, x: x0 + 2, y: KL_GTOP + KL_GUEST_H + 11 }, root);
    t.textContent = e.name;
  }
  const pts = idx.pos.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`);
  s("polyline", { class: "vp-kl-flow", points: pts.join(" ") }, root);
  const past = s("polyline", { class: "vp-kl-past", points: "" }, root);
  const nodes = ctx.events.map((ev, i) => {
    const p = idx.pos[i];
    let n;
    if (klIs(ev, "kvm", "vmexit")) {
      const w = (ev.data || {}).where || "kernel";
      n = s("path", { class: `vp-kl-node vmexit where-${w}`, d: `M${p.x},${p.y - 6} l6,6 l-6,6 l-6,-6 z` }, root);
    } else if (ev.actor === "guest") {
      n = s("rect", { class: "vp-kl-node guest", x: p.x - KL_SLOT / 2 + 1, y: p.y - 6, width: KL_SLOT - 2, height: 12, rx: 3 }, root);
    } else {
      n = s("circle", { class: `vp-kl-node actor-${ev.actor} kind-${ev.kind}`, cx: p.x, cy: p.y, r: 4 }, root);
    }
    tip(n, `${i + 1}. ${describe(ctx, i).text}`);
    n.addEventListener("click", () => wrap.dispatchEvent(new CustomEvent("vp-seek", { detail: i, bubbles: true })));
    return n;
  });
  const curLabel = s("text", { class: "vp-kl-cur-label", x: 0, y: 0 }, root);
  scroller.append(root);

  let shown = -1;
  function update(step) {
    if (shown >= 0) nodes[shown].classList.remove("cur");
    shown = step;
    nodes[step].classList.add("cur");
    past.setAttribute("points", pts.slice(0, step + 1).join(" "));
    const ev = ctx.events[step];
    const p = idx.pos[step];
    const d = ev.data || {};
    curLabel.textContent = ev.actor === "kvm" && (ev.kind === "call" || ev.kind === "return") ? d.fn || ev.label : "";
    curLabel.setAttribute("x", String(p.x + 7));
    curLabel.setAttribute("y", String(p.y + 4));
    // the call stack at this step
    const frames = idx.stacks[step] || [];
    const rows = [h("div", { class: "vp-kl-stack-title", text: ev.actor === "qemu" ? "user space" : "kernel call stack" })];
    if (ev.actor === "qemu") {
      rows.push(h("div", { class: "vp-kl-frame user", text: ev.kind === "ioctl" ? "ioctl(vcpu_fd, KVM_RUN)" : d.fn || ev.label }));
    }
    frames.forEach((f, k) => {
      const last = k === frames.length - 1;
      const text = f.fn + (f.insn ? ` (${f.insn})` : "") + (f.ret !== undefined ? ` → returns ${f.ret}` : "");
      rows.push(h("div", {
        class: "vp-kl-frame" + (last ? " top" : "") + (f.guest ? " guest" : "") + (f.exit ? " exit" : "") + (f.kvmrun ? " user" : ""),
        style: `padding-left:${4 + f.depth * 9}px`,
        title: f.file || "",
      }, [h("span", { text }), f.file && last ? h("small", { text: ` ${f.file}` }) : null]));
    });
    stackBox.replaceChildren(...rows);
    const w = scroller.clientWidth;
    if (w > 0 && (p.x < scroller.scrollLeft + 30 || p.x > scroller.scrollLeft + w - 30)) {
      scroller.scrollLeft = Math.max(0, p.x - w / 2);
    }
  }
  return { el: wrap, update };
};

// ---- the hypercall pane (vbook.widgets.hypercall.HypercallView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, s, tip, hex, toBig, PANES, describe, shortLabel). It renders the trace
// vbook.hypercall_run.run_hypercalls records: per hypercall `hc` the events
//   guest vmcall → kvm vmexit → kvm hypercall → kvm skip → guest resume
// or, for one KVM hands to user space,
//   guest vmcall → kvm vmexit → kvm hypercall → kvm exit (KVM_EXIT_HYPERCALL)
//   → qemu hypercall → kvm complete → guest resume.
// The ABI constants come from the trace's meta.hypercall_abi, which the
// Python widget fills from vbook.models.hypercall; nothing is computed here.

const HC_KINDS = {
  "guest/vmcall": "vmcall",
  "kvm/vmexit": "vmexit",
  "kvm/hypercall": "branch",
  "kvm/skip": "skip",
  "kvm/exit": "exit",
  "qemu/hypercall": "user",
  "kvm/complete": "complete",
  "guest/resume": "resume",
};

// per hypercall: the index of each of its events; per event: its hypercall
function hypercallIndex(ctx) {
  if (ctx.hcIndex) return ctx.hcIndex;
  const calls = [];
  const hcOf = new Array(ctx.events.length).fill(-1);
  const lastHc = new Array(ctx.events.length).fill(-1);
  let last = -1;
  ctx.events.forEach((ev, i) => {
    const d = ev.data || {};
    const role = HC_KINDS[`${ev.actor}/${ev.kind}`];
    if (role && typeof d.hc === "number") {
      const k = d.hc;
      if (!calls[k]) calls[k] = { k, ev: {} };
      calls[k].ev[role] = i;
      calls[k].first ??= i;
      calls[k].last = i;
      last = k;
    }
    lastHc[i] = last;
  });
  // an event belongs to a hypercall from its VMCALL to the guest's resume (the
  // user-space detour's KVM_RUN included)
  for (const c of calls) if (c) for (let i = c.first; i <= c.last; i++) hcOf[i] = c.k;
  ctx.hcIndex = { calls: calls.filter(Boolean), hcOf, lastHc };
  return ctx.hcIndex;
}

const hcAbi = (ctx) => (ctx.meta || {}).hypercall_abi || {};

function hcName(ctx, nr) {
  const n = (hcAbi(ctx).hypercalls || (ctx.kr || {}).hypercalls || {})[String(nr)];
  return n || `nr ${hex(nr)}`;
}

// RAX as the guest's C code reads it: -1000 (-KVM_ENOSYS), or the number itself
function decodeRet(ctx, v, longmode) {
  const b = toBig(v);
  if (b === null) return "";
  const bits = longmode ? 64n : 32n;
  const signed = b >> (bits - 1n) ? b - (1n << bits) : b;
  if (signed >= 0n) return String(signed);
  const name = (hcAbi(ctx).errors || {})[String(-signed)];
  return `${signed}${name ? ` (-${name})` : ""}`;
}

function hcCall(ctx, k) {
  const c = hypercallIndex(ctx).calls[k];
  const vi = c.ev.vmcall;
  const d = vi === undefined ? {} : ctx.events[vi].data || {};
  const bi = c.ev.branch;
  const b = bi === undefined ? {} : ctx.events[bi].data || {};
  const doneAt = c.ev.skip ?? c.ev.complete;
  const after = doneAt === undefined ? undefined : ctx.val(doneAt, "rax");
  return { c, vi, d, b, doneAt, after, toUser: c.ev.exit !== undefined };
}

// ------------------------------------------------------------------ captions

function hypercallCaption(ctx, i) {
  const ev = ctx.events[i];
  const d = ev.data || {};
  const role = HC_KINDS[`${ev.actor}/${ev.kind}`];
  if (!role || typeof d.hc !== "number") return null;
  const abi = hcAbi(ctx);
  const x = hcCall(ctx, d.hc);
  const mode = x.d.longmode ? "64-bit" : "32-bit";
  if (role === "vmcall") {
    const regs = (abi.registers || []).map(([r, role]) => `${role}=${hex(ctx.val(i, r))}`).join(" ");
    return {
      text: `hypercall #${d.hc + 1}: VMCALL at rip ${hex(ctx.val(i, "rip"))} — ${hcName(ctx, d.rax)}, ${regs}, CPL ${d.cpl}, ${mode}`,
      note: "The guest puts the number in RAX and up to four arguments in RBX, RCX, RDX, RSI and " +
        "executes VMCALL (VMMCALL on AMD). In VMX non-root operation VMCALL always exits, at any CPL.",
    };
  }
  if (role === "vmexit") {
    return {
      text: `VM exit: EXIT_REASON_VMCALL (${d.exit_reason}) → ${d.handler}` +
        ` (on AMD: SVM_EXIT_VMMCALL ${hex(d.svm_exit_code)})`,
      note: "The CPU leaves the guest; KVM's exit handler table sends this exit reason to " +
        "kvm_emulate_hypercall, which reads the five registers.",
    };
  }
  if (role === "branch") {
    const ret = "ret" in d ? ` → ret ${hex(ctx.val(i, "ret"))} = ${decodeRet(ctx, ctx.val(i, "ret"), x.d.longmode)}` : "";
    return {
      text: `kvm_emulate_hypercall: ${ev.label}${ret}`,
      note: d.case === "cpl != 0"
        ? "The CPL check comes first: a hypercall from guest user mode (CPL 3) gets -KVM_EPERM whatever the number."
        : d.case === "default"
          ? "No case for this number: -KVM_ENOSYS (-1000)."
          : `${d.handler}.`,
    };
  }
  if (role === "skip") {
    return {
      text: `kvm_skip_emulated_instruction: RAX = ${hex(ctx.val(i, "rax"))}, RIP → ${hex(ctx.val(i, "rip"))}`,
      note: `RAX gets the result${x.d.longmode ? "" : " (cut to 32 bits outside 64-bit mode)"}, RIP moves past the ` +
        `${abi.insn_len || 3}-byte VMCALL, and the handler returns 1: re-enter the guest. User space never knew.`,
    };
  }
  if (role === "exit") {
    return {
      text: `KVM_EXIT_HYPERCALL (exit_reason ${d.exit_reason}): nr ${d.nr} (${hcName(ctx, d.nr)}) args [${(d.args || []).map((_, j) => hex(ctx.val(i, "args", j))).join(", ")}] longmode ${d.longmode}`,
      note: "This one KVM does not finish: it fills kvm_run.hypercall, sets complete_userspace_io = " +
        "complete_hypercall_exit and returns 0, so KVM_RUN returns to the VMM.",
    };
  }
  if (role === "user") {
    return {
      text: `user space (the VMM) handles it: kvm_run.hypercall.ret = ${hex(ctx.val(i, "ret"))}`,
      note: "The VMM does the work (for MAP_GPA_RANGE: change how the pages are mapped) and writes its " +
        "answer into kvm_run before calling KVM_RUN again.",
    };
  }
  if (role === "complete") {
    return {
      text: `complete_hypercall_exit: RAX = ${hex(ctx.val(i, "rax"))}, RIP → ${hex(ctx.val(i, "rip"))}`,
      note: "On the next KVM_RUN, before entering the guest, KVM copies hypercall.ret into RAX and skips the VMCALL.",
    };
  }
  return {
    text: `the guest resumes at rip ${hex(ctx.val(i, "rip"))} with RAX = ${hex(ctx.val(i, "rax"))} (${decodeRet(ctx, ctx.val(i, "rax"), x.d.longmode)})`,
    note: "For the guest the VMCALL was one instruction that changed RAX.",
  };
}

const HC_SHORT = {
  vmcall: "VMCALL", vmexit: "exit 18", branch: "case", skip: "skip",
  exit: "HYPERCALL", user: "ret", complete: "complete", resume: "resume",
};

// Captions and box labels for these events; other events keep the player's own.
// (If a future player makes describe/shortLabel constant, the generic ones stay.)
try {
  const baseDescribe = describe;
  const baseShort = shortLabel;
  describe = function describeWithHypercalls(ctx, i) {
    return hypercallCaption(ctx, i) || baseDescribe(ctx, i);
  };
  shortLabel = function shortLabelWithHypercalls(ev) {
    const role = HC_KINDS[`${ev.actor}/${ev.kind}`];
    if (role && role !== "exit" && typeof (ev.data || {}).hc === "number") return HC_SHORT[role];
    return baseShort(ev);
  };
} catch (e) {
  // keep the generic captions
}

// ---------------------------------------------------------------------- pane

// the path of a hypercall: [id, role(s) that light it, title, subtitle(ctx, x)]
const HC_PATH = [
  ["vmcall", ["vmcall"], "guest: VMCALL", (ctx, x) => `CPL ${x.d.cpl}, ${x.d.longmode ? "64-bit" : "32-bit"}`],
  ["vmexit", ["vmexit"], "VM exit", (ctx) => `EXIT_REASON_VMCALL ${hcAbi(ctx).exit_reason_vmcall ?? 18}; AMD: SVM_EXIT_VMMCALL ${hex(hcAbi(ctx).svm_exit_vmmcall ?? 0x81)}`],
  ["emulate", ["vmexit"], "kvm_emulate_hypercall", () => "reads RAX RBX RCX RDX RSI"],
  ["branch", ["branch"], "branch", (ctx, x) => x.b.case || "…"],
  ["skip", ["skip"], "kvm_skip_emulated_instruction", () => "RAX = ret, RIP += 3"],
  ["resume", ["resume"], "guest resumes", (ctx, x) => (x.after === undefined ? "…" : `RAX = ${hex(x.after)}`)],
];
const HC_DETOUR = [
  ["exit", ["exit"], "KVM_EXIT_HYPERCALL", () => "KVM_RUN returns 0 to the VMM"],
  ["user", ["user"], "user space", (ctx, x) => (x.c.ev.user === undefined ? "writes hypercall.ret" : `hypercall.ret = ${hex(ctx.val(x.c.ev.user, "ret"))}`)],
  ["complete", ["complete"], "complete_hypercall_exit", () => "next KVM_RUN: RAX = ret, RIP += 3"],
];

// a C name that may break after each underscore (kvm_skip_<wbr>emulated_<wbr>instruction)
function setBreakable(el, text) {
  const parts = String(text).split("_");
  el.replaceChildren(...parts.flatMap((p, j) => (j < parts.length - 1 ? [p + "_", h("wbr")] : [p])));
}

PANES.hypercall = function hypercallPane(ctx) {
  const idx = hypercallIndex(ctx);
  const abi = hcAbi(ctx);
  const head = h("div", { class: "vp-hc-head" });
  const node = (spec, lane) => {
    const [id, , title] = spec;
    const sub = h("div", { class: "vp-hc-sub" });
    const el = h("div", { class: `vp-hc-node lane-${lane}`, "data-node": id }, [h("div", { class: "vp-hc-title", text: title }), sub]);
    return { spec, el, sub, title: el.firstChild };
  };
  const mainNodes = HC_PATH.map((sp, j) => node(sp, j === 0 || j === 5 ? "guest" : "kernel"));
  const detourNodes = HC_DETOUR.map((sp, j) => node(sp, j === 1 ? "user" : "kernel"));
  // one grid: the path on row 1, the detour on row 3 under the switch, the skip and the resume
  const at = (el, row, col) => {
    el.style.gridRow = String(row);
    el.style.gridColumn = String(col);
    return el;
  };
  const arrow = (row, col, text = "→") => at(h("div", { class: "vp-hc-arrow", text }), row, col);
  const detourLabel = at(h("div", {
    class: "vp-hc-detour-label",
    text: "↓ the user-space detour: KVM_HC_MAP_GPA_RANGE when the VMM enabled KVM_CAP_EXIT_HYPERCALL",
  }), 2, "7 / 12");
  const cells = [];
  mainNodes.forEach((n, j) => {
    if (j) cells.push(arrow(1, 2 * j));
    cells.push(at(n.el, 1, 2 * j + 1));
  });
  detourNodes.forEach((n, j) => {
    if (j) cells.push(arrow(3, 6 + 2 * j));
    cells.push(at(n.el, 3, 7 + 2 * j));
  });
  const detourCells = cells.filter((c) => c.style.gridRow === "3").concat([detourLabel]);
  const grid = h("div", { class: "vp-hc-path" }, [...cells, detourLabel]);
  const tbody = h("tbody");
  const regs = h("table", { class: "vp-hc-regs" }, [
    h("thead", {}, [h("tr", {}, ["register", "ABI role", "before VMCALL", "after"].map((t) => h("th", { text: t })))]),
    tbody,
  ]);
  const listBody = h("tbody");
  const list = h("table", { class: "vp-hc-list" }, [
    h("thead", {}, [h("tr", {}, ["#", "hypercall", "CPL", "mode", "RAX after", "handled"].map((t) => h("th", { text: t })))]),
    listBody,
  ]);
  const rows = idx.calls.map((c) => {
    const x = hcCall(ctx, c.k);
    const tr = h("tr", { "data-hc": c.k }, [
      h("td", { text: String(c.k + 1) }),
      h("td", { text: hcName(ctx, x.d.rax) }),
      h("td", { text: String(x.d.cpl ?? "") }),
      h("td", { text: x.d.longmode ? "64-bit" : "32-bit" }),
      h("td", { class: "val", text: x.after === undefined ? "" : `${hex(x.after)} (${decodeRet(ctx, x.after, x.d.longmode)})` }),
      h("td", { text: x.toUser ? "user space" : "in the kernel" }),
    ]);
    tr.addEventListener("click", () => tr.dispatchEvent(new CustomEvent("vp-seek", { detail: c.ev.vmcall ?? 0, bubbles: true })));
    return tr;
  });
  listBody.replaceChildren(...rows);
  const body = h("div", { class: "vp-hc-body" }, [h("div", { class: "vp-hc-left" }, [regs]), h("div", { class: "vp-hc-right" }, [list])]);
  const wrap = h("div", { class: "vp-hc" }, [head, grid, body]);
  let shownRow = null;

  function paintNodes(nodes, x, step, active) {
    for (const n of nodes) {
      const [, roles, title, subFn] = n.spec;
      const at = roles.map((r) => x.c.ev[r]).filter((v) => v !== undefined);
      const on = active && at.length > 0;
      n.el.classList.toggle("off", !on);
      n.el.classList.toggle("cur", on && at.includes(step));
      n.el.classList.toggle("done", on && !at.includes(step) && Math.min(...at) < step);
      n.sub.textContent = subFn(ctx, x);
      setBreakable(n.title, n.spec[0] !== "branch" ? title : x.b.case === "cpl != 0" ? "CPL check" : "switch (nr)");
    }
  }

  function update(step) {
    const k = idx.hcOf[step] >= 0 ? idx.hcOf[step] : idx.lastHc[step];
    if (shownRow) shownRow.classList.remove("cur");
    if (k < 0) {
      head.textContent = idx.calls.length
        ? "no hypercall yet: the guest runs until its first VMCALL"
        : "this trace has no hypercalls (on real KVM user space does not see the ones KVM handles in the kernel)";
      for (const n of [...mainNodes, ...detourNodes]) {
        n.el.classList.remove("cur", "done");
        n.el.classList.add("off");
      }
      tbody.replaceChildren();
      return;
    }
    const x = hcCall(ctx, k);
    const inThis = idx.hcOf[step] === k;
    shownRow = rows[k];
    shownRow.classList.add("cur");
    head.textContent = `hypercall ${k + 1} of ${idx.calls.length}: ${hcName(ctx, x.d.rax)} — ${x.b.handler || ""}` +
      (inThis ? "" : " (done; the guest runs on)");
    const s = inThis ? step : ctx.events.length;
    paintNodes(mainNodes.filter((n) => !(x.toUser && n.spec[0] === "skip")), x, s, true);
    if (x.toUser) paintNodes(mainNodes.filter((n) => n.spec[0] === "skip"), x, s, false);
    paintNodes(detourNodes, x, s, x.toUser);
    for (const c of detourCells) c.classList.toggle("unused", !x.toUser);
    const done = x.doneAt !== undefined && (!inThis || step >= x.doneAt);
    tbody.replaceChildren(...(abi.registers || []).map(([r, role]) => {
      const before = ctx.val(x.vi, r);
      let roleText = role;
      if (role === "nr") roleText = `nr: ${hcName(ctx, before)}`;
      let after = "";
      if (r === abi.ret_register) {
        after = done ? `${hex(x.after)} = ${decodeRet(ctx, x.after, x.d.longmode)}` : "…";
        roleText += " · result";
      } else if (done) {
        after = "(unchanged)";
      }
      return h("tr", { class: r === abi.ret_register && done ? "changed" : "" }, [
        h("td", { class: "reg", text: r.toUpperCase() }),
        h("td", { text: roleText }),
        h("td", { class: "val", text: hex(before) }),
        h("td", { class: "val", text: after }),
      ]);
    }));
  }

  return { el: wrap, update };
};

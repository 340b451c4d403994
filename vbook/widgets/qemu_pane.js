// ---- the QEMU pane (vbook.widgets.qemu_loop.QemuLoopView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, s, hex, PANES, describe, shortLabel, reasonName, hexToBytes). It renders
// the trace vbook.models.run_loop.run records. Every qemu/device event there
// carries, from the model, `fn` (the QEMU function), `file`, `stack` (the
// vCPU thread's call chain), `thread` and `bql` (does that thread hold the big
// QEMU lock); a device event that sent a byte to the serial backend carries
// `tx` (hex); a qemu `ret` event after each exit names the `handler` the exit
// reached and `ret`. This pane shows, at the current step:
//   * the call stack of the thread that acts, and whether it holds the BQL;
//   * every exit so far and the QEMU function that handled it (click one);
//   * the serial console as it grows, and QEMU's exit status once it is set.
// Nothing is computed here beyond indexing the trace.

function qemuIndex(ctx) {
  if (ctx.qemuIndex) return ctx.qemuIndex;
  const n = ctx.events.length;
  const frame = new Array(n).fill(-1); // last event <= i with a stack
  const textLen = new Array(n).fill(0); // console characters up to event i
  const code = new Array(n).fill(null); // exit status known at event i
  const rows = []; // one per handled exit
  let text = "";
  let last = -1;
  let exitCode = null;
  ctx.events.forEach((ev, i) => {
    const d = ev.data || {};
    if (Array.isArray(d.stack)) last = i;
    frame[i] = last;
    if (ev.actor === "device" && typeof d.tx === "string") {
      for (const b of hexToBytes(d.tx)) text += b === 0x0a || (b >= 0x20 && b < 0x7f) ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
    }
    if (typeof d.exit_code === "number") exitCode = d.exit_code;
    textLen[i] = text.length;
    code[i] = exitCode;
    if (ev.actor === "qemu" && ev.kind === "ret" && typeof d.handler === "string") {
      rows.push({ i, group: ctx.groupOf[i], name: d.exit_name || "", handler: d.handler, ret: d.ret_name ?? String(d.ret) });
    }
  });
  ctx.qemuIndex = { frame, textLen, code, rows, text };
  return ctx.qemuIndex;
}

function qemuPane(ctx) {
  const idx = qemuIndex(ctx);
  const thread = h("div", { class: "vp-q-thread" });
  const stack = h("ol", { class: "vp-q-stack" });
  const where = h("div", { class: "vp-q-where" });
  const left = h("div", { class: "vp-q-box" }, [h("div", { class: "vp-q-head", text: "QEMU" }), thread, stack, where]);

  const tbody = h("tbody");
  const table = h("table", { class: "vp-q-exits" }, [
    h("thead", {}, [h("tr", {}, ["#", "exit", "handled by", "ret"].map((t) => h("th", { text: t })))]),
    tbody,
  ]);
  const rowEls = idx.rows.map((r, k) => {
    const exitIdx = ctx.groups[r.group] ? ctx.groups[r.group].exit : -1;
    const tr = h("tr", {}, [
      h("td", { text: String(k + 1) }),
      h("td", { text: r.name.replace(/^KVM_EXIT_/, "") }),
      h("td", { class: "fn", text: r.handler }),
      h("td", { text: r.ret }),
    ]);
    tr.addEventListener("click", () => tr.dispatchEvent(new CustomEvent("vp-seek", { detail: exitIdx >= 0 ? exitIdx : r.i, bubbles: true })));
    tbody.append(tr);
    return tr;
  });
  const middle = h("div", { class: "vp-q-box vp-q-table" }, [h("div", { class: "vp-q-head", text: "exits → QEMU handler" }), table]);

  const screen = h("pre", { class: "vp-q-console" });
  const status = h("div", { class: "vp-q-status" });
  const right = h("div", { class: "vp-q-box" }, [h("div", { class: "vp-q-head", text: "serial console (COM1)" }), screen, status]);

  const wrap = h("div", { class: "vp-qemu" }, [left, middle, right]);
  let curRow = -1;

  function update(step) {
    const ev = ctx.events[step];
    const fi = idx.frame[step];
    const fd = fi >= 0 ? ctx.events[fi].data || {} : {};
    const frames = Array.isArray(fd.stack) ? fd.stack : [];
    thread.replaceChildren(
      h("span", { text: `thread ${fd.thread || "CPU 0/KVM"}` }),
      h("span", { class: "vp-q-bql " + (fd.bql ? "held" : "free"), text: fd.bql ? "holds the BQL" : "BQL not held" }),
    );
    stack.replaceChildren(...frames.map((f, k) => h("li", { class: k === frames.length - 1 ? "top" : "", text: f })));
    let w = fd.file ? `in ${fd.file}` : "";
    if (ev.actor === "guest") w = "blocked in ioctl(KVM_RUN): the guest runs";
    else if (ev.actor === "kvm") w = "blocked in ioctl(KVM_RUN): KVM (the kernel) runs";
    where.textContent = w;

    // the exit being handled: the row of the current exit's group
    const g = ctx.groupOf[step];
    let k = -1;
    for (let j = 0; j < idx.rows.length; j++) if (idx.rows[j].group === g) k = j;
    if (k !== curRow) {
      if (curRow >= 0) rowEls[curRow].classList.remove("cur");
      if (k >= 0) {
        rowEls[k].classList.add("cur");
        const tr = rowEls[k];
        const box = middle;
        if (tr.offsetTop < box.scrollTop || tr.offsetTop + tr.offsetHeight > box.scrollTop + box.clientHeight) box.scrollTop = tr.offsetTop - box.clientHeight / 2;
      }
      curRow = k;
    }
    rowEls.forEach((tr, j) => tr.classList.toggle("future", idx.rows[j].i > step));

    const len = idx.textLen[step];
    const prev = step > 0 ? idx.textLen[step - 1] : 0;
    const shown = idx.text.slice(0, len);
    if (len > prev) screen.replaceChildren(shown.slice(0, prev), h("span", { class: "new", text: shown.slice(prev) }));
    else screen.textContent = shown;
    const c = idx.code[step];
    status.textContent = c === null ? "" : `isa-debug-exit: QEMU will exit with status ${c}`;
  }
  return { el: wrap, update };
}

PANES.qemu = qemuPane;

// Captions and short labels for the QEMU events; the others keep the player's own.
try {
  const baseDescribe = describe;
  const baseShort = shortLabel;
  describe = function describeWithQemu(ctx, i) {
    const ev = ctx.events[i];
    const d = ev.data || {};
    if (ev.actor === "qemu" && typeof d.fn === "string" && ev.kind !== "ioctl") {
      const who = d.thread === "main" ? "the main thread" : `vCPU thread ${d.thread || ""}`;
      return {
        text: `QEMU ${d.fn}: ${ev.label}`,
        note: `${d.file || ""} — ${who}, ${d.bql ? "holding" : "not holding"} the big QEMU lock (BQL).`,
      };
    }
    if (ev.actor === "kvm" && ev.kind === "return") {
      return {
        text: ev.label,
        note: "No VM exit: KVM_RUN returned an error to QEMU (here -EINTR: QEMU itself asked to be let out).",
      };
    }
    return baseDescribe(ctx, i);
  };
  shortLabel = function shortLabelWithQemu(ev) {
    const d = ev.data || {};
    if (ev.actor === "qemu" && ev.kind === "ret") return `ret ${d.ret_name ?? ""}`.trim();
    if (ev.actor === "qemu" && typeof d.fn === "string" && ev.kind !== "ioctl") return d.fn;
    if (ev.actor === "device" && typeof d.fn === "string") return d.fn;
    if (ev.actor === "kvm" && ev.kind === "return") return "-EINTR";
    return baseShort(ev);
  };
} catch (e) {
  // keep the generic captions
}

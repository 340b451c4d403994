// ---- the 2-D walk pane (vbook.widgets.walk2d.Walk2dGrid)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, PANES, describe). It renders the trace vbook.models.nested.walk_2d
// records; everything it draws was laid out in Python (walk2d_layout) and
// arrives in trace.meta.walk2d: per walk its rows (guest steps, then the data
// GPA), columns (EPT levels, then the guest-entry read), one cell per memory
// reference with the event that made it, why each empty cell is empty, and how
// the walk ended. Values are hex strings. Nothing is computed here beyond
// indexing: which cells belong to events up to the current step.

function walk2dIndex(ctx) {
  if (ctx.walk2dIndex) return ctx.walk2dIndex;
  const walks = Array.isArray(ctx.meta.walk2d) ? ctx.meta.walk2d : [];
  const walkAt = new Array(ctx.events.length).fill(-1);
  const cellAt = new Array(ctx.events.length).fill(null);
  walks.forEach((w, k) => {
    for (let i = w.start; i <= w.end && i < walkAt.length; i++) walkAt[i] = k;
    for (const c of w.cells) cellAt[c.i] = c;
  });
  ctx.walk2dIndex = { walks, walkAt, cellAt };
  return ctx.walk2dIndex;
}

function walk2dPane(ctx) {
  const idx = walk2dIndex(ctx);
  const head = h("div", { class: "vp-w2-head" });
  const counter = h("div", { class: "vp-w2-counter" });
  const gridBox = h("div", { class: "vp-w2-gridbox" });
  const detail = h("div", { class: "vp-w2-detail" });
  const outcome = h("div", { class: "vp-w2-outcome" });
  const wrap = h("div", { class: "vp-walk2d" }, [head, counter, gridBox, detail, outcome]);
  const built = new Map();
  let curWalk = -2;

  function build(k) {
    if (built.has(k)) return built.get(k);
    const w = idx.walks[k];
    const tds = w.rows.map(() => new Array(w.cols.length).fill(null));
    const thead = h("thead", {}, [
      h("tr", {}, [
        h("th", { class: "corner", text: "guest step ↓ · EPT level →" }),
        ...w.cols.map((c) => h("th", { class: c.level === null ? "gcol" : "", text: c.label })),
      ]),
    ]);
    const rowEls = [];
    const tbody = h("tbody");
    w.rows.forEach((r, ri) => {
      const gpa = h("div", { class: "sub", text: r.gpa ? `GPA ${r.gpa}` : "" });
      const th = h("th", { class: "rowh" }, [
        h("div", { text: r.label }),
        gpa,
        r.note ? h("div", { class: "note", text: r.note }) : null,
      ]);
      const tr = h("tr", { class: r.level === 0 ? "datarow" : "" }, [th]);
      for (let ci = 0; ci < w.cols.length; ci++) {
        const td = h("td", { class: "vp-w2-cell" });
        tds[ri][ci] = td;
        tr.append(td);
      }
      rowEls.push(tr);
      tbody.append(tr);
    });
    const cellEls = w.cells.map((c) => {
      const td = tds[c.row][c.col];
      td.classList.add("ref", c.kind);
      td.dataset.n = String(c.n);
      td.replaceChildren(
        h("div", { class: "n", text: String(c.n) }),
        h("div", { class: "what", text: c.name }),
        h("div", { class: "gpa", text: `for GPA ${c.gpa}` }),
        h("div", { class: "ent", text: `= ${c.entry}` }),
        h("div", { class: "hpa", text: `@ HPA ${c.hpa}` }),
      );
      td.title = `reference ${c.n}: ${c.name} translating GPA ${c.gpa}, read at HPA ${c.hpa} = ${c.entry}`;
      td.addEventListener("click", () => td.dispatchEvent(new CustomEvent("vp-seek", { detail: c.i, bubbles: true })));
      return td;
    });
    let dataEl = null;
    for (const e of w.empty) {
      const td = tds[e.row][e.col];
      td.classList.add("empty", e.cls);
      td.title = e.why;
      if (e.cls === "data") {
        dataEl = td;
        td.replaceChildren(h("div", { class: "what", text: "data access" }), h("div", { class: "hpa" }));
      } else {
        td.replaceChildren(h("div", { class: "why", text: e.cls === "unreached" ? "not reached" : "—" }));
      }
    }
    const table = h("table", { class: "vp-w2-grid" }, [thead, tbody]);
    // a row's GPA and note show once the walk has reached it / finished it
    const rowFirst = w.rows.map(() => Infinity);
    const rowLast = w.rows.map(() => -1);
    for (const c of w.cells) {
      rowFirst[c.row] = Math.min(rowFirst[c.row], c.i);
      rowLast[c.row] = Math.max(rowLast[c.row], c.i);
    }
    const b = {
      w, table, cellEls, dataEl, rowEls, rowFirst, rowLast, tds,
      state: w.cells.map(() => ""), rowState: w.rows.map(() => ""), curRow: -1, fault: null,
    };
    built.set(k, b);
    return b;
  }

  function update(step) {
    const k = idx.walkAt[step];
    if (k < 0) {
      if (curWalk !== -1) {
        curWalk = -1;
        head.textContent = idx.walks.length ? "no 2-D walk at this event" : "this trace holds no 2-D walk";
        counter.textContent = "";
        gridBox.replaceChildren();
        detail.textContent = "";
        outcome.textContent = "";
        outcome.className = "vp-w2-outcome";
      }
      return;
    }
    const b = build(k);
    const w = b.w;
    if (k !== curWalk) {
      curWalk = k;
      gridBox.replaceChildren(b.table);
      const many = idx.walks.length > 1 ? ` (walk ${k + 1} of ${idx.walks.length})` : "";
      head.textContent =
        `2-D walk of GVA ${w.gva} (${w.access})${many}: ${w.levels}-level guest paging on ${w.ept_levels}-level EPT` +
        (w.cr3 ? ` · gCR3 ${w.cr3}` : "") + (w.eptp ? ` · EPTP ${w.eptp}` : "");
    }
    let count = 0;
    let cur = null;
    w.cells.forEach((c, j) => {
      const st = c.i < step ? "done" : c.i === step ? "cur" : "todo";
      if (st !== "todo") count = j + 1;
      if (st === "cur") cur = c;
      if (b.state[j] !== st) {
        const el = b.cellEls[j];
        el.classList.remove("done", "cur", "todo");
        el.classList.add(st);
        b.state[j] = st;
      }
    });
    b.rowEls.forEach((tr, r) => {
      const st = step >= b.rowLast[r] && b.rowLast[r] >= 0 ? "seen" : step >= b.rowFirst[r] ? "open" : "ahead";
      if (b.rowState[r] !== st) {
        tr.classList.remove("seen", "open", "ahead");
        tr.classList.add(st);
        b.rowState[r] = st;
      }
    });
    const row = cur ? cur.row : -1;
    if (row !== b.curRow) {
      if (b.curRow >= 0) b.rowEls[b.curRow].classList.remove("currow");
      if (row >= 0) b.rowEls[row].classList.add("currow");
      b.curRow = row;
    }
    const o = w.outcome;
    const ended = o && step >= o.i;
    // the fault cell, or the data cell with its HPA, once the walk has ended
    const faultEl = ended && o.kind !== "ok" && o.row !== null ? b.tds[o.row][o.col] : null;
    if (faultEl !== b.fault) {
      if (b.fault) b.fault.classList.remove("fault");
      if (faultEl) faultEl.classList.add("fault");
      b.fault = faultEl;
    }
    if (b.dataEl) {
      const reached = ended && o.kind === "ok";
      b.dataEl.classList.toggle("reached", reached);
      b.dataEl.lastChild.textContent = reached ? `@ HPA ${o.hpa}` : "";
    }
    counter.textContent =
      `reference ${count} of ${w.total} (${w.guest} guest + ${w.ept} EPT` +
      (w.total !== w.full && ended && o.kind === "ok" ? `; a full ${w.levels}×${w.ept_levels} walk with 4 KiB pages makes ${w.full}` : "") +
      ")";
    if (cur) {
      detail.textContent =
        `#${cur.n} ${cur.name}: translating GPA ${cur.gpa} — read at HPA ${cur.hpa}, value ${cur.entry}`;
    } else if (count > 0) {
      const c = w.cells[count - 1];
      detail.textContent = `last reference #${c.n} ${c.name} at HPA ${c.hpa} = ${c.entry}`;
    } else {
      detail.textContent = "no memory reference yet: the CPU starts from gCR3, a guest-physical address";
    }
    outcome.className = "vp-w2-outcome" + (ended ? ` ${o.kind === "ok" ? "ok" : "fault"}` : "");
    outcome.textContent = ended ? (o.kind === "ok" ? `→ ${o.text}` : `stopped: ${o.text}`) : o ? "walking…" : "the trace ends inside this walk";
  }

  return { el: wrap, update };
}

PANES.walk2d = walk2dPane;

// Captions for the walk's events; the others keep the player's own.
try {
  const baseDescribeW2 = describe;
  describe = function describeWithWalk2d(ctx, i) {
    const idx = walk2dIndex(ctx);
    const k = idx.walkAt[i];
    const ev = ctx.events[i];
    if (k < 0) return baseDescribeW2(ctx, i);
    const w = idx.walks[k];
    const c = idx.cellAt[i];
    if (ev.kind === "walk_2d") {
      return {
        text: `2-D walk of GVA ${w.gva} (${w.access}): ${w.levels}-level guest paging on ${w.ept_levels}-level EPT`,
        note:
          "With EPT on, gCR3 and the address in every guest entry are guest-physical: the CPU translates each " +
          "through the EPT before it reads the guest entry, and at the end translates the final GPA — " +
          `(n + 1)(m + 1) − 1 = ${w.full} references for 4 KiB pages.`,
      };
    }
    if (c) {
      const r = w.rows[c.row];
      const why = r.level === 0 ? "the final data GPA" : `the ${r.label}`;
      return {
        text: `reference ${c.n} of ${w.total}: ${c.name} for GPA ${c.gpa} — read at HPA ${c.hpa} = ${c.entry}`,
        note:
          c.kind === "ept"
            ? `EPT walk for ${why} (GPA ${c.gpa}): one EPT entry per level, in host memory.`
            : `The EPT gave the HPA of ${why}; the CPU reads it. Its address field is the GPA of the next ` +
              "guest table — or, at the leaf, of the data page — which needs an EPT walk of its own.",
      };
    }
    const o = w.outcome;
    if (o && o.i === i) {
      return {
        text: o.kind === "ok" ? o.text : `stopped: ${o.text}`,
        note:
          o.kind === "ok"
            ? `${w.total} memory references for one TLB miss (${w.guest} guest entries, ${w.ept} EPT entries).`
            : o.kind === "guest_pf"
              ? "The guest's own tables said no: a #PF delivered to the guest, handled by its kernel."
              : "The EPT said no: a VM exit to KVM (handle_ept_violation / handle_ept_misconfig).",
      };
    }
    return baseDescribeW2(ctx, i);
  };
} catch (e) {
  // keep the generic captions
}

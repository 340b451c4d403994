// ---- the shadow-paging pane (vbook.widgets.shadow.ShadowSyncView)
//
// Spliced into trace_player.js by esm_with(): it shares that module's scope
// (h, PANES, describe). It renders the trace vbook.models.shadow.ShadowMmu
// records; what it draws was noted from the model while it ran
// (vbook.widgets.shadow.ShadowRecorder) and laid out in Python (shadow_view),
// and arrives in trace.meta.shadow_view:
//   * counters: names; values[name] = [[event index, value], …] (changes only);
//     moved[event index] = [[name, delta], …];
//   * kinds[kind] = {fn, note}: the kernel function of each event kind;
//   * cards: one per guest frame holding a shadowed table (or per direct
//     shadow page): rows (entry indices), gptes[row] = [[i, hex, flags], …],
//     sps = [{name, role, born, state: [[i, text, cls], …],
//             cells[row] = [[i, text|null, sub|null], …]}], frame = [[i, text], …].
// Every value is a list of versions; the pane shows, at step s, the last
// version at or before s, and marks it when it changed exactly at s. Nothing
// is computed here beyond that lookup.

const shVersion = lastVersion; // trace_player.js

function shadowView(ctx) {
  const v = ctx.meta.shadow_view;
  return v && typeof v === "object" ? v : null;
}

function shadowPane(ctx) {
  const view = shadowView(ctx) || { counters: [], values: {}, moved: {}, cards: [], kinds: {}, recorded: false };
  const fnBox = h("div", { class: "vp-sh-fn" });
  const movedBox = h("div", { class: "vp-sh-moved" });
  const head = h("div", { class: "vp-sh-head" }, [fnBox, movedBox]);

  const chips = view.counters.map((name) => {
    const val = h("span", { class: "val" });
    const el = h("span", { class: "vp-sh-chip", title: name }, [h("span", { class: "name", text: name }), val]);
    return { name, el, val, shown: null, hot: false };
  });
  const counterBox = h("div", { class: "vp-sh-counters" }, chips.map((c) => c.el));
  const note = view.recorded
    ? null
    : h("div", {
        class: "vp-sh-note",
        text:
          "Counters only, as the pf_result events carry them: record with " +
          "ShadowMmu(mem, cr3, trace=ShadowRecorder()) to see the guest tables and shadow pages.",
      });

  // every cell that shows a list of versions: {el, versions, sub, shown, changed}
  const cells = [];
  const track = (el, versions, fmt, sub) => {
    const c = { el, versions, fmt, sub, shown: -2, changed: false };
    cells.push(c);
    return c;
  };
  const cardEls = view.cards.map((card) => {
    const title = h("div", { class: "vp-sh-title", text: card.title });
    const frameLine = h("div", { class: "vp-sh-frame" });
    const hdr = [h("th", { class: "idx", text: "#" })];
    if (card.kind === "table") hdr.push(h("th", { class: "gside", text: "guest entry" }));
    const stateRow = [h("td", { class: "idx" })];
    if (card.kind === "table") stateRow.push(h("td", { class: "gside" }));
    const spStates = [];
    for (const sp of card.sps) {
      hdr.push(h("th", { class: "sside", text: `${sp.name} — ${sp.role}` }));
      const st = h("td", { class: "vp-sh-state sside" });
      stateRow.push(st);
      spStates.push(track(st, sp.state, (x) => x[1], null));
    }
    const rowEls = [];
    const tbody = h("tbody", {}, [h("tr", { class: "states" }, stateRow)]);
    card.rows.forEach((j, r) => {
      const tds = [h("td", { class: "idx", text: String(j) })];
      if (card.kind === "table") {
        const val = h("div", { class: "v" });
        const fl = h("div", { class: "f" });
        const td = h("td", { class: "gpte gside" }, [val, fl]);
        tds.push(td);
        track(td, card.gptes[r], null, [val, fl]);
      }
      for (const sp of card.sps) {
        const val = h("div", { class: "v" });
        const sub = h("div", { class: "f" });
        const td = h("td", { class: "spte sside" }, [val, sub]);
        tds.push(td);
        track(td, sp.cells[r], null, [val, sub]);
      }
      const tr = h("tr", {}, tds);
      rowEls.push(tr);
      tbody.append(tr);
    });
    const table = h("table", { class: "vp-sh-table" }, [h("thead", {}, [h("tr", {}, hdr)]), tbody]);
    const el = h("div", { class: `vp-sh-card ${card.kind}`, "data-gfn": card.gfn }, [title, frameLine, table]);
    const frameCell = track(frameLine, card.frame, (x) => x[1], null);
    return { card, el, spStates, frameCell, shown: null };
  });
  const cardsBox = h("div", { class: "vp-sh-cards" }, cardEls.map((c) => c.el));
  const empty = h("div", { class: "vp-sh-empty", text: "no shadow page yet" });
  const wrap = h("div", { class: "vp-shadow" }, [head, counterBox, note, view.recorded ? empty : null, cardsBox]);

  function showCell(c, step) {
    const k = shVersion(c.versions || [], step);
    const changed = k >= 0 && c.versions[k][0] === step && step > 0;
    if (k === c.shown && changed === c.changed) return changed;
    const ver = k >= 0 ? c.versions[k] : null;
    if (k !== c.shown) {
      if (c.sub) {
        c.sub[0].textContent = ver && ver[1] !== null ? ver[1] : "";
        c.sub[1].textContent = ver && ver[2] !== null && ver[2] !== undefined ? ver[2] : "";
        c.el.classList.toggle("none", !ver || ver[1] === null);
      } else {
        c.el.textContent = ver ? c.fmt(ver) : "";
      }
      if (c.el.classList.contains("vp-sh-state")) {
        c.el.className = "vp-sh-state sside " + (ver ? ver[2] : "future");
        if (!ver) c.el.textContent = "not created yet";
      }
    }
    c.el.classList.toggle("changed", changed);
    c.shown = k;
    c.changed = changed;
    return changed;
  }

  function update(step) {
    const ev = ctx.events[step];
    const kind = (view.kinds || {})[ev.kind];
    fnBox.replaceChildren(
      h("span", { class: "fn", text: kind ? kind.fn : `${ev.actor} ${ev.kind}` }),
      h("span", { class: "lbl", text: ev.label || "" }),
    );
    const moved = (view.moved || {})[String(step)] || [];
    movedBox.textContent = moved.length
      ? moved.map(([n, d]) => `${n} ${d > 0 ? "+" : ""}${d}`).join(" · ")
      : "no counter moved";
    const hot = new Set(moved.map((m) => m[0]));
    for (const c of chips) {
      const vs = view.values[c.name] || [];
      const k = shVersion(vs, step);
      const val = k >= 0 ? vs[k][1] : 0;
      if (val !== c.shown) {
        c.val.textContent = String(val);
        c.shown = val;
      }
      const isHot = hot.has(c.name);
      if (isHot !== c.hot) {
        c.el.classList.toggle("moved", isHot);
        c.hot = isHot;
      }
    }
    let firstChanged = null;
    let visible = 0;
    for (const ce of cardEls) {
      const on = step >= ce.card.born;
      if (on !== ce.shown) {
        ce.el.style.display = on ? "" : "none";
        ce.shown = on;
      }
      if (on) visible++;
    }
    empty.style.display = visible ? "none" : "";
    for (const c of cells) {
      if (showCell(c, step) && firstChanged === null) firstChanged = c.el;
    }
    for (const ce of cardEls) {
      ce.el.classList.toggle("touched", ce.el.querySelector(".changed") !== null);
    }
    // keep what just changed in view inside the cards' own scroll box (not the page)
    if (firstChanged && cardsBox.clientHeight) {
      const box = cardsBox.getBoundingClientRect();
      const r = firstChanged.getBoundingClientRect();
      if (r.top < box.top || r.bottom > box.bottom) {
        cardsBox.scrollTop = Math.max(0, cardsBox.scrollTop + r.top - box.top - cardsBox.clientHeight / 3);
      }
    }
  }

  return { el: wrap, update };
}

PANES.shadow = shadowPane;

// Captions for the shadow MMU's events; the others keep the player's own.
try {
  const baseDescribeSh = describe;
  describe = function describeWithShadow(ctx, i) {
    const view = shadowView(ctx);
    const ev = ctx.events[i];
    const kind = view && (view.kinds || {})[ev.kind];
    if (!kind) return baseDescribeSh(ctx, i);
    const moved = (view.moved || {})[String(i)] || [];
    const tail = moved.length ? ` Moved: ${moved.map(([n, d]) => `${n} ${d > 0 ? "+" : ""}${d}`).join(", ")}.` : "";
    return { text: `${kind.fn}: ${ev.label}`, note: kind.note + tail };
  };
} catch (e) {
  // keep the generic captions
}

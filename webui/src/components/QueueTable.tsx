// The queue: a virtual list (only the rows in view are in the DOM, so 10,000 items scroll
// freely) with drag-and-drop, multi-select, keyboard moves, duplicate, edit, delete + undo.
import { useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { can, describeArgs, useApp } from "../state";
import type { DryRunReply, Item } from "../types";
import { DryRunView } from "./DryRun";

const ROW = 34; // px: every row has this height, which makes the virtual list exact
const OVERSCAN = 8;

function bare(item: Item): Item {
  const { item_uid: _u, result: _r, user: _us, user_group: _g, ...rest } = item;
  return rest;
}

export function QueueTable(props: {
  items: Item[];
  running: Item | null;
  selected: Set<string>;
  setSelected: (s: Set<string>) => void;
  onEdit: (item: Item) => void;
}) {
  const ctx = useApp();
  const { items, selected, setSelected } = props;
  const box = useRef<HTMLDivElement>(null);
  const [top, setTop] = useState(0);
  const [height, setHeight] = useState(400);
  const [drop, setDrop] = useState<{ uid: string; after: boolean } | null>(null);
  const dragged = useRef<string[]>([]);
  const anchor = useRef<number>(-1);
  const editable = can(ctx, "write:queue:edit");
  // The dry run of one queued item (ADR 31): its report under the toolbar until closed.
  const [dry, setDry] = useState<{ uid: string; name: string; reply: DryRunReply | null } | null>(null);

  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight || 400));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
  const last = Math.min(items.length, Math.ceil((top + height) / ROW) + OVERSCAN);
  const visible = items.slice(first, last);
  // The selection in queue order (worked out when either changes, not on every scroll).
  const sel = useMemo(
    () => (selected.size ? items.map((i) => i.item_uid!).filter((u) => selected.has(u)) : []),
    [items, selected],
  );

  const click = (e: MouseEvent, index: number) => {
    const uid = items[index].item_uid!;
    if (e.shiftKey && anchor.current >= 0) {
      const [a, b] = [Math.min(anchor.current, index), Math.max(anchor.current, index)];
      setSelected(new Set(items.slice(a, b + 1).map((i) => i.item_uid!)));
      return;
    }
    anchor.current = index;
    if (e.ctrlKey || e.metaKey) toggle(uid);
    else setSelected(new Set([uid]));
  };
  const toggle = (uid: string) => {
    const next = new Set(selected);
    if (next.has(uid)) next.delete(uid);
    else next.add(uid);
    setSelected(next);
  };

  const move = (uids: string[], where: object) =>
    ctx.act("Move", () =>
      uids.length === 1
        ? ctx.api.post("/api/queue/item/move", { uid: uids[0], ...where })
        : ctx.api.post("/api/queue/item/move/batch", { uids, ...where }),
    );

  const remove = async (uids: string[]) => {
    const gone = items
      .map((it, index) => ({ it, index }))
      .filter(({ it }) => uids.includes(it.item_uid!));
    const err = await ctx.act("Delete", () => ctx.api.post("/api/queue/item/remove/batch", { uids }));
    if (err) return;
    setSelected(new Set());
    ctx.notify(`Deleted ${gone.length} item${gone.length === 1 ? "" : "s"}`, () => {
      // Back where they were, in their order (each index counts the ones put back before it).
      void ctx.act("Undo", async () => {
        for (const { it, index } of gone) await ctx.api.post("/api/queue/item/add", { item: bare(it), pos: index });
      });
    });
  };

  const duplicate = (uids: string[]) =>
    ctx.act("Duplicate", async () => {
      for (const uid of uids) {
        const it = items.find((i) => i.item_uid === uid);
        if (it) await ctx.api.post("/api/queue/item/add", { item: bare(it), after_uid: uid });
      }
    });

  const dryRun = async (it: Item) => {
    const uid = it.item_uid!;
    setDry({ uid, name: it.name, reply: null });
    let reply: DryRunReply;
    try {
      reply = await ctx.api.post<DryRunReply>("/api/item/dry_run", { uid });
    } catch (e) {
      reply = { success: false, msg: e instanceof Error ? e.message : String(e) };
    }
    setDry((d) => (d?.uid === uid ? { ...d, reply } : d));
  };

  const onKey = (e: KeyboardEvent, index: number) => {
    const uid = items[index].item_uid!;
    const focusRow = (i: number) => {
      const j = Math.max(0, Math.min(items.length - 1, i));
      const el = box.current!;
      if (j * ROW < el.scrollTop) el.scrollTop = j * ROW;
      if ((j + 1) * ROW > el.scrollTop + el.clientHeight) el.scrollTop = (j + 1) * ROW - el.clientHeight;
      requestAnimationFrame(() => (el.querySelector(`[data-index="${j}"]`) as HTMLElement | null)?.focus());
    };
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const step = e.key === "ArrowDown" ? 1 : -1;
      if (e.altKey && editable) {
        const target = items[index + step];
        if (target) void move([uid], step > 0 ? { after_uid: target.item_uid } : { before_uid: target.item_uid });
      }
      focusRow(index + step);
    } else if (e.key === " ") {
      e.preventDefault();
      toggle(uid);
    } else if (e.key === "Delete" && editable) {
      void remove(sel.length ? sel : [uid]);
    } else if (e.key === "Enter" && editable) {
      props.onEdit(items[index]);
    }
  };

  return (
    <section id="queue" class="panel" aria-label="Queue">
      <h2>
        Queue <small>({items.length})</small>
      </h2>
      <div class="row toolbar" role="toolbar" aria-label="Queue actions">
        <button type="button" disabled={!editable || !sel.length} onClick={() => move(sel, { pos_dest: "front" })}>
          Move to top
        </button>
        <button type="button" disabled={!editable || !sel.length} onClick={() => move(sel, { pos_dest: "back" })}>
          Move to bottom
        </button>
        <button type="button" disabled={!editable || !sel.length} onClick={() => duplicate(sel)}>
          Duplicate
        </button>
        <button
          type="button"
          disabled={!editable || sel.length !== 1}
          onClick={() => props.onEdit(items.find((i) => i.item_uid === sel[0])!)}
        >
          Edit
        </button>
        <button type="button" class="danger" disabled={!editable || !sel.length} onClick={() => remove(sel)}>
          Delete
        </button>
        <button
          type="button"
          disabled={!editable || sel.length !== 1}
          onClick={() => dryRun(items.find((i) => i.item_uid === sel[0])!)}
        >
          Dry run
        </button>
        <button
          type="button"
          class="danger"
          disabled={!editable || !items.length}
          onClick={async () => {
            if (await ctx.confirm(`Remove all ${items.length} items from the queue?`))
              await ctx.act("Clear queue", () => ctx.api.post("/api/queue/clear"));
          }}
        >
          Clear queue
        </button>
        <span>{sel.length ? `${sel.length} selected` : ""}</span>
      </div>
      {dry && (
        <div class="dry">
          <div class="row">
            <b>Dry run of {dry.name}</b>
            <button type="button" onClick={() => setDry(null)}>
              Close dry run
            </button>
          </div>
          <DryRunView reply={dry.reply} label={`Dry run of ${dry.name}`} />
        </div>
      )}
      <div
        class="vlist"
        ref={box}
        role="grid"
        aria-label="Queue items"
        aria-rowcount={items.length}
        aria-multiselectable="true"
        data-testid="queue-list"
        onScroll={(e) => setTop(e.currentTarget.scrollTop)}
      >
        {items.length === 0 && <p class="empty">The queue is empty.</p>}
        <div style={{ height: `${items.length * ROW}px`, position: "relative" }}>
          {visible.map((it, k) => {
            const index = first + k;
            const uid = it.item_uid!;
            const marked = drop?.uid === uid ? (drop.after ? " drop-after" : " drop-before") : "";
            return (
              <div
                key={uid}
                class={"qrow" + (selected.has(uid) ? " selected" : "") + marked}
                style={{ top: `${index * ROW}px` }}
                role="row"
                aria-rowindex={index + 1}
                aria-selected={selected.has(uid)}
                aria-label={`${index + 1}. ${it.name} ${describeArgs(it.args, it.kwargs)}`}
                data-index={index}
                data-uid={uid}
                tabIndex={0}
                draggable={editable}
                onClick={(e) => click(e, index)}
                onDblClick={() => editable && props.onEdit(it)}
                onKeyDown={(e) => onKey(e, index)}
                onDragStart={(e) => {
                  dragged.current = selected.has(uid) ? sel : [uid];
                  e.dataTransfer?.setData("text/plain", dragged.current.join(","));
                  if (e.dataTransfer) e.dataTransfer.effectAllowed = "move";
                }}
                onDragOver={(e) => {
                  e.preventDefault();
                  const r = e.currentTarget.getBoundingClientRect();
                  const after = e.clientY > r.top + r.height / 2;
                  if (drop?.uid !== uid || drop.after !== after) setDrop({ uid, after });
                }}
                onDragLeave={() => setDrop(null)}
                onDrop={(e) => {
                  e.preventDefault();
                  const uids = dragged.current.filter((u) => u !== uid);
                  const after = drop?.after ?? false;
                  setDrop(null);
                  if (uids.length) void move(uids, after ? { after_uid: uid } : { before_uid: uid });
                }}
                onDragEnd={() => setDrop(null)}
              >
                <span role="gridcell" class="pos">
                  <input
                    type="checkbox"
                    aria-label={`Select ${index + 1}. ${it.name}`}
                    checked={selected.has(uid)}
                    onClick={(e) => {
                      e.stopPropagation();
                      toggle(uid);
                    }}
                  />
                  {index + 1}
                </span>
                <span role="gridcell" class="name">
                  {it.item_type === "instruction" ? "⏹ " : ""}
                  {it.name}
                </span>
                <span role="gridcell" class="args" title={describeArgs(it.args, it.kwargs)}>
                  {describeArgs(it.args, it.kwargs)}
                </span>
                <span role="gridcell" class="user">
                  {it.user ?? ""}
                </span>
              </div>
            );
          })}
        </div>
      </div>
    </section>
  );
}

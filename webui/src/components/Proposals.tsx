// Proposals (ADR 30): items of gated groups waiting for review. Reviewers (scope
// `write:queue:approve`) inspect one with its dry run, edit, approve it to a position in
// the queue or reject it with a reason; a proposer sees only its own proposals.
import { useEffect, useState } from "preact/hooks";
import { can, describeArgs, fmtTime, useApp } from "../state";
import type { DryRunReply, Item, Proposal } from "../types";
import { DryRunView } from "./DryRun";

type Where = "back" | "front" | "before" | "after";

export const uidOf = (p: Proposal): string => p.item.item_uid ?? "";

export function Proposals(props: { proposals: Proposal[]; queue: Item[]; user: string }) {
  const ctx = useApp();
  const reviewer = can(ctx, "write:queue:approve");
  // A proposer follows its own; reviewers and observers (who read the queue) see them all.
  const own = !reviewer && can(ctx, "write:queue:propose");
  const shown = own ? props.proposals.filter((p) => p.proposed_by === props.user) : props.proposals;
  const [open, setOpen] = useState<string | null>(null);
  const current = shown.find((p) => uidOf(p) === open) ?? null;

  return (
    <section id="proposals" class="panel" aria-label="Proposals">
      <h2>
        {own ? "Your proposals" : "Proposals"} <small>({shown.length})</small>
      </h2>
      {shown.length === 0 && <p class="empty">No proposal waits for review.</p>}
      <ul class="proposals" aria-label="Proposals waiting">
        {shown.map((p) => {
          const uid = uidOf(p);
          const text = `${p.item.name} ${describeArgs(p.item.args, p.item.kwargs)}`;
          return (
            <li key={uid} class={uid === open ? "selected" : ""} aria-label={`${p.item.name} by ${p.proposed_by}`}>
              <button
                type="button"
                class="link"
                aria-expanded={uid === open}
                onClick={() => setOpen(uid === open ? null : uid)}
              >
                Inspect
              </button>{" "}
              <b>{p.item.name}</b> <span class="mono">{describeArgs(p.item.args, p.item.kwargs)}</span>
              <div class="meta">
                by {p.proposed_by} ({p.user_group}) · {fmtTime(p.time)}
                {p.edited_by ? ` · edited by ${p.edited_by}` : ""}
                {p.note ? <q title={text}>{p.note}</q> : ""}
              </div>
            </li>
          );
        })}
      </ul>
      {current && <Review key={uidOf(current)} proposal={current} queue={props.queue} done={() => setOpen(null)} />}
    </section>
  );
}

/** One proposal, with its dry run and the reviewer's actions. */
function Review(props: { proposal: Proposal; queue: Item[]; done: () => void }) {
  const ctx = useApp();
  const { proposal: p, queue } = props;
  const uid = uidOf(p);
  const reviewer = can(ctx, "write:queue:approve");
  const [dry, setDry] = useState<DryRunReply | null>(null);
  const [where, setWhere] = useState<Where>("back");
  const [anchor, setAnchor] = useState("");
  const [reason, setReason] = useState("");
  const [editing, setEditing] = useState(false);
  const [itemText, setItemText] = useState("");
  const [note, setNote] = useState(p.note);
  const [problem, setProblem] = useState("");
  const [busy, setBusy] = useState(false);
  const itemKey = JSON.stringify([p.item.name, p.item.args, p.item.kwargs]);

  // The dry run of the proposal as it is now: asked again after each edit. It runs plan
  // code in the environment: not asked for an observer (as `/api/item/dry_run`, ADR 31).
  const simulates = ["write:queue:approve", "write:queue:propose", "write:queue:edit"].some((s) => can(ctx, s));
  useEffect(() => {
    let gone = false;
    setDry(null);
    if (!simulates) {
      setDry({ success: false, msg: "your scopes do not include dry runs" });
      return;
    }
    ctx.api
      .post<{ dry_run?: DryRunReply | null }>("/api/proposals/get", { uid, dry_run: true })
      .then((r) => !gone && setDry(r.dry_run ?? { success: false, msg: "the server gave none" }))
      .catch((e: unknown) => !gone && setDry({ success: false, msg: e instanceof Error ? e.message : String(e) }));
    return () => {
      gone = true;
    };
  }, [uid, itemKey, simulates]);

  const run = async (label: string, fn: () => Promise<unknown>) => {
    setBusy(true);
    setProblem("");
    const err = await ctx.act(label, fn);
    setBusy(false);
    if (err) setProblem(err);
    return err;
  };

  const approve = async () => {
    const pos =
      where === "front" || where === "back"
        ? { pos: where }
        : where === "before"
          ? { before_uid: anchor }
          : { after_uid: anchor };
    if (!(await run("Approve", () => ctx.api.post("/api/proposals/approve", { uid, ...pos })))) {
      ctx.notify(`Approved ${p.item.name} of ${p.proposed_by}`);
      props.done();
    }
  };

  const reject = async () => {
    if (!reason.trim()) {
      setProblem("Give a reason for the rejection");
      return;
    }
    if (!(await ctx.confirm(`Reject ${p.item.name} of ${p.proposed_by}: "${reason.trim()}"?`))) return;
    if (!(await run("Reject", () => ctx.api.post("/api/proposals/reject", { uid, reason: reason.trim() })))) {
      ctx.notify(`Rejected ${p.item.name} of ${p.proposed_by}`);
      props.done();
    }
  };

  const save = async () => {
    let item: Item;
    try {
      item = JSON.parse(itemText) as Item;
      if (!item || typeof item.name !== "string") throw new Error("needs a 'name'");
    } catch (e) {
      setProblem(`JSON: ${(e as Error).message}`);
      return;
    }
    const body = { uid, item: { item_type: "plan", ...item, item_uid: uid }, note };
    if (!(await run("Save proposal", () => ctx.api.post("/api/proposals/update", body)))) setEditing(false);
  };

  const needsAnchor = where === "before" || where === "after";
  return (
    <div class="review" role="region" aria-label={`Proposal ${p.item.name} by ${p.proposed_by}`}>
      <h3>
        {p.item.name} <small>proposed by {p.proposed_by}</small>
      </h3>
      <pre class="mono">{JSON.stringify({ args: p.item.args ?? [], kwargs: p.item.kwargs ?? {} })}</pre>
      {p.note && <p>Note: {p.note}</p>}
      <DryRunView reply={dry} label="Dry run report" />
      {editing && (
        <div class="edit">
          <label class="block">
            Proposed item
            <textarea rows={5} value={itemText} spellcheck={false} onInput={(e) => setItemText(e.currentTarget.value)} />
          </label>
          <label class="block">
            Note <input value={note} onInput={(e) => setNote(e.currentTarget.value)} />
          </label>
          <div class="row">
            <button type="button" class="primary" disabled={busy} onClick={save}>
              Save proposal
            </button>
            <button type="button" onClick={() => setEditing(false)}>
              Cancel edit
            </button>
          </div>
        </div>
      )}
      <div class="row" role="group" aria-label="Approve">
        <label>
          Approve to{" "}
          <select value={where} disabled={!reviewer} onChange={(e) => setWhere(e.currentTarget.value as Where)}>
            <option value="back">the back</option>
            <option value="front">the front</option>
            <option value="before" disabled={!queue.length}>
              before an item
            </option>
            <option value="after" disabled={!queue.length}>
              after an item
            </option>
          </select>
        </label>
        {needsAnchor && (
          <label>
            Queue item{" "}
            <select value={anchor} disabled={!reviewer} onChange={(e) => setAnchor(e.currentTarget.value)}>
              <option value="">–</option>
              {queue.map((it, i) => (
                <option key={it.item_uid} value={it.item_uid}>
                  {i + 1}. {it.name}
                </option>
              ))}
            </select>
          </label>
        )}
        <button type="button" class="primary" disabled={!reviewer || busy || (needsAnchor && !anchor)} onClick={approve}>
          Approve
        </button>
        <button
          type="button"
          disabled={!reviewer || busy || editing}
          onClick={() => {
            const { name, args, kwargs } = p.item;
            setItemText(JSON.stringify({ name, args: args ?? [], kwargs: kwargs ?? {} }, null, 2));
            setNote(p.note);
            setEditing(true);
          }}
        >
          Edit
        </button>
      </div>
      <div class="row" role="group" aria-label="Reject">
        <label>
          Reason <input value={reason} disabled={!reviewer} onInput={(e) => setReason(e.currentTarget.value)} />
        </label>
        <button type="button" class="danger" disabled={!reviewer || busy} onClick={reject}>
          Reject
        </button>
      </div>
      {problem && (
        <p class="bad" role="alert">
          {problem}
        </p>
      )}
    </div>
  );
}

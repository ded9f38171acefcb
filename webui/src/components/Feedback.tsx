// Messages (with an undo where an action can be taken back) and the confirmation dialog.
import { useEffect, useRef } from "preact/hooks";

export interface Note {
  id: number;
  text: string;
  undo?: () => void;
}

export function Feedback(props: {
  notes: Note[];
  asking: { q: string; answer: (ok: boolean) => void } | null;
  done: () => void;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = dialog.current;
    if (!d) return;
    if (props.asking && !d.open) d.showModal();
    if (!props.asking && d.open) d.close();
  }, [props.asking]);
  const answer = (ok: boolean) => {
    props.asking?.answer(ok);
    props.done();
  };
  return (
    <>
      <div class="notes" role="log" aria-live="assertive" aria-label="Messages">
        {props.notes.map((n) => (
          <div class="note" key={n.id}>
            {n.text}
            {n.undo && (
              <button type="button" onClick={n.undo}>
                Undo
              </button>
            )}
          </div>
        ))}
      </div>
      <dialog ref={dialog} aria-label="Confirm" onCancel={() => answer(false)}>
        <p>{props.asking?.q}</p>
        <div class="row">
          <button type="button" onClick={() => answer(false)}>
            Cancel
          </button>
          <button type="button" class="danger" onClick={() => answer(true)}>
            Confirm
          </button>
        </div>
      </dialog>
    </>
  );
}

// Add or edit a plan from a form built from its description, or as JSON; batch upload.
import { useEffect, useMemo, useState } from "preact/hooks";
import { can, useApp } from "../state";
import type { Item, PlanInfo } from "../types";
import type { Devices } from "./App";
import { buildItem, fieldsNamed, valuesOf, widgetOf, type Values, type Widget } from "./planform";

type Where = "back" | "front" | "before" | "after";

export function PlanEditor(props: {
  plans: Record<string, PlanInfo>;
  devices: Devices;
  editing: Item | null;
  doneEditing: () => void;
  selected: string[];
}) {
  const ctx = useApp();
  const { plans, devices, editing } = props;
  const names = useMemo(() => Object.keys(plans).sort(), [plans]);
  const [name, setName] = useState("");
  const [values, setValues] = useState<Values>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [formError, setFormError] = useState("");
  const [jsonMode, setJsonMode] = useState(false);
  const [jsonText, setJsonText] = useState("");
  const [where, setWhere] = useState<Where>("back");
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState("");
  const plan = plans[name];
  const editable = can(ctx, "write:queue:edit");
  // A gated group's member (role `proposer`) proposes instead of adding (ADR 30).
  const proposing = can(ctx, "write:queue:propose") && !editing;

  useEffect(() => {
    if (!name && names.length) setName(names.includes("count") ? "count" : names[0]);
  }, [names, name]);

  // Editing: the item's values in the form (its JSON when its plan is not allowed here).
  useEffect(() => {
    if (!editing) return;
    setErrors({});
    setFormError("");
    const p = plans[editing.name];
    setName(editing.name);
    if (p) {
      setValues(valuesOf(p, editing.args ?? [], editing.kwargs ?? {}, devices));
      setJsonMode(false);
    } else {
      setJsonText(JSON.stringify({ name: editing.name, args: editing.args ?? [], kwargs: editing.kwargs ?? {} }, null, 2));
      setJsonMode(true);
    }
  }, [editing]);

  const fromForm = (): Item | null => {
    if (!plan) {
      setFormError("Pick a plan");
      return null;
    }
    const built = buildItem(plan, values, devices);
    if ("errors" in built) {
      setErrors(built.errors);
      setFormError("Some fields need attention");
      return null;
    }
    return { item_type: "plan", name, args: built.args, kwargs: built.kwargs };
  };

  const fromJson = (): Item | null => {
    try {
      const v = JSON.parse(jsonText) as Item;
      if (!v || typeof v !== "object" || typeof v.name !== "string") throw new Error("needs a 'name'");
      return { item_type: "plan", ...v };
    } catch (e) {
      setFormError(`JSON: ${(e as Error).message}`);
      return null;
    }
  };

  const toggleJson = () => {
    if (!jsonMode) {
      const it = fromForm();
      setJsonText(JSON.stringify(it ?? { name, args: [], kwargs: {} }, null, 2));
      setJsonMode(true);
    } else {
      const it = fromJson();
      if (!it) return;
      if (plans[it.name]) {
        setName(it.name);
        setValues(valuesOf(plans[it.name], it.args ?? [], it.kwargs ?? {}, devices));
      }
      setJsonMode(false);
    }
    setErrors({});
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    const propose = (e as SubmitEvent).submitter?.getAttribute("value") === "propose";
    setErrors({});
    setFormError("");
    const item = jsonMode ? fromJson() : fromForm();
    if (!item) return;
    setBusy(true);
    let err: string | null;
    if (propose) {
      err = await ctx.act("Propose", () => ctx.api.post("/api/proposals/add", { item, note }));
    } else if (editing) {
      err = await ctx.act("Save", () => ctx.api.post("/api/queue/item/update", { item: { ...item, item_uid: editing.item_uid } }));
    } else {
      const sel = props.selected;
      const pos =
        where === "front"
          ? { pos: "front" }
          : where === "before" && sel.length
            ? { before_uid: sel[0] }
            : where === "after" && sel.length
              ? { after_uid: sel[sel.length - 1] }
              : { pos: "back" };
      err = await ctx.act("Add", () => ctx.api.post("/api/queue/item/add", { item, ...pos }));
    }
    setBusy(false);
    if (err) {
      setFormError(err);
      if (plan && !jsonMode) {
        const at: Record<string, string> = {};
        for (const f of fieldsNamed(plan, err)) at[f] = err;
        setErrors(at);
      }
      return;
    }
    if (editing) props.doneEditing();
    if (propose) setNote("");
    ctx.notify(propose ? `Proposed ${item.name} for review` : editing ? `Saved ${item.name}` : `Added ${item.name}`);
  };

  const upload = async (file: File | undefined) => {
    if (!file) return;
    const err = await ctx.act("Upload", () => ctx.api.upload("/api/queue/upload/spreadsheet", file));
    if (!err) ctx.notify(`Added the plans of ${file.name}`);
  };

  return (
    <section id="editor" class="panel" aria-label={editing ? "Edit item" : "Add plan"}>
      <h2>{editing ? `Edit item ${editing.name}` : "Add plan"}</h2>
      <form onSubmit={submit} aria-label="Plan form" noValidate>
        <div class="row">
          <label>
            Plan{" "}
            <select
              value={name}
              disabled={jsonMode}
              onChange={(e) => {
                setName(e.currentTarget.value);
                setValues({});
                setErrors({});
              }}
            >
              {names.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
          <button type="button" onClick={toggleJson} aria-pressed={jsonMode}>
            {jsonMode ? "Form view" : "JSON view"}
          </button>
        </div>
        {plan?.description && !jsonMode && <p class="desc">{plan.description.split("\n")[0]}</p>}
        {jsonMode ? (
          <label class="block">
            Item JSON
            <textarea rows={8} value={jsonText} spellcheck={false} onInput={(e) => setJsonText(e.currentTarget.value)} />
          </label>
        ) : (
          plan && (
            <div class="params">
              {plan.parameters.map((p) => (
                <Field
                  key={`${name}.${p.name}`}
                  name={p.name}
                  widget={widgetOf(p, devices)}
                  description={p.description}
                  dflt={p.default}
                  required={p.default === undefined && !p.kind.name.startsWith("VAR_")}
                  value={values[p.name]}
                  error={errors[p.name]}
                  onChange={(v) => setValues((old) => ({ ...old, [p.name]: v }))}
                />
              ))}
            </div>
          )
        )}
        {formError && (
          <p class="bad" role="alert" data-testid="form-error">
            {formError}
          </p>
        )}
        <div class="row">
          {!editing && (
            <label>
              Add at{" "}
              <select value={where} onChange={(e) => setWhere(e.currentTarget.value as Where)}>
                <option value="back">the back</option>
                <option value="front">the front</option>
                <option value="before" disabled={!props.selected.length}>
                  before the selected
                </option>
                <option value="after" disabled={!props.selected.length}>
                  after the selected
                </option>
              </select>
            </label>
          )}
          <button type="submit" class="primary" disabled={!editable || busy}>
            {editing ? "Save" : "Add to queue"}
          </button>
          {proposing && (
            <>
              <label>
                Note for the reviewer <input value={note} onInput={(e) => setNote(e.currentTarget.value)} />
              </label>
              <button type="submit" value="propose" disabled={busy}>
                Propose for review
              </button>
            </>
          )}
          {editing && (
            <button type="button" onClick={props.doneEditing}>
              Cancel edit
            </button>
          )}
        </div>
      </form>
      {!editing && (
        <div class="row">
          <label>
            Batch from a spreadsheet{" "}
            <input
              type="file"
              accept=".xlsx,.xls,.csv"
              disabled={!editable}
              onChange={(e) => {
                void upload(e.currentTarget.files?.[0]);
                e.currentTarget.value = "";
              }}
            />
          </label>
        </div>
      )}
    </section>
  );
}

function Field(props: {
  name: string;
  widget: Widget;
  description?: string;
  dflt?: string;
  required: boolean;
  value: string | string[] | undefined;
  error?: string;
  onChange: (v: string | string[]) => void;
}) {
  const { name, widget: w, value, error } = props;
  const id = `param-${name}`;
  const hint = props.description?.split("\n")[0] ?? "";
  const placeholder = props.dflt !== undefined ? `default ${props.dflt}` : props.required ? "required" : "";
  const common = {
    id,
    "aria-invalid": error ? true : undefined,
    "aria-describedby": `${id}-hint`,
  };
  let input;
  if (w.kind === "devices" && w.multi) {
    const chosen = Array.isArray(value) ? value : [];
    input = (
      <select
        {...common}
        multiple
        size={Math.min(5, Math.max(2, w.options.length))}
        onChange={(e) => props.onChange([...e.currentTarget.selectedOptions].map((o) => o.value))}
      >
        {w.options.map((o) => (
          <option key={o} value={o} selected={chosen.includes(o)}>
            {o}
          </option>
        ))}
      </select>
    );
  } else if (w.kind === "devices" || w.kind === "enum") {
    input = (
      <select {...common} value={typeof value === "string" ? value : ""} onChange={(e) => props.onChange(e.currentTarget.value)}>
        <option value="">{placeholder || "–"}</option>
        {w.options.map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    );
  } else if (w.kind === "bool") {
    input = (
      <select {...common} value={typeof value === "string" ? value : ""} onChange={(e) => props.onChange(e.currentTarget.value)}>
        <option value="">{placeholder || "–"}</option>
        <option value="true">true</option>
        <option value="false">false</option>
      </select>
    );
  } else if (w.kind === "number") {
    input = (
      <input
        {...common}
        type="number"
        min={w.min}
        max={w.max}
        step={w.step ?? (w.integer ? 1 : "any")}
        placeholder={placeholder}
        value={typeof value === "string" ? value : ""}
        onInput={(e) => props.onChange(e.currentTarget.value)}
      />
    );
  } else {
    input = (
      <input
        {...common}
        type="text"
        class={w.kind === "json" || w.kind === "list" ? "mono" : ""}
        placeholder={placeholder || (w.kind === "list" ? "values, separated by commas" : "")}
        value={typeof value === "string" ? value : ""}
        onInput={(e) => props.onChange(e.currentTarget.value)}
      />
    );
  }
  const limits =
    w.kind === "number" && (w.min !== undefined || w.max !== undefined) ? ` [${w.min ?? "…"}, ${w.max ?? "…"}]` : "";
  return (
    <div class={"field" + (error ? " invalid" : "")}>
      <label for={id}>
        {name}
        {props.required ? " *" : ""}
      </label>
      {input}
      <small id={`${id}-hint`}>
        {error ? (
          <span class="bad" role="alert">
            {error}
          </span>
        ) : (
          hint + limits
        )}
      </small>
    </div>
  );
}


// The gateway's JSON shapes the page reads (docs/http.md, docs/protocol.md).

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface QueueMode {
  loop: boolean;
  ignore_failures: boolean;
}

export interface LockStatus {
  environment: boolean;
  queue: boolean;
}

export interface ProgressSummary {
  run_uid: string;
  point: number;
  num_points: number | null;
  elapsed: number;
  eta: number | null;
}

export interface Status {
  msg: string;
  items_in_queue: number;
  items_in_history: number;
  running_item_uid: string | null;
  manager_state: string;
  queue_stop_pending: boolean;
  queue_autostart_enabled: boolean;
  worker_environment_exists: boolean;
  worker_environment_state: string;
  re_state: string | null;
  pause_pending: boolean;
  plan_queue_uid: string;
  plan_history_uid: string;
  plans_allowed_uid: string;
  devices_allowed_uid: string;
  plan_queue_mode: QueueMode;
  lock_info_uid: string;
  lock: LockStatus;
  progress?: ProgressSummary | null;
  items_in_proposals?: number;
  proposals_uid?: string;
}

export interface HistoryResult {
  exit_status: string;
  run_uids: string[];
  scan_ids: number[];
  time_start: number;
  time_stop: number;
  msg: string;
  traceback: string;
  reason?: string; // a rejected proposal's (ADR 30)
  reviewer?: string;
}

export interface Item {
  item_type?: string;
  name: string;
  args?: Json[];
  kwargs?: { [k: string]: Json };
  item_uid?: string;
  user?: string;
  user_group?: string;
  meta?: Json;
  properties?: { [k: string]: Json };
  result?: HistoryResult;
}

export interface QueueReply {
  items: Item[];
  running_item: Item | Record<string, never>;
  plan_queue_uid: string;
}

export interface HistoryReply {
  items: Item[];
  plan_history_uid: string;
}

export interface ParamKind {
  name: string;
  value: number;
}

export interface ParamAnnotation {
  type: string;
  devices?: { [k: string]: string[] };
  plans?: { [k: string]: string[] };
  enums?: { [k: string]: string[] };
}

export interface PlanParam {
  name: string;
  kind: ParamKind;
  default?: string;
  description?: string;
  annotation?: ParamAnnotation;
  min?: string | number;
  max?: string | number;
  step?: string | number;
  convert_device_names?: boolean;
}

export interface PlanInfo {
  name: string;
  description?: string;
  parameters: PlanParam[];
  properties?: { [k: string]: Json };
}

export interface LockInfo {
  environment: boolean;
  queue: boolean;
  user: string | null;
  note: string | null;
  time_str: string;
}

/** `<prefix>.events.progress` as the gateway's `/api/progress/ws` pushes it (ADR 25). */
export interface Progress {
  time: number;
  item_uid: string | null;
  run_uid: string;
  scan_id: number | null;
  plan_name: string | null;
  point: number;
  num_points: number | null;
  elapsed: number;
  eta: number | null;
  motors: string[];
  detectors: string[];
  positions: { [motor: string]: number };
  done: boolean;
  exit_status: string | null;
}

export interface RunDoc {
  name: string;
  doc: { [k: string]: Json };
}

export interface ConsoleMsg {
  time: number;
  msg: string;
}

/** An item waiting for review (ADR 30, docs/proposals.md). */
export interface Proposal {
  item: Item;
  proposed_by: string;
  user_group: string;
  time: number;
  note: string;
  edited_by: string;
}

export interface ProposalList {
  proposals: Proposal[];
  proposals_uid: string;
}

export interface MotorRange {
  name: string;
  moves: number;
  start: number | null;
  min: number | null;
  max: number | null;
  limits: number[] | null;
  within_limits: boolean | null;
}

export interface LimitViolation {
  device: string;
  count: number;
  values: Json[];
  limits: number[] | null;
  msg: string;
}

/** `item_dry_run`'s report (ADR 31): what the plan would do, from a simulation. */
export interface DryRunReport {
  plan_name: string;
  complete: boolean;
  messages: number;
  runs: number;
  num_points: number;
  num_points_declared: number | null;
  events: { [stream: string]: number };
  motors: MotorRange[];
  detectors: string[];
  flyers: string[];
  violations: LimitViolation[];
  estimated_duration: number | null;
  duration_unknown: string[];
  notes: string[];
  elapsed: number;
}

export interface DryRunReply {
  success: boolean;
  msg: string;
  item?: Item | null;
  source?: string | null;
  report?: DryRunReport | null;
}

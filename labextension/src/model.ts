/**
 * The extension's pure logic: the server's data types, and how phases, durations, GPU
 * requests and the pool read to a person. No JupyterLab import here, so jest tests it as is.
 */

/** One start phase of a remote kernel, as the provisioner records it. */
export interface IPhaseEvent {
  phase: string; // queued | placed | sharing | ready | reattached
  time: number; // seconds since the epoch
  position?: number;
  waiting_for?: string;
  node?: string;
  gpu_ids?: number[];
  estimated_start?: number;
}

/** A "Run on GPU" run as the server extension describes it. */
export interface IRun {
  id: string;
  kernel_id: string;
  kernel_name: string;
  path: string;
  created: number;
  state: 'starting' | 'ready' | 'ended' | 'failed';
  error: string;
  events: IPhaseEvent[];
}

export interface IGpu {
  index: number;
  model: string;
  name?: string;
  memory: number;
  simulated?: boolean;
  holder: string | null;
  session: string | null;
  since: number | null;
  utilization: number | null;
  memory_used: number | null;
}

export interface INode {
  name: string;
  up: boolean;
  labels?: string[];
  gpus: IGpu[];
}

export interface ISession {
  id: string;
  user: string;
  state: string;
  node: string | null;
  gpu_ids: number[];
  request: { gpus: number; gpu_type?: string | null };
  created: number;
  placed: number | null;
  position?: number;
  waiting_for?: string;
  notebook_path?: string;
}

export interface IPool {
  nodes: INode[];
  queue: ISession[];
  mine: ISession[];
  user: string;
  time: number;
  simulated: boolean;
}

/** What a notebook asks for, kept in its metadata under "hwsched". */
export interface IGpuRequest {
  gpus: number;
  gpu_type: string;
  /** A share of one GPU with this much memory ("20G"), for a kernel whose cells take turns
   * with other kernels' on that GPU; empty or absent: whole GPUs. */
  shared_mem?: string;
}

const MEMORY = /^\s*\d+(\.\d+)?\s*[KMGT]?(i?B)?\s*$/i;

export const METADATA_KEY = 'hwsched';
/** The most GPUs one request may ask for: the protocol's MAX_GPUS_PER_REQUEST (a Python test
 * checks that the two agree). */
export const MAX_GPUS = 64;

/** What went wrong between this page and the scheduler, from the server extension's status:
 * 503 (or no answer at all) the scheduler cannot be reached, 502 it refused this Jupyter
 * server's token, anything else an error whose message says what to change. */
export type SchedulerProblem = 'unreachable' | 'refused' | 'error';

export function schedulerProblem(status: number): SchedulerProblem {
  if (status === 0 || status === 503) {
    return 'unreachable';
  }
  return status === 502 ? 'refused' : 'error';
}

/** The headline a person reads for each kind of problem. */
export function problemHeadline(problem: SchedulerProblem): string {
  switch (problem) {
    case 'unreachable':
      return 'Scheduler unreachable';
    case 'refused':
      return "Scheduler refused this server's token";
    default:
      return 'GPU cluster error';
  }
}

/** "4 s", "3 min", "1 h 05 min". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min`;
  }
  const minutes = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h ${String(minutes).padStart(2, '0')} min`;
}

/** "80 GiB", "512 MiB". */
export function formatBytes(bytes: number): string {
  const gib = bytes / 1024 ** 3;
  if (gib >= 1) {
    return `${gib >= 10 ? Math.round(gib) : gib.toFixed(1)} GiB`;
  }
  return `${Math.round(bytes / 1024 ** 2)} MiB`;
}

/** Why a GPU request cannot be sent, or null when it can. */
export function checkGpuRequest(gpus: unknown, gpuType: unknown, sharedMem: unknown = ''): string | null {
  if (typeof gpus !== 'number' || !Number.isInteger(gpus) || gpus < 1 || gpus > MAX_GPUS) {
    return `The GPU count must be a whole number from 1 to ${MAX_GPUS}.`;
  }
  if (typeof gpuType !== 'string' || !/^[A-Za-z0-9_.|-]*$/.test(gpuType)) {
    return 'The GPU type must be a model such as A100, A100-80GB or A100|H100, or empty for any.';
  }
  if (typeof sharedMem !== 'string' || (sharedMem !== '' && !MEMORY.test(sharedMem))) {
    return 'The share of a GPU is its memory, such as 20G or 512M, or empty for whole GPUs.';
  }
  if (sharedMem !== '' && gpus !== 1) {
    return 'A share is of one GPU: ask for 1 GPU, or leave the share empty for whole GPUs.';
  }
  return null;
}

/** The request kept in a notebook's metadata, or null when there is none (or it is broken). */
export function requestFromMetadata(value: unknown): IGpuRequest | null {
  if (!value || typeof value !== 'object') {
    return null;
  }
  const meta = value as { gpus?: unknown; gpu_type?: unknown; shared_mem?: unknown };
  const gpuType = meta.gpu_type === undefined || meta.gpu_type === null ? '' : meta.gpu_type;
  const shared = meta.shared_mem === undefined || meta.shared_mem === null ? '' : meta.shared_mem;
  if (checkGpuRequest(meta.gpus, gpuType, shared) !== null) {
    return null;
  }
  const request: IGpuRequest = { gpus: meta.gpus as number, gpu_type: gpuType as string };
  if (shared) {
    request.shared_mem = (shared as string).trim();
  }
  return request;
}

/** "1 GPU", "2 x A100". */
export function describeRequest(request: IGpuRequest): string {
  if (request.shared_mem) {
    return `${request.shared_mem} of a shared ${request.gpu_type || 'GPU'}`;
  }
  if (request.gpu_type) {
    return `${request.gpus} x ${request.gpu_type}`;
  }
  return request.gpus === 1 ? '1 GPU' : `${request.gpus} GPUs`;
}

/** A run's timings: waited from its request to placement, ran from ready to its end. */
export interface ITimings {
  requested: number;
  placed?: number;
  ready?: number;
  ended?: number;
}

export function timingsFrom(run: Pick<IRun, 'created' | 'events'>): ITimings {
  const at = (phase: string) => run.events.find(e => e.phase === phase)?.time;
  return { requested: run.created, placed: at('placed'), ready: at('ready') };
}

export function waited(t: ITimings, now: number): number {
  return (t.placed ?? t.ended ?? now) - t.requested;
}

export function ran(t: ITimings, now: number): number {
  return t.ready === undefined ? 0 : (t.ended ?? now) - t.ready;
}

function gpuList(ids: number[] | undefined): string {
  if (!ids || ids.length === 0) {
    return 'GPU';
  }
  return ids.length === 1 ? `GPU ${ids[0]}` : `GPUs ${ids.join(', ')}`;
}

/**
 * What a cell's badge says while its run starts, from the run's phase events:
 * "queued, position 2: waiting for ...", "on node-1, GPU 0: opening the share", ...
 */
export function describeStart(events: IPhaseEvent[]): string {
  const last = events[events.length - 1];
  if (!last) {
    return 'asking the scheduler for a GPU';
  }
  const where = `on ${last.node ?? 'a node'}, ${gpuList(last.gpu_ids)}`;
  switch (last.phase) {
    case 'queued':
      return `queued, position ${last.position ?? '?'}` +
        (last.waiting_for ? `: ${last.waiting_for}` : '');
    case 'placed':
      return `${where}: opening the share`;
    case 'sharing':
      return `${where}: starting the kernel`;
    case 'ready':
    case 'reattached':
      return `${where}: ready`;
    default:
      return last.phase;
  }
}

/** The phases of a kernel that is still starting, or '' once it is ready. */
export function describeKernelStart(events: IPhaseEvent[]): string {
  const last = events[events.length - 1];
  if (!last || last.phase === 'ready' || last.phase === 'reattached') {
    return '';
  }
  return describeStart(events);
}

/** Where a run landed: "node-1, GPU 0", from its events. */
export function placement(events: IPhaseEvent[]): string {
  const placed = [...events].reverse().find(e => e.node);
  return placed ? `${placed.node}, ${gpuList(placed.gpu_ids)}` : '';
}

/** The GPUs a session holds, with their model: "1 x A100-80GB". */
export function heldGpus(session: ISession, nodes: INode[]): string {
  const node = nodes.find(n => n.name === session.node);
  const models = session.gpu_ids.map(i => node?.gpus.find(g => g.index === i)?.model ?? 'GPU');
  const counts = new Map<string, number>();
  for (const model of models) {
    counts.set(model, (counts.get(model) ?? 0) + 1);
  }
  return [...counts].map(([model, n]) => `${n} x ${model}`).join(' + ');
}

/**
 * The status bar's text for a notebook: what its sessions hold, or what they wait for.
 * "1 x A100-80GB on node-3, 12 min", "queued, position 2", or "no GPU".
 */
export function statusText(sessions: ISession[], nodes: INode[], now: number): string {
  const holding = sessions.filter(s => s.node && s.gpu_ids.length > 0 && s.state !== 'ended');
  if (holding.length > 0) {
    return holding
      .map(s => `${heldGpus(s, nodes)} on ${s.node}, ${formatDuration(now - (s.placed ?? now))}`)
      .join('; ');
  }
  const queued = sessions.find(s => s.state === 'queued');
  if (queued) {
    return `queued for ${describeRequest({
      gpus: queued.request.gpus,
      gpu_type: queued.request.gpu_type ?? ''
    })}, position ${queued.position ?? '?'}`;
  }
  return 'no GPU';
}

/** One GPU as the sidebar shows it. */
export interface IGpuRow {
  node: string;
  nodeUp: boolean;
  index: number;
  model: string;
  simulated: boolean;
  memory: string; // "12 GiB / 80 GiB" or "80 GiB"
  memoryFraction: number | null;
  utilization: number | null;
  holder: string; // "free", "ann", "you"
  mine: boolean;
  since: string; // "12 min" or ""
  session: string | null;
}

export function gpuRows(pool: IPool): IGpuRow[] {
  const rows: IGpuRow[] = [];
  for (const node of pool.nodes) {
    for (const gpu of node.gpus) {
      const used = gpu.memory_used;
      rows.push({
        node: node.name,
        nodeUp: node.up,
        index: gpu.index,
        model: gpu.model,
        simulated: !!gpu.simulated,
        memory:
          used === null || used === undefined
            ? formatBytes(gpu.memory)
            : `${formatBytes(used)} / ${formatBytes(gpu.memory)}`,
        memoryFraction: used === null || used === undefined ? null : used / gpu.memory,
        utilization: gpu.utilization ?? null,
        holder: gpu.holder === null ? 'free' : gpu.holder === pool.user ? 'you' : gpu.holder,
        mine: gpu.holder !== null && gpu.holder === pool.user,
        since: gpu.since ? formatDuration(pool.time - gpu.since) : '',
        session: gpu.session
      });
    }
  }
  return rows;
}

/** A queued session as the sidebar lists it: "2. ann wants 2 x A100, waiting 3 min". */
export function queueLine(item: ISession, pool: IPool): string {
  const who = item.user === pool.user ? 'you' : item.user;
  const what = describeRequest({
    gpus: item.request.gpus,
    gpu_type: item.request.gpu_type ?? ''
  });
  const since = formatDuration(pool.time - item.created);
  return `${item.position ?? '?'}. ${who} want${who === 'you' ? '' : 's'} ${what}, waiting ${since}`;
}

/** One of the user's sessions, for the sidebar's "Your sessions". */
export function sessionLine(session: ISession, pool: IPool): string {
  const from = session.notebook_path ? ` (${session.notebook_path})` : '';
  if (session.state === 'queued') {
    return `queued, position ${session.position ?? '?'}${from}`;
  }
  const held = heldGpus(session, pool.nodes);
  const since = session.placed ? `, ${formatDuration(pool.time - session.placed)}` : '';
  return `${held} on ${session.node}${since}${from}`;
}

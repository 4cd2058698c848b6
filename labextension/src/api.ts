/**
 * Calls to the server extension (`/hwsched/api/...`), with the server's message kept on errors
 * so that what the user sees says what to change.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  IPhaseEvent,
  IPool,
  IRun,
  ISession,
  SchedulerProblem,
  schedulerProblem
} from './model';

export class HwschedAPIError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }

  /** Unreachable, refused this server's token, or another error. */
  get problem(): SchedulerProblem {
    return schedulerProblem(this.status);
  }
}

export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  query: Record<string, string> = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  let url = URLExt.join(settings.baseUrl, 'hwsched', 'api', endpoint);
  const search = new URLSearchParams(query).toString();
  if (search) {
    url += `?${search}`;
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new HwschedAPIError(`the Jupyter server cannot be reached (${error})`, 0);
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!response.ok) {
    const message = data?.message || `HTTP ${response.status} from ${endpoint}`;
    throw new HwschedAPIError(message, response.status);
  }
  return data as T;
}

export const api = {
  pool: () => requestAPI<IPool>('pool'),
  cancelSession: (id: string) =>
    requestAPI<ISession>(`sessions/${encodeURIComponent(id)}`, { method: 'DELETE' }),
  startRun: (path: string, gpus: number, gpuType: string, sharedMem = '') =>
    requestAPI<IRun>('runs', {
      method: 'POST',
      body: JSON.stringify({
        path,
        gpus,
        gpu_type: gpuType || null,
        gpu_mem: sharedMem || null,
        shared: Boolean(sharedMem)
      })
    }),
  run: (id: string) => requestAPI<IRun>(`runs/${encodeURIComponent(id)}`),
  endRun: (id: string) =>
    requestAPI<IRun>(`runs/${encodeURIComponent(id)}`, { method: 'DELETE' }),
  kernelProgress: (path: string) =>
    requestAPI<{ kernel_id: string | null; events: IPhaseEvent[] }>(
      'kernels/progress',
      {},
      { path }
    )
};

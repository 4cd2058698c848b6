/**
 * "Run on GPU": run cells, in order, in a remote kernel started for the run, then give the GPU
 * back. The server extension starts the kernel in the background (POST /hwsched/api/runs);
 * while it waits in the queue the cells show its phases; once it is ready the cells run in it
 * exactly as in a local kernel (their output areas take the kernel's messages, so streams,
 * images, HTML and errors appear live and land in the notebook, which can be saved with them).
 * The run stops at the first error. Cancel, or the end of the run, shuts the kernel down.
 */
import { CodeCell } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { api, HwschedAPIError } from './api';
import { CellPhase } from './cellphase';
import {
  describeRequest,
  describeStart,
  formatDuration,
  IGpuRequest,
  IRun,
  placement,
  timingsFrom,
  waited
} from './model';

const POLL_MS = 500;

function sleep(ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms));
}

function now(): number {
  return Date.now() / 1000;
}

export class GpuRun {
  private run: IRun | null = null;
  private cancelled = false;
  private released: Promise<void> | null = null;
  private badges: CellPhase[];
  private waitedText = '';

  constructor(
    readonly panel: NotebookPanel,
    private cells: CodeCell[],
    private request: IGpuRequest,
    private kernels: Kernel.IManager
  ) {
    this.badges = cells.map(cell => new CellPhase(cell, () => void this.cancel()));
  }

  get isCancelled(): boolean {
    return this.cancelled;
  }

  /** Run the cells; resolves to true when every cell ran without error. */
  async execute(): Promise<boolean> {
    const asked = `asking the scheduler for ${describeRequest(this.request)}`;
    this.badges.forEach(b => b.set('waiting', asked, true));
    let kernel: Kernel.IKernelConnection | null = null;
    try {
      this.run = await api.startRun(
        this.panel.context.path,
        this.request.gpus,
        this.request.gpu_type,
        this.request.shared_mem ?? ''
      );
      if (this.cancelled) {
        return false; // cancel() came while the request was on its way; release below
      }
      const run = await this.waitForKernel(this.run);
      if (run === null) {
        return false;
      }
      const where = placement(run.events);
      kernel = this.kernels.connectTo({ model: { id: run.kernel_id, name: run.kernel_name } });
      for (let i = 0; i < this.cells.length; i++) {
        if (this.cancelled) {
          return false;
        }
        const ok = await this.runCell(i, kernel, where);
        if (!ok) {
          this.badges
            .slice(i + 1)
            .forEach(b => b.set('skipped', 'not run: an earlier cell failed', false));
          return false;
        }
      }
      return true;
    } catch (error) {
      const message = error instanceof HwschedAPIError ? error.message : String(error);
      if (!this.cancelled) {
        this.badges.forEach(b => b.set('error', `GPU run failed: ${message}`, false));
      }
      return false;
    } finally {
      kernel?.dispose();
      await this.release();
    }
  }

  /** Poll the run until its kernel is ready; null when it failed or was cancelled. */
  private async waitForKernel(run: IRun): Promise<IRun | null> {
    while (run.state === 'starting' && !this.cancelled) {
      const waitedFor = formatDuration(now() - run.created);
      const text = `${describeStart(run.events)} · waited ${waitedFor}`;
      this.badges.forEach(b => b.set('starting', text, true));
      await sleep(POLL_MS);
      run = await api.run(run.id);
    }
    if (this.cancelled) {
      return null;
    }
    if (run.state !== 'ready') {
      const text = `could not start: ${run.error || run.state}`;
      this.badges.forEach(b => b.set('error', text, false));
      return null;
    }
    this.run = run;
    this.waitedText = `waited ${formatDuration(waited(timingsFrom(run), now()))}`;
    this.badges.forEach(b => b.set('starting', `on ${placement(run.events)}: queued in the kernel`, true));
    return run;
  }

  private async runCell(
    i: number,
    kernel: Kernel.IKernelConnection,
    where: string
  ): Promise<boolean> {
    const cell = this.cells[i];
    const badge = this.badges[i];
    const code = cell.model.sharedModel.getSource();
    const started = now();
    const show = (state: 'running' | 'done' | 'error', live: boolean) => {
      if (this.cancelled) {
        return; // cancel() owns the badge from now on
      }
      const ranFor = `ran ${formatDuration(now() - started)}`;
      const verb = state === 'running' ? 'running on' : state === 'done' ? 'ran on' : 'failed on';
      badge.set(state, `${verb} ${where} · ${this.waitedText} · ${ranFor}`, live);
    };
    show('running', true);
    const ticker = setInterval(() => show('running', true), 1000);
    cell.model.executionCount = null;
    cell.setPrompt('*');
    const future = kernel.requestExecute({
      code,
      stop_on_error: true,
      store_history: true,
      silent: false
    });
    cell.outputArea.future = future;
    try {
      const reply = (await future.done) as KernelMessage.IExecuteReplyMsg;
      cell.model.executionCount = reply.content.execution_count ?? null;
      const ok = reply.content.status === 'ok';
      show(ok ? 'done' : 'error', false);
      return ok;
    } catch (error) {
      cell.setPrompt('');
      if (!this.cancelled) {
        badge.set('error', `the GPU kernel went away: ${error}`, false);
      }
      return false;
    } finally {
      clearInterval(ticker);
    }
  }

  /** Stop the work and give the GPU back; the cells say so. */
  async cancel(): Promise<void> {
    if (this.cancelled) {
      return;
    }
    this.cancelled = true;
    this.badges.forEach(b => {
      if (!['done', 'error', 'skipped', 'released'].includes(b.state)) {
        b.set('cancelled', 'cancelling: giving the GPU back…', false);
      }
    });
    await this.release();
    this.badges.forEach(b => {
      if (!['done', 'error', 'skipped', 'released'].includes(b.state)) {
        b.set('cancelled', `cancelled; the GPU was given back${this.waitedSuffix()}`, false);
      }
    });
  }

  private waitedSuffix(): string {
    return this.waitedText ? ` · ${this.waitedText}` : '';
  }

  /** End the run once, whoever asks first (the end of the run, or Cancel). */
  private release(): Promise<void> {
    if (this.run === null) {
      return Promise.resolve(); // nothing was asked for yet; execute() releases later
    }
    if (this.released === null) {
      const id = this.run.id;
      this.released = api.endRun(id).then(
        () => {
          this.badges.forEach(b => {
            if (b.state === 'done') {
              b.set('released', `${b.message} · GPU released`, false);
            } else if (b.state === 'error' && this.waitedText) {
              b.set('error', `${b.message} · GPU released`, false); // it ran, then failed
            }
          });
        },
        error => {
          console.warn(`jupyter-hwsched: ending run ${id} failed`, error);
        }
      );
    }
    return this.released;
  }
}

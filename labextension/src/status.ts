/**
 * The status bar item: what the current notebook holds ("1 x A100-80GB on node-3, 12 min"),
 * what it waits for, or "no GPU"; while a "Remote GPU (shared env)" kernel of the notebook
 * starts, its phases (queued with position, placed, starting) instead of a silent spinner.
 */
import { Notification } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { api, HwschedAPIError } from './api';
import { describeKernelStart, problemHeadline, statusText } from './model';

const POLL_MS = 2000;
const STARTING_POLL_MS = 700;

export class GpuStatusItem extends Widget {
  private timer: number | null = null;
  private disposedFlag = false;
  private toast: string | null = null; // the notification of a kernel that is starting
  private toastPath = '';

  constructor(private tracker: INotebookTracker) {
    super();
    this.addClass('jp-hwsched-StatusItem');
    this.node.title = 'GPUs held by this notebook (jupyter-hwsched)';
    this.node.textContent = 'no GPU';
    tracker.currentChanged.connect(() => void this.refresh());
    void this.tick();
  }

  dispose(): void {
    this.disposedFlag = true;
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
    }
    super.dispose();
  }

  private async tick(): Promise<void> {
    let starting = false;
    try {
      starting = await this.refresh();
    } finally {
      if (!this.disposedFlag) {
        this.timer = window.setTimeout(() => void this.tick(), starting ? STARTING_POLL_MS : POLL_MS);
      }
    }
  }

  /** Update the text; true while the notebook's remote kernel is starting. */
  async refresh(): Promise<boolean> {
    const panel = this.tracker.currentWidget;
    if (!panel) {
      this.display('no GPU', 'none');
      return false;
    }
    const path = panel.context.path;
    try {
      // a "Remote GPU (shared env)" kernel of this notebook that is starting, if any
      const progress = await api.kernelProgress(path);
      const phases = describeKernelStart(progress.events);
      if (phases) {
        this.display(`GPU starting: ${phases}`, 'starting');
        this.notify(path, `${path}: GPU kernel ${phases}`);
        return true;
      }
      const pool = await api.pool(); // "mine" holds this user's sessions, with their notebooks
      const sessions = pool.mine.filter(session => session.notebook_path === path);
      const text = statusText(sessions, pool.nodes, pool.time);
      const simulated = text !== 'no GPU' && pool.simulated ? ' (simulated)' : '';
      this.display(text + simulated, text === 'no GPU' ? 'none' : 'held');
      this.notify(path, null, `${path}: GPU kernel ready, ${text}${simulated}`);
    } catch (error) {
      const problem = error instanceof HwschedAPIError ? error.problem : 'unreachable';
      this.display(problem === 'refused' ? problemHeadline(problem) : 'GPU scheduler unreachable', problem);
      this.node.title = String((error as Error).message ?? error);
    }
    return false;
  }

  /** A notification while a kernel waits for its GPU (more visible than the status bar),
   * updated at each phase and closed, saying where it landed, once it is ready. */
  private notify(path: string, starting: string | null, done = ''): void {
    if (starting !== null) {
      if (this.toast === null) {
        this.toast = Notification.emit(starting, 'in-progress', { autoClose: false });
        this.toastPath = path;
      } else {
        Notification.update({ id: this.toast, message: starting });
      }
    } else if (this.toast !== null && this.toastPath === path) {
      Notification.update({ id: this.toast, message: done, type: 'success', autoClose: 4000 });
      this.toast = null;
    }
  }

  private display(text: string, state: string): void {
    this.node.textContent = text;
    this.node.dataset.state = state;
  }
}

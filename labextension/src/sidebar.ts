/**
 * The "GPU cluster" sidebar: every node and GPU (model, memory in use, live utilization,
 * simulated GPUs marked, who holds it and since when), the queue with positions, and the
 * user's own sessions with Cancel. It polls the server extension every 1.5 s while it is
 * visible, and says plainly when the scheduler cannot be reached.
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import { Message } from '@lumino/messaging';

import { api, HwschedAPIError } from './api';
import { gpuRows, IGpuRow, IPool, problemHeadline, queueLine, sessionLine } from './model';

const POLL_MS = 1500;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function bar(fraction: number | null, text: string, className: string): HTMLElement {
  const outer = el('div', `jp-hwsched-Bar ${className}`);
  const inner = el('div', 'jp-hwsched-Bar-fill');
  inner.style.width = `${Math.round(100 * Math.min(1, Math.max(0, fraction ?? 0)))}%`;
  outer.append(inner, el('span', 'jp-hwsched-Bar-text', text));
  return outer;
}

export class ClusterSidebar extends Widget {
  private timer: number | null = null;
  private body: HTMLElement;
  private status: HTMLElement;
  lastPool: IPool | null = null;

  constructor() {
    super();
    this.id = 'jp-hwsched-cluster';
    this.addClass('jp-hwsched-Sidebar');
    this.title.caption = 'GPU cluster';
    const header = el('header', 'jp-hwsched-Sidebar-header');
    header.append(el('h2', '', 'GPU cluster'));
    this.status = el('div', 'jp-hwsched-Sidebar-status');
    this.body = el('div', 'jp-hwsched-Sidebar-body');
    this.node.append(header, this.status, this.body);
  }

  protected onAfterShow(msg: Message): void {
    void this.poll();
  }

  protected onAfterHide(msg: Message): void {
    this.stop();
  }

  dispose(): void {
    this.stop();
    super.dispose();
  }

  private stop(): void {
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
      this.timer = null;
    }
  }

  private async poll(): Promise<void> {
    this.stop();
    await this.refresh();
    if (this.isVisible && !this.isDisposed) {
      this.timer = window.setTimeout(() => void this.poll(), POLL_MS);
    }
  }

  async refresh(): Promise<void> {
    try {
      const pool = await api.pool();
      this.lastPool = pool;
      this.render(pool);
    } catch (error) {
      const message = error instanceof HwschedAPIError ? error.message : String(error);
      const problem = error instanceof HwschedAPIError ? error.problem : 'unreachable';
      this.node.dataset.state = problem;
      this.status.replaceChildren(
        el('strong', '', problemHeadline(problem)),
        el('div', 'jp-hwsched-Sidebar-message', message),
        el('div', 'jp-hwsched-Sidebar-retry', `Retrying every ${POLL_MS / 1000} s…`)
      );
      this.body.classList.add('jp-mod-stale');
    }
  }

  private render(pool: IPool): void {
    this.node.dataset.state = 'ok';
    this.body.classList.remove('jp-mod-stale');
    const rows = gpuRows(pool);
    const free = rows.filter(r => r.holder === 'free').length;
    const summary = el('div', '', `${free} of ${rows.length} GPUs free · you are ${pool.user}`);
    this.status.replaceChildren(summary);
    if (pool.simulated) {
      this.status.append(
        el(
          'div',
          'jp-hwsched-Simulated',
          'Simulated GPUs: no real GPU on these nodes; use is the CPU and memory of the work.'
        )
      );
    }
    const sections: HTMLElement[] = [];
    for (const node of pool.nodes) {
      sections.push(this.nodeSection(node.name, node.up, rows.filter(r => r.node === node.name)));
    }
    if (pool.nodes.length === 0) {
      sections.push(el('p', 'jp-hwsched-Empty', 'No GPU node is registered.'));
    }
    sections.push(this.queueSection(pool), this.mineSection(pool));
    this.body.replaceChildren(...sections);
  }

  private nodeSection(name: string, up: boolean, rows: IGpuRow[]): HTMLElement {
    const section = el('section', 'jp-hwsched-Node');
    section.dataset.node = name;
    section.append(el('h3', '', up ? name : `${name} (down)`));
    for (const row of rows) {
      const gpu = el('div', 'jp-hwsched-Gpu');
      gpu.dataset.gpu = String(row.index);
      gpu.dataset.holder = row.holder;
      const head = el('div', 'jp-hwsched-Gpu-head');
      head.append(el('strong', '', `GPU ${row.index}`), el('span', 'jp-hwsched-Model', row.model));
      if (row.simulated) {
        head.append(el('span', 'jp-hwsched-SimTag', 'simulated'));
      }
      head.append(
        el(
          'span',
          `jp-hwsched-Holder${row.mine ? ' jp-mod-mine' : ''}`,
          row.holder === 'free' ? 'free' : `${row.holder}${row.since ? `, ${row.since}` : ''}`
        )
      );
      const bars = el('div', 'jp-hwsched-Gpu-bars');
      const util = row.utilization;
      bars.append(
        bar(util === null ? null : util / 100, `util ${util === null ? '–' : `${Math.round(util)}%`}`, 'jp-hwsched-Util'),
        bar(row.memoryFraction, `mem ${row.memory}`, 'jp-hwsched-Mem')
      );
      gpu.append(head, bars);
      section.append(gpu);
    }
    return section;
  }

  private queueSection(pool: IPool): HTMLElement {
    const section = el('section', 'jp-hwsched-Queue');
    section.append(el('h3', '', `Queue (${pool.queue.length})`));
    if (pool.queue.length === 0) {
      section.append(el('p', 'jp-hwsched-Empty', 'Nobody is waiting.'));
    }
    const list = el('ul');
    for (const item of pool.queue) {
      const li = el('li', '', queueLine(item, pool));
      li.title = item.waiting_for ?? '';
      list.append(li);
    }
    section.append(list);
    return section;
  }

  private mineSection(pool: IPool): HTMLElement {
    const section = el('section', 'jp-hwsched-Mine');
    section.append(el('h3', '', 'Your sessions'));
    if (pool.mine.length === 0) {
      section.append(el('p', 'jp-hwsched-Empty', 'You hold no GPU.'));
    }
    for (const session of pool.mine) {
      const row = el('div', 'jp-hwsched-MySession');
      row.dataset.session = session.id;
      const cancel = el('button', 'jp-mod-styled jp-mod-warn jp-hwsched-CancelSession', 'Cancel');
      cancel.title = 'End this session and give its GPUs back';
      cancel.onclick = async () => {
        cancel.disabled = true;
        try {
          await api.cancelSession(session.id);
        } catch (error) {
          await showErrorMessage('Cancel GPU session', (error as Error).message);
        }
        await this.refresh();
      };
      row.append(el('span', '', sessionLine(session, pool)), cancel);
      section.append(row);
    }
    return section;
  }
}

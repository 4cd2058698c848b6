/**
 * The phase line under a cell that runs on a GPU: "queued, position 2: ...", "running on
 * node-1, GPU 0 · waited 3 s", "released · waited 3 s · ran 5 s", with a Cancel button while
 * the work is live. Plain DOM inserted between the cell's input and its outputs; it is not
 * part of the notebook, so saving leaves it out.
 */
import { Cell } from '@jupyterlab/cells';

export type PhaseState =
  | 'waiting'
  | 'starting'
  | 'running'
  | 'done'
  | 'error'
  | 'cancelled'
  | 'skipped'
  | 'released';

const CLASS = 'jp-hwsched-CellPhase';

export class CellPhase {
  readonly node: HTMLElement;
  private text: HTMLElement;
  private cancelButton: HTMLButtonElement;

  constructor(cell: Cell, onCancel: () => void) {
    cell.node.querySelectorAll(`.${CLASS}`).forEach(old => old.remove());
    this.node = document.createElement('div');
    this.node.className = CLASS;
    const label = document.createElement('span');
    label.className = `${CLASS}-label`;
    label.textContent = 'GPU';
    this.text = document.createElement('span');
    this.text.className = `${CLASS}-text`;
    this.cancelButton = document.createElement('button');
    this.cancelButton.className = `${CLASS}-cancel jp-mod-styled jp-mod-warn`;
    this.cancelButton.textContent = 'Cancel';
    this.cancelButton.title = 'Stop this GPU run and give the GPU back to the pool';
    this.cancelButton.onclick = event => {
      event.stopPropagation();
      this.cancelButton.disabled = true;
      onCancel();
    };
    this.node.append(label, this.text, this.cancelButton);
    const outputs = cell.node.querySelector('.jp-Cell-outputWrapper');
    cell.node.insertBefore(this.node, outputs);
  }

  set(state: PhaseState, text: string, cancellable: boolean): void {
    this.node.dataset.phase = state;
    this.text.textContent = text;
    this.cancelButton.hidden = !cancellable;
  }

  get message(): string {
    return this.text.textContent ?? '';
  }

  get state(): string {
    return this.node.dataset.phase ?? '';
  }
}

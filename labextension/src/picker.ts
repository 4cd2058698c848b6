/**
 * The small GPU picker: how many GPUs, and optionally which model, for "Run on GPU". The
 * choice is kept in the notebook's metadata ("hwsched": {"gpus": 1, "gpu_type": ""}), so it
 * travels with the notebook and the next run asks again only when the user wants to change it.
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { api } from './api';
import {
  checkGpuRequest,
  describeRequest,
  IGpuRequest,
  MAX_GPUS,
  METADATA_KEY,
  requestFromMetadata
} from './model';

class PickerBody extends Widget implements Dialog.IBodyWidget<IGpuRequest> {
  private count: HTMLInputElement;
  private type: HTMLInputElement;
  private shared: HTMLInputElement;

  constructor(current: IGpuRequest, models: string[]) {
    super();
    this.addClass('jp-hwsched-Picker');
    this.count = document.createElement('input');
    this.count.type = 'number';
    this.count.min = '1';
    this.count.max = String(MAX_GPUS);
    this.count.value = String(current.gpus);
    this.count.name = 'gpus';
    this.type = document.createElement('input');
    this.type.name = 'gpu_type';
    this.type.placeholder = 'any model';
    this.type.value = current.gpu_type;
    this.type.setAttribute('list', 'jp-hwsched-models');
    const list = document.createElement('datalist');
    list.id = 'jp-hwsched-models';
    for (const model of models) {
      const option = document.createElement('option');
      option.value = model;
      list.appendChild(option);
    }
    this.shared = document.createElement('input');
    this.shared.name = 'shared_mem';
    this.shared.placeholder = 'whole GPUs';
    this.shared.value = current.shared_mem ?? '';
    this.shared.title =
      'A share of one GPU with this much memory (e.g. 20G): the kernel keeps its state and ' +
      'memory there, and its cells take turns with other kernels on that GPU';
    const row = (text: string, input: HTMLElement) => {
      const label = document.createElement('label');
      label.textContent = text;
      label.appendChild(input);
      return label;
    };
    const note = document.createElement('p');
    note.className = 'jp-hwsched-Picker-note';
    note.textContent = 'Kept in this notebook; change it with "Choose GPUs for This Notebook".';
    this.node.append(
      row('GPUs', this.count),
      row('GPU type', this.type),
      row('Share of one GPU (memory)', this.shared),
      list,
      note
    );
  }

  getValue(): IGpuRequest {
    const value: IGpuRequest = { gpus: Number(this.count.value), gpu_type: this.type.value.trim() };
    if (this.shared.value.trim()) {
      value.shared_mem = this.shared.value.trim();
    }
    return value;
  }
}

function modelsOf(pool: Awaited<ReturnType<typeof api.pool>>): string[] {
  return [...new Set(pool.nodes.flatMap(n => n.gpus.map(g => g.model)))].sort();
}

/** Ask for a GPU request and keep it in the notebook; null when the user cancels. */
export async function pickGpus(panel: NotebookPanel, runLabel = 'Run'): Promise<IGpuRequest | null> {
  const current = currentRequest(panel) ?? { gpus: 1, gpu_type: '' };
  const models = await api.pool().then(modelsOf, () => [] as string[]);
  const result = await showDialog({
    title: 'GPUs for this notebook',
    body: new PickerBody(current, models),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: runLabel })]
  });
  if (!result.button.accept || result.value === null) {
    return null;
  }
  const problem = checkGpuRequest(
    result.value.gpus,
    result.value.gpu_type,
    result.value.shared_mem ?? ''
  );
  if (problem) {
    await showErrorMessage('GPU request', problem);
    return null;
  }
  panel.model?.setMetadata(METADATA_KEY, { ...result.value });
  return result.value;
}

export function currentRequest(panel: NotebookPanel): IGpuRequest | null {
  return requestFromMetadata(panel.model?.getMetadata(METADATA_KEY));
}

/** The request kept in the notebook, or the picker when there is none yet. */
export async function requestFor(panel: NotebookPanel): Promise<IGpuRequest | null> {
  return currentRequest(panel) ?? (await pickGpus(panel));
}

/** The toolbar's "1 GPU" / "2 x A100" label. */
export function pickerLabel(panel: NotebookPanel): string {
  const request = currentRequest(panel);
  return request ? describeRequest(request) : 'GPU: choose';
}

/** The notebook toolbar's picker: shows what "Run on GPU" asks for; a click changes it. */
export class GpuPickerButton extends Widget {
  private label: HTMLElement;

  constructor(private panel: NotebookPanel) {
    super({ node: document.createElement('button') });
    this.addClass('jp-ToolbarButtonComponent');
    this.addClass('jp-mod-minimal');
    this.addClass('jp-Button');
    this.addClass('jp-hwsched-PickerButton');
    this.node.title = 'GPUs that "Run on GPU" asks for in this notebook (click to change)';
    this.label = document.createElement('span');
    this.label.className = 'jp-ToolbarButtonComponent-label';
    this.node.appendChild(this.label);
    this.node.addEventListener('click', () => void pickGpus(this.panel, 'Keep'));
    this.refresh();
    void panel.context.ready.then(() => {
      this.refresh();
      panel.model?.metadataChanged.connect(this.refresh, this);
    });
  }

  refresh(): void {
    this.label.textContent = pickerLabel(this.panel);
  }
}

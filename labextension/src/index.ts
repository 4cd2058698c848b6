/**
 * jupyter-hwsched's JupyterLab plugins: the "Run on GPU" commands (toolbar, cell context menu,
 * command palette, shortcut; declared in schema/plugin.json), the GPU picker in the notebook
 * toolbar, the "GPU cluster" sidebar and the status bar item.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  IToolbarWidgetRegistry,
  Notification
} from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { gpuIcon } from './icon';
import { GpuPickerButton, pickGpus, requestFor } from './picker';
import { GpuRun } from './runner';
import { ClusterSidebar } from './sidebar';
import { GpuStatusItem } from './status';

const PLUGIN_ID = 'jupyter-hwsched:plugin';

export namespace CommandIDs {
  export const runCells = 'hwsched:run-cells-on-gpu';
  export const runNotebook = 'hwsched:run-notebook-on-gpu';
  export const chooseGpus = 'hwsched:choose-gpus';
  export const cancelRun = 'hwsched:cancel-gpu-run';
  export const showCluster = 'hwsched:show-cluster';
}

/** The GPU run of each notebook in progress (one at a time per notebook). */
const activeRuns = new Map<NotebookPanel, GpuRun>();

function codeCells(panel: NotebookPanel, all: boolean): CodeCell[] {
  const notebook = panel.content;
  return notebook.widgets.filter(
    (cell): cell is CodeCell =>
      cell.model.type === 'code' &&
      (all || notebook.isSelectedOrActive(cell)) &&
      cell.model.sharedModel.getSource().trim() !== ''
  );
}

async function runOnGpu(app: JupyterFrontEnd, panel: NotebookPanel, all: boolean): Promise<void> {
  if (activeRuns.has(panel)) {
    Notification.warning('A GPU run is already in progress in this notebook: cancel it first.', {
      autoClose: 5000
    });
    return;
  }
  const cells = codeCells(panel, all);
  if (cells.length === 0) {
    Notification.info('Nothing to run on a GPU: the selected cells hold no code.', {
      autoClose: 4000
    });
    return;
  }
  const request = await requestFor(panel);
  if (request === null) {
    return;
  }
  const run = new GpuRun(panel, cells, request, app.serviceManager.kernels);
  activeRuns.set(panel, run);
  try {
    await run.execute();
  } finally {
    activeRuns.delete(panel);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Run cells and notebooks on pooled GPUs; see the GPU cluster.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILabShell, IStatusBar, IToolbarWidgetRegistry, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    labShell: ILabShell | null,
    statusBar: IStatusBar | null,
    toolbarRegistry: IToolbarWidgetRegistry | null,
    settings: ISettingRegistry | null
  ) => {
    const { commands, shell } = app;
    const current = (): NotebookPanel | null => tracker.currentWidget;
    const hasNotebook = () => current() !== null;
    /** A command's execute: act on the current notebook, if there is one. */
    const onCurrent = (act: (panel: NotebookPanel) => Promise<unknown>) => async () => {
      const panel = current();
      if (panel) {
        await act(panel);
      }
    };

    commands.addCommand(CommandIDs.runCells, {
      label: args => (args.toolbar ? 'Run on GPU' : 'Run Selected Cells on GPU'),
      caption: 'Run the selected cells on a GPU from the pool, then give the GPU back',
      icon: args => (args.toolbar ? gpuIcon : undefined),
      isEnabled: hasNotebook,
      execute: onCurrent(panel => runOnGpu(app, panel, false))
    });
    commands.addCommand(CommandIDs.runNotebook, {
      label: 'Run Whole Notebook on GPU',
      caption: 'Run every cell in order in one GPU kernel, stopping at the first error',
      isEnabled: hasNotebook,
      execute: onCurrent(panel => runOnGpu(app, panel, true))
    });
    commands.addCommand(CommandIDs.chooseGpus, {
      label: 'Choose GPUs for This Notebook…',
      isEnabled: hasNotebook,
      execute: onCurrent(panel => pickGpus(panel, 'Keep'))
    });
    commands.addCommand(CommandIDs.cancelRun, {
      label: 'Cancel GPU Run',
      isEnabled: () => {
        const panel = current();
        return panel !== null && activeRuns.has(panel);
      },
      execute: onCurrent(async panel => activeRuns.get(panel)?.cancel())
    });

    if (toolbarRegistry) {
      toolbarRegistry.addFactory<NotebookPanel>(
        'Notebook',
        'hwsched-gpus',
        panel => new GpuPickerButton(panel)
      );
    }

    const sidebar = new ClusterSidebar();
    sidebar.title.icon = gpuIcon;
    shell.add(sidebar, 'left', { rank: 600, type: 'GPU cluster' });
    commands.addCommand(CommandIDs.showCluster, {
      label: 'Show GPU Cluster',
      execute: () => {
        if (labShell) {
          labShell.activateById(sidebar.id);
        } else {
          shell.activateById(sidebar.id);
        }
      }
    });

    if (statusBar) {
      const item = new GpuStatusItem(tracker);
      statusBar.registerStatusItem('jupyter-hwsched:status', {
        item,
        align: 'left',
        rank: 4,
        isActive: () => tracker.currentWidget !== null && shell.currentWidget === tracker.currentWidget
      });
    }

    if (palette) {
      for (const command of [
        CommandIDs.runCells,
        CommandIDs.runNotebook,
        CommandIDs.chooseGpus,
        CommandIDs.cancelRun,
        CommandIDs.showCluster
      ]) {
        palette.addItem({ command, category: 'GPU' });
      }
    }

    // load our settings so that the toolbar, menu and shortcut declarations are applied
    settings?.load(PLUGIN_ID).catch(reason => {
      console.warn('jupyter-hwsched: could not load its settings', reason);
    });
  }
};

export default plugin;

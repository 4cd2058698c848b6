/** The extension's pure logic: what a person reads about phases, GPUs, requests and the pool. */
import {
  checkGpuRequest,
  describeKernelStart,
  describeRequest,
  describeStart,
  formatBytes,
  formatDuration,
  gpuRows,
  heldGpus,
  IPool,
  ISession,
  placement,
  problemHeadline,
  queueLine,
  ran,
  requestFromMetadata,
  schedulerProblem,
  sessionLine,
  statusText,
  timingsFrom,
  waited
} from '../src/model';

const GiB = 1024 ** 3;

function session(over: Partial<ISession>): ISession {
  return {
    id: 's1',
    user: 'ann',
    state: 'running',
    node: 'node-3',
    gpu_ids: [0],
    request: { gpus: 1, gpu_type: null },
    created: 1000,
    placed: 1000,
    ...over
  };
}

function pool(): IPool {
  return {
    user: 'ann',
    time: 2000,
    simulated: true,
    nodes: [
      {
        name: 'node-3',
        up: true,
        gpus: [
          {
            index: 0,
            model: 'A100-80GB',
            memory: 80 * GiB,
            simulated: true,
            holder: 'ann',
            session: 's1',
            since: 1280,
            utilization: 42.4,
            memory_used: 20 * GiB
          },
          {
            index: 1,
            model: 'A100-80GB',
            memory: 80 * GiB,
            simulated: true,
            holder: null,
            session: null,
            since: null,
            utilization: null,
            memory_used: null
          },
          {
            index: 2,
            model: 'T4-16GB',
            memory: 16 * GiB,
            holder: 'bob',
            session: 's2',
            since: 1940,
            utilization: 0,
            memory_used: 512 * 1024 ** 2
          }
        ]
      }
    ],
    queue: [
      session({
        id: 'q1',
        user: 'bob',
        state: 'queued',
        node: null,
        gpu_ids: [],
        placed: null,
        position: 1,
        created: 1700,
        request: { gpus: 2, gpu_type: 'A100' }
      }),
      session({ id: 'q2', state: 'queued', node: null, gpu_ids: [], placed: null, position: 2 })
    ],
    mine: []
  };
}

describe('formatDuration', () => {
  it.each([
    [0, '0 s'],
    [59.9, '59 s'],
    [60, '1 min'],
    [12 * 60 + 5, '12 min'],
    [3600 + 5 * 60, '1 h 05 min'],
    [-3, '0 s']
  ])('%p s reads %p', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });
});

describe('formatBytes', () => {
  it('uses GiB, with a decimal below 10', () => {
    expect(formatBytes(80 * GiB)).toBe('80 GiB');
    expect(formatBytes(1.5 * GiB)).toBe('1.5 GiB');
    expect(formatBytes(512 * 1024 ** 2)).toBe('512 MiB');
  });
});

describe('GPU requests', () => {
  it('accepts a count from 1 to 64 and a model pattern', () => {
    expect(checkGpuRequest(1, '')).toBeNull();
    expect(checkGpuRequest(8, 'A100|H100')).toBeNull();
    expect(checkGpuRequest(2, 'A100-80GB')).toBeNull();
  });

  it('says what to change otherwise', () => {
    expect(checkGpuRequest(0, '')).toMatch(/from 1 to 64/);
    expect(checkGpuRequest(1.5, '')).toMatch(/whole number/);
    expect(checkGpuRequest(65, '')).toMatch(/from 1 to 64/);
    expect(checkGpuRequest('2', '')).toMatch(/whole number/);
    expect(checkGpuRequest(1, 'A100; rm -rf')).toMatch(/GPU type/);
  });

  it('reads what the notebook metadata keeps, and ignores what is broken', () => {
    expect(requestFromMetadata({ gpus: 2, gpu_type: 'A100' })).toEqual({
      gpus: 2,
      gpu_type: 'A100'
    });
    expect(requestFromMetadata({ gpus: 1 })).toEqual({ gpus: 1, gpu_type: '' });
    expect(requestFromMetadata({ gpus: 1, gpu_type: null })).toEqual({ gpus: 1, gpu_type: '' });
    expect(requestFromMetadata({ gpus: 0 })).toBeNull();
    expect(requestFromMetadata('1')).toBeNull();
    expect(requestFromMetadata(undefined)).toBeNull();
  });

  it('takes a share of one GPU by its memory', () => {
    expect(checkGpuRequest(1, '', '20G')).toBeNull();
    expect(checkGpuRequest(1, 'A100', '512M')).toBeNull();
    expect(checkGpuRequest(2, '', '20G')).toMatch(/A share is of one GPU/);
    expect(checkGpuRequest(1, '', 'lots')).toMatch(/such as 20G/);
    expect(requestFromMetadata({ gpus: 1, gpu_type: '', shared_mem: '20G' })).toEqual({
      gpus: 1,
      gpu_type: '',
      shared_mem: '20G'
    });
    expect(requestFromMetadata({ gpus: 2, shared_mem: '20G' })).toBeNull();
    expect(describeRequest({ gpus: 1, gpu_type: '', shared_mem: '20G' })).toBe(
      '20G of a shared GPU'
    );
  });

  it('describes a request', () => {
    expect(describeRequest({ gpus: 1, gpu_type: '' })).toBe('1 GPU');
    expect(describeRequest({ gpus: 4, gpu_type: '' })).toBe('4 GPUs');
    expect(describeRequest({ gpus: 2, gpu_type: 'A100' })).toBe('2 x A100');
  });
});

describe('start phases', () => {
  it('reads each phase', () => {
    expect(describeStart([])).toBe('asking the scheduler for a GPU');
    const queued = { phase: 'queued', time: 1, position: 2, waiting_for: 'both GPUs are busy' };
    expect(describeStart([queued])).toBe('queued, position 2: both GPUs are busy');
    const placed = { phase: 'placed', time: 5, node: 'node-1', gpu_ids: [0, 1] };
    expect(describeStart([queued, placed])).toBe('on node-1, GPUs 0, 1: opening the share');
    const sharing = { ...placed, phase: 'sharing', gpu_ids: [1] };
    expect(describeStart([queued, placed, sharing])).toBe('on node-1, GPU 1: starting the kernel');
    expect(placement([queued, placed, sharing])).toBe('node-1, GPU 1');
  });

  it('shows a starting kernel\'s phases until it is ready', () => {
    const queued = { phase: 'queued', time: 1, position: 1 };
    expect(describeKernelStart([])).toBe('');
    expect(describeKernelStart([queued])).toBe('queued, position 1');
    expect(describeKernelStart([queued, { phase: 'ready', time: 2 }])).toBe('');
  });

  it('measures the wait from the request to placement, and the run from ready', () => {
    const run = {
      created: 100,
      events: [
        { phase: 'queued', time: 100.2, position: 1 },
        { phase: 'placed', time: 130, node: 'n', gpu_ids: [0] },
        { phase: 'ready', time: 131, node: 'n', gpu_ids: [0] }
      ]
    };
    const t = timingsFrom(run);
    expect(waited(t, 500)).toBe(30);
    expect(ran(t, 141)).toBe(10);
    const stillQueued = timingsFrom({ created: 100, events: [run.events[0]] });
    expect(waited(stillQueued, 160)).toBe(60);
    expect(ran(stillQueued, 160)).toBe(0);
  });
});

describe('the status item', () => {
  it('says "no GPU" when the notebook holds nothing', () => {
    expect(statusText([], pool().nodes, 2000)).toBe('no GPU');
  });

  it('says what is held, where, and for how long', () => {
    const s = session({ placed: 2000 - 12 * 60 });
    expect(statusText([s], pool().nodes, 2000)).toBe('1 x A100-80GB on node-3, 12 min');
  });

  it('counts GPUs by model', () => {
    const s = session({ gpu_ids: [0, 1, 2] });
    expect(heldGpus(s, pool().nodes)).toBe('2 x A100-80GB + 1 x T4-16GB');
  });

  it('says where a queued request stands', () => {
    const s = session({ state: 'queued', node: null, gpu_ids: [], position: 3 });
    expect(statusText([s], pool().nodes, 2000)).toBe('queued for 1 GPU, position 3');
  });
});

describe('the sidebar', () => {
  it('shows every GPU with its use, holder and since when', () => {
    const rows = gpuRows(pool());
    expect(rows.map(r => r.holder)).toEqual(['you', 'free', 'bob']);
    expect(rows[0]).toMatchObject({
      node: 'node-3',
      model: 'A100-80GB',
      simulated: true,
      memory: '20 GiB / 80 GiB',
      memoryFraction: 0.25,
      utilization: 42.4,
      mine: true,
      since: '12 min'
    });
    expect(rows[1]).toMatchObject({ memory: '80 GiB', memoryFraction: null, since: '', mine: false });
    expect(rows[2]).toMatchObject({ simulated: false, memory: '512 MiB / 16 GiB', since: '1 min' });
  });

  it('lists the queue with positions, naming the user "you"', () => {
    const p = pool();
    expect(queueLine(p.queue[0], p)).toBe('1. bob wants 2 x A100, waiting 5 min');
    expect(queueLine(p.queue[1], p)).toBe('2. you want 1 GPU, waiting 16 min');
  });

  it('describes the user\'s own sessions', () => {
    const p = pool();
    const held = session({ placed: 1940, notebook_path: 'work/train.ipynb' });
    expect(sessionLine(held, p)).toBe('1 x A100-80GB on node-3, 1 min (work/train.ipynb)');
    const queued = session({ state: 'queued', node: null, gpu_ids: [], position: 2 });
    expect(sessionLine(queued, p)).toBe('queued, position 2');
  });
});

describe('schedulerProblem', () => {
  it('tells an unreachable scheduler from one that refused the token', () => {
    expect(schedulerProblem(0)).toBe('unreachable');
    expect(schedulerProblem(503)).toBe('unreachable');
    expect(schedulerProblem(502)).toBe('refused');
    expect(schedulerProblem(400)).toBe('error');
    expect(problemHeadline('refused')).toBe("Scheduler refused this server's token");
    expect(problemHeadline('unreachable')).toBe('Scheduler unreachable');
    expect(problemHeadline('error')).toBe('GPU cluster error');
  });
});

"""JupyterLab's GPU features in a real browser: Debian's chromium driven by Playwright, a real
JupyterLab server with the extension as installed, and the real pool (scheduler, node agent,
share agent, Docker, sshfs) behind it.

Each step leaves a screenshot under ``test-output/browser/`` (or ``$HWSCHED_TEST_OUTPUT``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Pool, Service, call_json, free_port, wait_for
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# chromium's own calls out (updates, sync, metrics) are refused on these machines: keep it quiet
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ONE_GPU = {"hwsched": {"gpus": 1, "gpu_type": ""}}  # a notebook's kept GPU request
LONG_CELL = """\
import time
for i in range(100000):
    print("tick", i, flush=True)
    time.sleep(0.5)"""
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook in view
SHOTS = Path(os.environ.get("HWSCHED_TEST_OUTPUT", "test-output")) / "browser"

PRINT_AND_PLOT = """\
import os, socket
print("hello from", socket.gethostname(), "GPU", os.environ["CUDA_VISIBLE_DEVICES"])
%matplotlib inline
import matplotlib.pyplot as plt
plt.plot([1, 4, 2, 8])
plt.title("plotted on the GPU node")
plt.show()"""


@pytest.fixture
def jp_asyncio_loop() -> None:
    """pytest-jupyter's loop (for its jp_fetch tests) stays out: Playwright runs its own."""


@pytest.fixture
def jp_server_cleanup() -> None:
    """No in-process Jupyter server here: the server under test is its own process."""


class Lab:
    """A JupyterLab server process over a workspace, talking to a pool."""

    def __init__(self, root: Path, log: Path, env: dict[str, str]) -> None:
        self.root = root
        self.token = secrets.token_hex(12)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = Service(
            "jupyterlab",
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={self.token}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            {
                **env,
                "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
                "JUPYTERLAB_SETTINGS_DIR": str(self.settings(root / ".settings")),
            },
            log,
        )
        wait_for(self.answers, 120, "JupyterLab to answer")

    @staticmethod
    def settings(folder: Path) -> Path:
        """User settings: no "get notified about Jupyter news?" toast over the screenshots."""
        notification = folder / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        return folder

    def answers(self) -> bool:
        try:
            self.api("GET", "/api/status")
        except OSError:
            assert self.service.proc.poll() is None, self.service.log.read_text()[-3000:]
            return False
        return True

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return call_json(self.url, method, path, self.token, body)

    def notebook(self, name: str, cells: list[str], metadata: dict[str, Any] | None = None) -> str:
        nb = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": f"cell-{i}",
                    "metadata": {},
                    "outputs": [],
                    "source": source,
                }
                for i, source in enumerate(cells)
            ],
            "metadata": {
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                **(metadata or {}),
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (self.root / name).write_text(json.dumps(nb))
        return name

    def saved(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.root / name).read_text()))

    def stop(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        self.service.stop()
        log = self.service.log.read_text()
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    path = Path("/var/lib/hwsched-test") / f"lab-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(pool: Pool, workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = Lab(workspace, tmp_path_factory.mktemp("lab") / "lab.log", pool.env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run 'bash scripts/setup.sh' (Debian's chromium)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(120_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield page
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            shot(page, f"failed-{request.node.name}.png")
    finally:
        context.close()
    assert not errors, errors  # no uncaught exception in the page


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / name))


def goto(page: Any, lab: Lab, name: str = "") -> None:
    """Open JupyterLab (on a notebook), in a layout of its own: no tabs of earlier tests."""
    where = f"tree/{name}" if name else ""
    page.goto(f"{lab.url}/lab/{where}?reset&token={lab.token}")


def open_notebook(page: Any, lab: Lab, name: str) -> None:
    goto(page, lab, name)
    page.wait_for_selector(".jp-NotebookPanel-toolbar [data-command='hwsched:run-cells-on-gpu']")
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell")
    # the local kernel of the notebook is idle: the page has settled
    wait_kernel_idle(page)


def open_palette(page: Any) -> None:
    """The command palette by its shortcut, pressed again while the palette stays hidden: a
    press that comes before the page has taken the focus opens nothing (CI saw it so)."""
    palette = page.locator(".lm-CommandPalette-input")
    for _ in range(10):
        page.keyboard.press("Control+Shift+c")
        try:
            palette.wait_for(state="visible", timeout=3000)
            return
        except PlaywrightTimeout:
            cell(page, 0).click()
    palette.wait_for(state="visible")


def wait_kernel_idle(page: Any) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-Notebook-ExecutionIndicator')]"
        ".some(e => e.dataset.status === 'idle')"
    )


def cell(page: Any, index: int) -> Any:
    return page.locator(f"{NOTEBOOK} .jp-Cell").nth(index)


def phase_of(page: Any, index: int) -> str:
    badge = cell(page, index).locator(".jp-hwsched-CellPhase")
    return str(badge.get_attribute("data-phase")) if badge.count() else ""


def wait_phase(page: Any, index: int, *phases: str) -> None:
    page.wait_for_function(
        """([selector, index, phases]) => {
            const cell = document.querySelectorAll(selector)[index];
            const badge = cell && cell.querySelector('.jp-hwsched-CellPhase');
            return !!badge && phases.includes(badge.dataset.phase);
        }""",
        arg=[f"{NOTEBOOK} .jp-Cell", index, list(phases)],
    )


def save(page: Any, lab: Lab, name: str) -> dict[str, Any]:
    before = (lab.root / name).stat().st_mtime_ns
    page.locator(NOTEBOOK).click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    wait_for(lambda: (lab.root / name).stat().st_mtime_ns != before, 30, "the notebook saved")
    return lab.saved(name)


def wait_all_gpus_free(page: Any) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-hwsched-Gpu')]"
        ".every(row => row.dataset.holder === 'free')"
    )


def sidebar_gpus(page: Any) -> dict[str, str]:
    rows = page.locator(".jp-hwsched-Sidebar .jp-hwsched-Gpu")
    return {
        str(rows.nth(i).get_attribute("data-gpu")): str(rows.nth(i).get_attribute("data-holder"))
        for i in range(rows.count())
    }


def test_run_cell_on_gpu_shows_text_and_plot(page: Any, lab: Lab, clean_pool: Pool) -> None:
    name = lab.notebook("plot.ipynb", [PRINT_AND_PLOT, "print('not selected')"])
    open_notebook(page, lab, name)
    cell(page, 0).click()
    page.click(".jp-NotebookPanel-toolbar [data-command='hwsched:run-cells-on-gpu']")
    # no GPU request in the notebook yet: the picker asks, prefilled with one GPU
    page.wait_for_selector(".jp-Dialog .jp-hwsched-Picker")
    assert page.input_value(".jp-hwsched-Picker input[name='gpus']") == "1"
    shot(page, "01-gpu-picker.png")
    page.click(".jp-Dialog .jp-mod-accept")

    wait_phase(page, 0, "released")
    outputs = cell(page, 0).locator(".jp-OutputArea-output")
    text = outputs.first.inner_text()
    assert text.startswith("hello from") and ("GPU 0" in text or "GPU 1" in text), text
    assert cell(page, 0).locator(".jp-OutputArea-output img").count() == 1
    badge = cell(page, 0).locator(".jp-hwsched-CellPhase").inner_text()
    assert f"on {clean_pool.node}, GPU" in badge and "waited" in badge and "ran" in badge
    assert "released" in badge
    assert phase_of(page, 1) == ""  # only the selected cell ran
    assert page.locator(".jp-hwsched-PickerButton").inner_text() == "1 GPU"
    shot(page, "02-cell-ran-text-and-plot.png")

    saved = save(page, lab, name)
    assert saved["metadata"]["hwsched"] == {"gpus": 1, "gpu_type": ""}
    first = saved["cells"][0]
    assert any("image/png" in o.get("data", {}) for o in first["outputs"])
    assert any("hello from" in "".join(o.get("text", "")) for o in first["outputs"])
    assert first["execution_count"] == 1
    assert saved["cells"][1]["outputs"] == []
    wait_for(lambda: clean_pool.held_gpus() == [], 30, "the GPU to go back to the pool")


def test_run_on_a_share_of_a_gpu_from_the_picker(page: Any, lab: Lab, clean_pool: Pool) -> None:
    """The picker's "Share of one GPU": the notebook keeps it, and the run's kernel holds a
    share of a GPU (by its memory), not a whole one."""
    code = "import time, os\ntime.sleep(4)\nprint('shared', os.environ['CUDA_VISIBLE_DEVICES'])"
    name = lab.notebook("shared.ipynb", [code], ONE_GPU)
    open_notebook(page, lab, name)
    page.click(".jp-hwsched-PickerButton")
    page.wait_for_selector(".jp-Dialog .jp-hwsched-Picker")
    page.fill(".jp-hwsched-Picker input[name='shared_mem']", "20G")
    shot(page, "11-picker-share-of-a-gpu.png")
    page.click(".jp-Dialog .jp-mod-accept")
    label = page.locator(".jp-hwsched-PickerButton")
    wait_for(lambda: label.inner_text() == "20G of a shared GPU", 30, "the picker's label")
    cell(page, 0).click()
    page.click(".jp-NotebookPanel-toolbar [data-command='hwsched:run-cells-on-gpu']")

    def shared() -> list[Any]:
        return [t for n in clean_pool.pool()["nodes"] for g in n["gpus"] for t in g["shared_by"]]

    [tenant] = wait_for(shared, 120, "the run's kernel to hold a share of a GPU")
    assert tenant["gpu_mem"] == 20 * 1024**3
    wait_phase(page, 0, "released")
    text = cell(page, 0).locator(".jp-OutputArea-output").first.inner_text()
    assert text.startswith("shared "), text
    saved = save(page, lab, name)
    assert saved["metadata"]["hwsched"] == {"gpus": 1, "gpu_type": "", "shared_mem": "20G"}
    wait_for(lambda: not shared() and clean_pool.held_gpus() == [], 30, "the share to go back")


def test_whole_notebook_runs_in_one_kernel_and_stops_at_the_first_error(
    page: Any, lab: Lab, clean_pool: Pool
) -> None:
    name = lab.notebook(
        "whole.ipynb",
        [
            "x = 41",
            "import os\nprint('answer', x + 1, 'pid', os.getpid())",
            "raise ValueError('stop here')",
            "print('never printed')",
        ],
        ONE_GPU,
    )
    open_notebook(page, lab, name)
    # from the command palette
    cell(page, 0).click()
    open_palette(page)
    page.fill(".lm-CommandPalette-input", "Run Whole Notebook on GPU")
    page.click(".lm-CommandPalette-item[data-command='hwsched:run-notebook-on-gpu']")

    wait_phase(page, 3, "skipped")
    wait_phase(page, 0, "released")  # the GPU goes back once the run stops
    assert [phase_of(page, i) for i in range(4)] == ["released", "released", "error", "skipped"]
    assert "answer 42" in cell(page, 1).locator(".jp-OutputArea-output").inner_text()
    assert "ValueError" in cell(page, 2).locator(".jp-OutputArea-output").inner_text()
    assert cell(page, 3).locator(".jp-OutputArea-output").count() == 0
    shot(page, "03-whole-notebook-stopped-at-error.png")

    saved = save(page, lab, name)
    counts = [c["execution_count"] for c in saved["cells"]]
    assert counts == [1, 2, 3, None]  # one kernel, in order
    assert saved["cells"][2]["outputs"][0]["ename"] == "ValueError"
    wait_for(lambda: clean_pool.held_gpus() == [], 30, "the GPU to be released")


def test_sidebar_shows_a_busy_gpu_and_cancel_frees_it(
    page: Any, lab: Lab, clean_pool: Pool
) -> None:
    name = lab.notebook(
        "long.ipynb",
        [LONG_CELL],
        ONE_GPU,
    )
    open_notebook(page, lab, name)
    page.click(".jp-SideBar .lm-TabBar-tab[data-id='jp-hwsched-cluster']")
    page.wait_for_selector(".jp-hwsched-Sidebar[data-state='ok'] .jp-hwsched-Gpu")
    assert set(sidebar_gpus(page).values()) == {"free"}
    assert "simulated" in page.locator(".jp-hwsched-Sidebar").inner_text()

    # from the cell's context menu
    cell(page, 0).locator(".jp-InputArea-editor").click(button="right")
    page.click(".lm-Menu-item[data-command='hwsched:run-cells-on-gpu']")
    wait_phase(page, 0, "running")
    page.wait_for_function(
        "() => document.querySelector('.jp-Cell .jp-OutputArea-output')?.textContent"
        ".includes('tick 3')"
    )
    page.wait_for_selector(".jp-hwsched-Gpu[data-holder='you']")
    [held] = [gpu for gpu, holder in sidebar_gpus(page).items() if holder == "you"]
    assert clean_pool.held_gpus() == [int(held)]
    assert page.locator(".jp-hwsched-MySession").count() == 1
    assert "long.ipynb" in page.locator(".jp-hwsched-MySession").inner_text()
    page.wait_for_selector(".jp-hwsched-StatusItem[data-state='held']")
    status = page.locator(".jp-hwsched-StatusItem").inner_text()
    assert status.startswith(f"1 x A100-80GB on {clean_pool.node}")
    shot(page, "04-sidebar-gpu-busy-while-cell-runs.png")

    cell(page, 0).locator(".jp-hwsched-CellPhase-cancel").click()
    wait_phase(page, 0, "cancelled")
    wait_all_gpus_free(page)
    assert page.locator(".jp-hwsched-MySession").count() == 0
    assert clean_pool.held_gpus() == []
    page.wait_for_selector(".jp-hwsched-StatusItem[data-state='none']")
    assert "given back" in cell(page, 0).locator(".jp-hwsched-CellPhase").inner_text()
    shot(page, "05-cancelled-gpu-free-in-sidebar.png")


def test_remote_kernel_start_shows_its_phases(page: Any, lab: Lab, clean_pool: Pool) -> None:
    """Picking "Remote GPU (shared env)" while every GPU is held: the status bar shows the
    queue position, then where the kernel landed, instead of a silent spinner."""
    holders = [
        clean_pool.api(
            "POST",
            "/api/sessions",
            {"request": {"gpus": 1}, "user": "someone-else", "host": "elsewhere"},
        )["id"]
        for _ in range(2)
    ]
    stop = threading.Event()

    def renew() -> None:  # the other user's client keeps its leases
        while not stop.wait(1.0):
            for session_id in holders:
                try:
                    clean_pool.api("POST", f"/api/sessions/{session_id}/renew")
                except OSError:
                    pass

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        name = lab.notebook(
            "remote.ipynb",
            ["import os\nprint('kernel GPU', os.environ['CUDA_VISIBLE_DEVICES'])"],
            {
                "kernelspec": {
                    "display_name": "Remote GPU (shared env)",
                    "language": "python",
                    "name": "hwsched-remote",
                }
            },
        )
        goto(page, lab, name)
        page.wait_for_selector(".jp-hwsched-StatusItem[data-state='starting']")
        status = page.locator(".jp-hwsched-StatusItem").inner_text()
        assert status.startswith("GPU starting: queued, position 1"), status
        page.click(".jp-SideBar .lm-TabBar-tab[data-id='jp-hwsched-cluster']")
        page.wait_for_selector(".jp-hwsched-Queue li")
        shot(page, "06-remote-kernel-queued.png")
    finally:
        stop.set()
        renewer.join()
        for session_id in holders:
            clean_pool.api("DELETE", f"/api/sessions/{session_id}")
    page.wait_for_selector(".jp-hwsched-StatusItem[data-state='held']")
    wait_kernel_idle(page)
    cell(page, 0).click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(
        "() => document.querySelector('.jp-Cell .jp-OutputArea-output')?.textContent"
        ".includes('kernel GPU')"
    )
    assert "Remote GPU (shared env)" in page.locator(".jp-Toolbar-kernelName").first.inner_text()
    page.wait_for_selector(".jp-hwsched-MySession")
    shot(page, "07-remote-kernel-ready.png")

    # the sidebar's Cancel ends the kernel's session through its kernel: the GPU goes back
    [kernel] = [k for k in lab.api("GET", "/api/kernels") if k["name"] == "hwsched-remote"]
    page.click(".jp-hwsched-MySession .jp-hwsched-CancelSession")
    wait_all_gpus_free(page)
    assert page.locator(".jp-hwsched-MySession").count() == 0
    assert kernel["id"] not in [k["id"] for k in lab.api("GET", "/api/kernels")]
    wait_for(lambda: clean_pool.held_gpus() == [], 30, "the kernel's GPU to be released")
    shot(page, "08-remote-kernel-cancelled-from-sidebar.png")


def lab_with_scheduler(tmp_path: Path, url: str, token: str) -> tuple[Lab, Path]:
    """A JupyterLab of its own whose server extension finds the scheduler at ``url``."""
    root = Path("/var/lib/hwsched-test") / f"lab-alone-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    env = {
        **os.environ,
        "HWSCHED_URL": url,
        "HWSCHED_TOKEN": token,
        "HWSCHED_SHARE_SOCKET": str(root / "none.sock"),
    }
    return Lab(root, tmp_path / "lab.log", env), root


def test_sidebar_says_when_the_scheduler_is_unreachable(
    page: Any, browser: Any, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    lab, root = lab_with_scheduler(tmp_path, down, "t")
    try:
        goto(page, lab)
        page.click(".jp-SideBar .lm-TabBar-tab[data-id='jp-hwsched-cluster']")
        page.wait_for_selector(".jp-hwsched-Sidebar[data-state='unreachable']")
        text = page.locator(".jp-hwsched-Sidebar-status").inner_text()
        assert "Scheduler unreachable" in text
        assert f"cannot reach the scheduler at {down}" in text
        shot(page, "09-sidebar-scheduler-unreachable.png")
    finally:
        page.goto("about:blank")  # leave the page before its server goes away
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_sidebar_says_when_the_scheduler_refuses_the_token(
    page: Any, browser: Any, pool: Pool, tmp_path: Path
) -> None:
    lab, root = lab_with_scheduler(tmp_path, pool.url, "not-the-pool-token")
    try:
        goto(page, lab)
        page.click(".jp-SideBar .lm-TabBar-tab[data-id='jp-hwsched-cluster']")
        page.wait_for_selector(".jp-hwsched-Sidebar[data-state='refused']")
        text = page.locator(".jp-hwsched-Sidebar-status").inner_text()
        assert "Scheduler refused this server's token" in text
        assert "Scheduler unreachable" not in text
        assert "c.HwschedServerApp.scheduler_token" in text
        shot(page, "10-sidebar-scheduler-refused-token.png")
    finally:
        page.goto("about:blank")  # leave the page before its server goes away
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)

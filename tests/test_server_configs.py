"""The example deployment configs in server/ load into the real applications."""

from __future__ import annotations

from pathlib import Path

from jupyter_hwsched.developer.share.app import ShareAgentApp
from jupyter_hwsched.protocol.request import HardwareRequest
from jupyter_hwsched.scheduler.app import SchedulerApp
from jupyter_hwsched.scheduler.core import Scheduler

SERVER = Path(__file__).parent.parent / "server"


def test_scheduler_config_loads_and_the_command_line_wins() -> None:
    app = SchedulerApp()
    app.initialize([f"--config={SERVER / 'scheduler_config.py'}", "--port=9999"])
    assert app.port == 9999  # from the command line
    assert app.ip == "0.0.0.0"  # from the file
    assert app.config.Scheduler.user_gpu_quota == 4
    scheduler_traits = Scheduler.class_trait_names(config=True)
    assert set(app.config.Scheduler) <= set(scheduler_traits)  # no misspelt setting


def test_share_config_loads() -> None:
    app = ShareAgentApp()
    app.initialize([f"--config={SERVER / 'share_config.py'}"])
    assert app.listen_ip == "10.0.0.21"
    assert app.scheduler_url.startswith("https://")
    assert app.machine_cert and app.ca_file


def test_agent_config_names_real_settings() -> None:
    from jupyter_server.serverapp import ServerApp
    from traitlets.config.loader import PyFileConfigLoader

    from jupyter_hwsched.agent.extension import AgentApp

    config = PyFileConfigLoader("agent_config.py", path=str(SERVER)).load_config()
    assert set(config.AgentApp) <= set(AgentApp.class_trait_names(config=True))
    assert set(config.ServerApp) <= set(ServerApp.class_trait_names(config=True))
    assert config.AgentApp.labels == ["nvlink", "rack-3"]
    from jupyter_hwsched.agent.limits import SessionLimits

    assert set(config.SessionLimits) <= set(SessionLimits.class_trait_names(config=True))
    limits = SessionLimits(config=config).resolve(HardwareRequest(mem=32 * 2**30))
    assert (limits.memory, limits.cpus, limits.tmp) == (32 * 2**30, 8.0, 8 * 2**30)


def test_slurm_scheduler_config_names_real_settings() -> None:
    from jupyter_hwsched.scheduler.slurm.backend import SlurmBackend, refused_settings

    app = SchedulerApp()
    app.initialize([f"--config={SERVER / 'scheduler_slurm_config.py'}"])
    assert app.config.Scheduler.backend == "slurm"
    assert set(app.config.Scheduler) <= set(Scheduler.class_trait_names(config=True))
    assert set(app.config.SlurmBackend) <= set(SlurmBackend.class_trait_names(config=True))
    assert refused_settings(app.config.Scheduler) == []  # the example would start

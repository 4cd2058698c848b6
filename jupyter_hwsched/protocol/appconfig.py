"""``--config FILE`` for the package's plain traitlets applications (scheduler, share agent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlets import Unicode
from traitlets.config import Application


class ConfigFileApp(Application):
    config_file = Unicode("", config=True, help="A traitlets config file (Python) to load.")

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        if self.config_file:
            path = Path(self.config_file)
            self.load_config_file(path.name, path=str(path.parent.resolve()))
            self.update_config(self.cli_config)  # the command line wins over the file

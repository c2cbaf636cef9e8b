"""Ships the top-level ``widgets/`` folder (the views' ES modules and CSS) inside the wheel.

Everything else is in pyproject.toml. The files are copied as they are, into
``mlmf_lab/widgets/``: no bundler, no minifier. A source checkout or an editable install
reads them from ``widgets/`` directly (``mlmf_lab.views.base.widgets_dir``).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WIDGETS = Path(__file__).resolve().parent / "widgets"


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "mlmf_lab" / "widgets"
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(WIDGETS.iterdir()):
            if f.suffix in (".js", ".css"):
                shutil.copyfile(f, dest / f.name)


setup(cmdclass={"build_py": BuildPy})

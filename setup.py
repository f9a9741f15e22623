"""Build hook: the wheel carries the DAG files of ``dags/`` as ``airflow_provider_kaapana/dags/``.

Everything else is in setup.cfg. ``kaapana dags install DIR`` and ``KaapanaDagBundle`` find them there.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithDags(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's dags/ directly
            return
        target = Path(self.build_lib) / "airflow_provider_kaapana" / "dags"
        self.mkpath(str(target))
        for source in sorted(Path(__file__).resolve().parent.joinpath("dags").glob("*.py")):
            self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildPyWithDags})

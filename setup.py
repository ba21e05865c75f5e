"""Only what pyproject.toml cannot say: install `autodeploy_lm_eval.pth` at the top of site-packages (it registers
the `autodeploy` model with lm-eval; see autodeploy_cli/eval/plugin.py), in wheels and editable installs alike."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "autodeploy_lm_eval.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(Path("autodeploy_cli") / "eval" / PTH), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})

"""README's two set-up commands install what CI (.ci/run) installs, and run what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[list[str]]:
    """The one-line commands of README's "Set up and run" section, split at `&&`."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, flags=re.DOTALL)
    return [[part.strip() for part in block.split("&&")] for block in blocks]


def _ci_lines() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_test_command_installs_and_checks_as_ci_does() -> None:
    demo, tests = _readme_commands()
    steps = ("pip install", "ruff ", "python -m pytest")
    ci_steps = [line for line in _ci_lines() if line.startswith(steps)]
    readme_steps = [step for step in tests if step.startswith(steps)]
    # CI goes on with the pipeline run and the slow tier; README's command stops at the default run.
    assert len(readme_steps) == 4 and readme_steps == ci_steps[: len(readme_steps)]
    assert demo[2] == ci_steps[0]  # the demo command pins the torch that CI tests with

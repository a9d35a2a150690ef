"""The README's example runs as written: producer.py and consumer.py, two processes sharing a NumPy array."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import PYTHON_DIR


def test_readme_example(daemon, tmp_path):
    readme = (PYTHON_DIR / "README.md").read_text()
    blocks = re.findall(r"```python\n# (\w+\.py)\n(.*?)```", readme, re.DOTALL)
    assert [name for name, _ in blocks] == ["producer.py", "consumer.py"]
    for name, code in blocks:
        lines = code.splitlines()
        assert len(lines) <= 15, f"{name} is {len(lines)} lines"
        (tmp_path / name).write_text(code)
    environment = dict(os.environ)
    environment["DIVVY_SOCKET"] = daemon.socket
    environment["PYTHONPATH"] = str(PYTHON_DIR / "src")
    result = subprocess.run(
        [sys.executable, "producer.py"], cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["499500.0", "[-1.  1.  2.]"]

"""Metric specs are parsed apart from their evaluation: loading a config loads no scoring code."""

import subprocess
import sys


def test_loading_a_config_imports_nothing_from_scoring():
    code = (
        "import sys, exprof.config, exprof.metric_specs;"
        "print(sorted(m for m in sys.modules if m.startswith('exprof.scoring')))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"

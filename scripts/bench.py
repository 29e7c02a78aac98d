#!/usr/bin/env python3
"""Benchmarks: `python scripts/bench.py --device cpu` (table + bench.json); `--device cuda --selftest` on a GPU.

The logic lives in collapse/bench/ (CPU: cpu.py, counting.py, e2e.py; GPU: cuda*.py); see docs/benchmarks.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collapse.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Shared paths for the checks' tests; makes scripts/checks importable."""

import sys
from pathlib import Path

CHECKS = Path(__file__).resolve().parents[1]
ROOT = CHECKS.parents[1]
FIXTURES = CHECKS / "tests" / "fixtures"
sys.path.insert(0, str(CHECKS))

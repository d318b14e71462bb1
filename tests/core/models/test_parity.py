"""The paper preset reproduces the numerical fixtures recorded with the original code.

AUDIOCLIP_PARITY_DIR may name other fixture sets recorded the same way (os.pathsep-separated);
by default ../shared/parity beside the checkout ($AUDIOCLIP_SHARED_DIR/parity): skipped on a plain
clone, a failure under CI, like the tests that read real media.
"""

import os
from pathlib import Path

import pytest
from conftest import PARITY_DIR, PARITY_REASON, ci_requires_shared_data
from parity_run import run_parity

DIRS = [Path(p) for p in (os.environ.get("AUDIOCLIP_PARITY_DIR") or str(PARITY_DIR)).split(os.pathsep) if p]


@pytest.mark.parametrize("parity_dir", DIRS, ids=[d.name for d in DIRS])
def test_parity_fixtures(parity_dir):
    if not (parity_dir / "reference_outputs.npz").is_file():
        if ci_requires_shared_data() or os.environ.get("AUDIOCLIP_PARITY_DIR"):
            pytest.fail(f"no parity fixtures in {parity_dir}", pytrace=False)
        pytest.skip(PARITY_REASON)
    outputs, compare = run_parity(parity_dir)
    ref = compare.load_reference(str(parity_dir / "reference_outputs.npz"))
    results = compare.compare(outputs, ref=ref)
    report = compare.report(results)
    print(report)
    # every stored output that has a tolerance must have been produced and must pass
    expected = set(compare.TOLERANCES) & set(ref)
    assert expected <= set(outputs), f"not produced: {sorted(expected - set(outputs))}"
    assert all(r["ok"] for r in results), report

"""The suite does not depend on the user's environment: conftest clears the package's
variables before the package is imported (a DATADISTILL_CACHE shared by every test made
two tests' ImageNet caches collide)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_probe_sees_no_package_variables():
    """Run alone by the test below, with the variables set; trivially true in a plain run."""
    assert [k for k in os.environ if k.startswith("DATADISTILL_")
            and k != "DATADISTILL_TEST_TIMELIMIT"] == []
    from datadistill.models import winograd
    from datadistill.runtime import ckernels

    assert winograd.KEEP_TILES  # read at import, from a cleared environment
    assert ckernels.cache_dir().parts[-2:] == ("datadistill", "kernels")


def test_the_package_variables_of_the_user_do_not_reach_the_tests(tmp_path):
    here = Path(__file__)
    env = dict(os.environ, DATADISTILL_CACHE=str(tmp_path / "cache"),
               DATADISTILL_KEEP_TILES="0", DATADISTILL_DATA=str(tmp_path / "data"),
               DATADISTILL_TEST_TIMELIMIT="120")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{here}::test_probe_sees_no_package_variables"],
                          cwd=here.parent.parent, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
    assert not (tmp_path / "cache").exists()

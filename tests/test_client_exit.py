"""A synchronous client left open at interpreter exit neither hangs the exit nor complains."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPTS = {
    "own cluster": "from dsched import Client\nclient = Client(n_workers=1, processes=False)\nprint(client.submit(sum, [1, 2]).result())\n",
    "given cluster": (
        "from dsched import Client, LocalCluster\n"
        "cluster = LocalCluster(n_workers=1, processes=False)\n"
        "client = Client(cluster)\n"
        "print(client.submit(sum, [1, 2]).result())\n"
    ),
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=list(SCRIPTS))
def test_unclosed_client_at_exit(script: str) -> None:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    assert "lost the connection" not in done.stderr
    assert "Traceback" not in done.stderr

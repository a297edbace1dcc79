"""The notebooks as stored: only the outputs nbval compares, no figures, no machine paths (issue 9 item 6).

Figures and tables live in results/ and the executed main-job copies in results/notebooks/; a stored notebook
keeps the outputs of its ``# NBVAL_CHECK_OUTPUT`` cells only (``python -m depthg reproduce --store`` writes them).
"""

import json
import re
from pathlib import Path

import pytest

from depthg.reproduce import CHECKED

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# an absolute POSIX path of this or any machine (/work/..., /tmp/..., /home/..., /root/...), or a Windows drive
ABSOLUTE = re.compile(r"(?<![\w.])(/(?:work|tmp|home|root|Users|usr|opt|var|mnt)/[\w.-]+|[A-Z]:\\\\[\w.-]+)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_only_checked_outputs_are_stored(path):
    nb = json.loads(path.read_text())
    extra = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and c.get("outputs") and not "".join(c["source"]).lstrip().startswith(CHECKED)
    ]
    assert not extra, (
        f"{path.name}: cells {extra} store outputs nbval does not check; run `python -m depthg reproduce --store`"
    )
    images = [i for i, c in enumerate(nb["cells"]) for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert not images, f"{path.name}: cells {images} store figures (they belong in results/figures/)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_machine_path_in_stored_outputs(path):
    nb = json.loads(path.read_text())
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    found = ABSOLUTE.findall(text)
    assert not found, f"{path.name}: stored outputs carry machine paths {found[:3]}"


def test_the_path_check_catches_a_machine_path():
    assert ABSOLUTE.findall('"text": ["wrote /work/main/results/x.png\\n"]')
    assert not ABSOLUTE.findall('"text": ["wrote results/figures/x.png\\n"]')

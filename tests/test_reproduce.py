"""`make reproduce` is never silent for minutes: cell output reaches the terminal, and a quiet cell gets a
"still running" line (depthg.reproduce._Echo, the stdout papermill writes the kernel's streams to)."""

import time

from depthg.reproduce import _Echo


def test_cell_lines_are_echoed_and_quiet_stretches_get_a_heartbeat(capsys):
    with _Echo("03_ablation", quiet_s=0.2) as echo:
        echo.write("STEGO baseline seed 0: trained ablation-synthetic-stego-s0\n+DFC")
        echo.write(" seed 0: trained ablation-synthetic-dfc-s0\n")
        time.sleep(0.6)
        echo.write("last line without newline")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[reproduce] 03_ablation | STEGO baseline seed 0: trained ablation-synthetic-stego-s0"
    assert out[1] == "[reproduce] 03_ablation | +DFC seed 0: trained ablation-synthetic-dfc-s0"
    assert any(line.startswith("[reproduce] 03_ablation still running") for line in out)
    assert out[-1] == "[reproduce] 03_ablation | last line without newline"  # flushed at the end

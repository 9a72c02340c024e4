"""Run a command and write its peak RSS, from a process small enough not to distort it.

Linux carries a process's peak-RSS mark across fork and exec: a child started by a process holding 600 MB
reports at least 600 MB. The benchmark, which holds torch and the data it checks, starts its measured
commands through this launcher (about 10 MB) instead.

    python -m bench.peak_rss OUT.json -- CMD ...
"""

import json
import os
import subprocess
import sys


def main() -> int:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit(__doc__)
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as fh:
        json.dump({"peak_rss_mb": usage.ru_maxrss / 1024, "returncode": code}, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark scripts share: describing the machine, formatting rates.

Imported by the scripts as ``_common`` (a script's own directory is first on
``sys.path`` when it is run as ``python benchmarks/bench_*.py``).
"""

import os
import platform
import statistics


def filesystem(path):
    """The type of the file system holding ``path`` (Linux), else ''."""
    try:
        with open("/proc/mounts") as mounts:
            entries = [line.split()[1:3] for line in mounts]
    except OSError:
        return ""
    path = os.path.realpath(path)
    best = ("", "")
    for mount, fstype in entries:
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best[0]):
            best = (mount, fstype)
    return best[1]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rate(rates):
    """Median and min–max of rates, as "1,234 (1,000–1,500)"."""
    return "%s (%s–%s)" % tuple("{:,.0f}".format(x) for x in
                                (statistics.median(rates), min(rates), max(rates)))

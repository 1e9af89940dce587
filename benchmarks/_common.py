"""What the benchmark scripts share: describing the machine, formatting rates.

Imported by the scripts as ``_common`` (a script's own directory is first on
``sys.path`` when it is run as ``python benchmarks/bench_*.py``).
"""

import argparse
import dataclasses
import os
import platform
import statistics
import sys


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


def machine():
    """The "- Machine: ..." line that opens every report."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return "- Machine: %s; %s CPUs (%s usable; %s)" % (
        platform.platform(), os.cpu_count(), usable, cpu_model())


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


def arguments(doc, quick_help, repeat_help):
    """A parser with the options every script has: --quick and --repeat."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeat", type=int, help=repeat_help)
    return parser


def settings(parser, args, full, quick):
    """``quick`` or ``full`` settings, with ``--repeat`` applied if given."""
    s = quick if args.quick else full
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        s = dataclasses.replace(s, repeat=args.repeat)
    return s


def emit(text, output=None):
    """Print the report, and write it to ``output`` too if given."""
    sys.stdout.write(text)
    if output:
        with open(output, "w", encoding="utf-8") as out:
            out.write(text)

#!/usr/bin/env python3
"""Reports what scripts/probe/trace-restore.sh recorded: for each restored VM, the window from
husk-vmm's `vCPUs running` to the shim's "agent is ready", split into guest-mode time and exit
handling by exit reason; the nested page faults by kind (read, write, write-protect: the
copy-on-write of a template page, page-table walk) and the distinct pages and 2 MiB blocks they
touch; and the guest's halts (when it idles, waiting for the host).

  trace-restore.py OUT                 every round
  trace-restore.py OUT --steps ROUND   that round's timeline: the guest's virtio-mmio accesses
                                       and halts, and what the test host's CPUs switched to
"""
import collections
import datetime
import re
import sys

EVENT = re.compile(r"\[(\d+)\].*\s(\d+\.\d+): (\w+): (.*)")
EXIT = re.compile(r"reason (\w+) rip (0x[0-9a-f]+) info1 (0x[0-9a-f]+) info2 (0x[0-9a-f]+)")
FAULT = re.compile(r"address (0x[0-9a-f]+) error_code (0x[0-9a-f]+)")
SWITCH = re.compile(r"prev_comm=(.*?) prev_pid=\d+ .*==> next_comm=(.*?) next_pid=(\d+)")
# PFERR bits as KVM's kvm_page_fault event prints them.
PRESENT, WRITE, WALK = 0x1, 0x2, 0x200000000
# husk-vmm's virtio-mmio windows (protocol's layout: 4 KiB each from here).
MMIO_BASE, MMIO_END = 0xC0000000, 0xD0000000


def wall(line):
    return datetime.datetime.strptime(line[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def windows(out):
    """(start, end) on the monotonic clock of each restored VM's window, in run order."""
    offset = float(open(f"{out}/offset").read())
    wins, restored, start = [], False, None
    for line in open(f"{out}/log.txt"):
        if "husk-vmm started" in line:
            restored = "restore=" in line
        elif restored and "vCPUs running" in line:
            start = wall(line) - offset
        elif restored and "agent is ready" in line and start is not None:
            wins.append((start, wall(line) - offset))
            restored, start = False, None
    return wins


def events(out, rnd):
    for line in open(f"{out}/trace-{rnd}.txt"):
        m = EVENT.search(line)
        if m:
            yield int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)


def fault_kind(code):
    kind = "write" if code & WRITE else "read"
    if code & WRITE and code & PRESENT:
        kind = "write-protect"
    return kind + (" (walk)" if code & WALK else "")


def summary(out, rnd, a, b):
    guest = 0.0
    spent, count = collections.Counter(), collections.Counter()
    faults, pages, blocks, halts = collections.Counter(), set(), set(), []
    last, reason = None, None
    for _, t, name, rest in events(out, rnd):
        if not a <= t <= b:
            continue
        if name == "kvm_entry":
            if reason is not None and last is not None:
                spent[reason] += t - last
                count[reason] += 1
                if reason == "hlt":
                    halts.append(((last - a) * 1000, (t - last) * 1000))
            last, reason = t, None
        elif name == "kvm_exit":
            m = EXIT.search(rest)
            if m:
                if reason is None and last is not None:
                    guest += t - last
                last, reason = t, m.group(1)
        elif name == "kvm_page_fault":
            m = FAULT.search(rest)
            if m:
                addr, code = int(m.group(1), 16), int(m.group(2), 16)
                if MMIO_BASE <= addr < MMIO_END:
                    continue
                faults[fault_kind(code)] += 1
                pages.add(addr >> 12)
                blocks.add(addr >> 21)
    ms = lambda s: f"{s * 1000:.0f} ms"
    print(f"round {rnd}: window {ms(b - a)}, guest mode {ms(guest)}, "
          f"exit handling {ms(sum(spent.values()))}")
    for r, s in spent.most_common(6):
        print(f"    {r:10s} {count[r]:5d} exits {s * 1000:7.1f} ms ({s / count[r] * 1e6:.0f} µs each)")
    print(f"    page faults: {dict(faults)}; {len(pages)} pages in {len(blocks)} 2 MiB blocks")
    if halts:
        print("    halts (at +ms, for ms): " + " ".join(f"{s:.0f}/{d:.1f}" for s, d in halts))


def steps(out, rnd, a, b):
    for cpu, t, name, rest in events(out, rnd):
        at = (t - a) * 1000
        if not -5 <= at <= (b - a) * 1000 + 5:
            continue
        if name == "kvm_exit":
            m = EXIT.search(rest)
            gpa = int(m.group(4), 16) if m else 0
            if m and (m.group(1) == "hlt" or MMIO_BASE <= gpa < MMIO_END):
                what = "halt" if m.group(1) == "hlt" else f"mmio {gpa:#x}"
                print(f"{at:9.2f}  guest  {what}")
        elif name == "sched_switch":
            m = SWITCH.search(rest)
            if m:
                print(f"{at:9.2f}  cpu{cpu}   -> {m.group(2)}[{m.group(3)}] (from {m.group(1)})")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    wins = windows(out)
    if len(sys.argv) == 4 and sys.argv[2] == "--steps":
        rnd = int(sys.argv[3])
        steps(out, rnd, *wins[rnd - 1])
        return
    for rnd, (a, b) in enumerate(wins, 1):
        summary(out, rnd, a, b)


if __name__ == "__main__":
    main()

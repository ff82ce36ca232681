#!/usr/bin/env python3
"""Describes one failed run of an e2e test binary as a JSON line, and summarises those lines.

  e2e-failure.py reason <log> <rc>                               prints the reason alone
  e2e-failure.py record <log> <rc> <binary> <attempt> <action>   prints one JSON object
  e2e-failure.py summary <jsonl>                                 prints the run's summary
  e2e-failure.py passed <log>...                                 the tests that passed in them

The reason is what the exit code and output say:
  test-host-failed  husk-testhost exit 75: the nested test host wedged or its kernel died
                    under the binary (the environment, not the tests);
  guest-early-boot  every failed test failed on a guest that died or hung in early kernel
                    setup, before its kernel set up any virtio device (the shim's message
                    carries EARLY_BOOT below, protocol/src/vmm.rs): the nested test host's
                    known loss, which QEMU's microvm suffers alike (scripts/boot-stress.sh);
  guest-fetch-fault every failed test failed on a guest that triple faulted, and the test host's
                    KVM saw a guest's SHUTDOWN exit while delivering a page fault on an
                    instruction fetch from a page not present or with a reserved
                    bit set (FETCH_FAULT below): the guest
                    kernel's own text vanished from under it, so its #PF handler could not run
                    either. The nested test host's TCG does that to QEMU's microvm guests as
                    well (scripts/boot-stress.sh prints the same lines for both VMMs); a guest
                    kernel bug would oops on the console instead. Also the same fault without
                    the triple fault: the test host recorded a guest stuck in it (FETCH_LOOP
                    below: its KVM re-injects the page fault endlessly), and every failed test
                    failed on a stall that names the loop or on a guest that stopped answering;
  killed-at-bound   exit 124: the binary ran past its bound (a hang; see its output);
  tests-failed      the binary's own tests failed: a product bug until shown otherwise.
Only the first three are the environment's: scripts/e2e.sh runs a binary again for those; any
other failure fails the run.
A binary run again runs only the tests that have not passed in an earlier run of it (`passed`):
each test stands alone, and one that passed has passed.
For tests-failed the record names the failed tests, the first lines of their panics and the
last warnings their shims and VMMs logged (LOG_LINE below), so the end of a CI log says what
failed, and often why, without scrolling back.
"""
import json
import os
import re
import sys


def failed_tests(text):
    # libtest lists the failed tests' names, indented, after the last "failures:" header.
    names = []
    blocks = text.split("\nfailures:\n")
    if len(blocks) > 1:
        for line in blocks[-1].splitlines():
            m = re.match(r"^    (\S+)$", line)
            if m:
                names.append(m.group(1))
            elif line.startswith("test result:"):
                break
    return names


def panics(text, limit=3):
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "panicked at" in line:
            msg = " | ".join(l.strip() for l in lines[i + 1:i + 4] if l.strip()
                             and not l.startswith("stack backtrace"))
            out.append(f"{line.strip()} {msg}"[:600])
            if len(out) == limit:
                break
    return out


# The shim's words for a guest that died or hung in early kernel setup (protocol/src/vmm.rs,
# EARLY_BOOT; a shim unit test checks this file still carries them).
EARLY_BOOT = "the guest died or hung in early kernel setup"


def panic_first_lines(text):
    # The first line of each panic's message: the error itself. What tests print after it
    # (containerd's log tail) may quote earlier, retried failures, so it is not read.
    lines = text.splitlines()
    return [lines[i + 1] if i + 1 < len(lines) else ""
            for i, line in enumerate(lines) if "panicked at" in line]


# husk-testhost's line for a SHUTDOWN exit its KVM saw (tests/src/testhost/kvm_trace.rs), and
# the event KVM was delivering when the guest shut down, in the guest kernel's text: a valid
# hardware exception with an error code (0x80000b00), vector 14 (#PF), an error code for a
# supervisor instruction fetch (I/D 0x10 set, U/S 0x4 clear): seen with 0x10 (page not
# present) and 0x18 (a reserved bit set in a page table entry). Same rule as
# tests/src/guest_loss.rs.
SHUTDOWN_LINE = "a guest triple faulted (the test host's KVM saw a SHUTDOWN exit)"
# Also an external interrupt being delivered (type 0, vector 32 or more: intr_info 0x800000xx),
# seen with the local timer's 0xec: a running kernel cannot shut down entering an interrupt
# unless its IDT, GDT or stacks vanished the same way. A guest's own reboot by triple fault
# (int3 with no IDT, 0x80000403) is neither.
FETCH_FAULT = re.compile(r"reason shutdown rip 0xffffffff[0-9a-f]{8} .*"
                         r"intr_info 0x([0-9a-f]{8}) error_code 0x([0-9a-f]{8})")
# The shim's words for a VM that ended on a triple fault (hypervisor/src/vcpu.rs).
TRIPLE_FAULT = "triple fault"
# The same loss without the triple fault (tests/src/guest_loss.rs, FETCH_LOOP): the test host's
# KVM re-injects the instruction-fetch page fault the guest cannot take, and the vCPU never runs
# again. husk-testhost prints it before each loop the test host's init recorded; the VMM suites'
# stall report puts it on the panic's first line when its own VM's KVM trace shows the loop.
FETCH_LOOP = "a guest is stuck in the test host's fetch fault"
# The shim's words for a guest that stopped answering (shim/src/vm/liveness.rs), which is what a
# guest stuck in that loop looks like from a pod.
STOPPED_ANSWERING = "the guest stopped answering"


def is_fetch_fault(line):
    m = FETCH_FAULT.search(line)
    if not m:
        return False
    info, code = int(m.group(1), 16), int(m.group(2), 16)
    fetch_fault = info == 0x80000b0e and code & 0x14 == 0x10
    interrupt = info & 0x80000000 and (info >> 8) & 7 == 0 and info & 0xff >= 32
    return bool(fetch_fault or interrupt)


def fetch_faults(text):
    return [l for l in text.splitlines() if (SHUTDOWN_LINE in l and is_fetch_fault(l))
            or (l.startswith("husk-testhost: ") and FETCH_LOOP in l)]


def lost_to_fetch_fault(msg):
    return TRIPLE_FAULT in msg or EARLY_BOOT in msg or FETCH_LOOP in msg or STOPPED_ANSWERING in msg


def reason_of(text, rc):
    if rc == 75:
        return "test-host-failed"
    if rc == 124:
        return "killed-at-bound"
    msgs = panic_first_lines(text)
    if msgs and all(EARLY_BOOT in m for m in msgs):
        return "guest-early-boot"
    if msgs and fetch_faults(text) and all(lost_to_fetch_fault(m) for m in msgs):
        return "guest-fetch-fault"
    return "tests-failed"


# libtest's line for a test that starts (--test-threads=1 --nocapture): its result follows the
# test's own output, as "ok", "FAILED" or "ignored" at the end of a line.
TEST_START = re.compile(r"^test (\S+) \.\.\. ", re.M)
# What ends the last test's output: libtest's summary, or a new run of the binary.
RUN_END = re.compile(r"^(successes:$|failures:$|test result: |running \d+ tests?$)", re.M)


def passed_tests(text):
    # A test passed when the last line of what followed its start, leaving out the lines the
    # test host prints on its own (its console and KVM records, interleaved at any point), is
    # libtest's "ok". A test the test host died under never printed it (and its output has
    # husk-testhost's error).
    starts = list(TEST_START.finditer(text))
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        seg = text[m.end():end]
        cut = RUN_END.search(seg)
        seg = seg[:cut.start()] if cut else seg
        lines = [l.rstrip() for l in seg.splitlines()
                 if l.strip() and not l.startswith("husk-testhost:")
                 and not re.match(r"^\[\s*\d+\.\d+\]", l)]
        if "husk-testhost: error:" in seg:
            continue
        if lines and (lines[-1] == "ok" or (len(lines) == 1 and lines[0].endswith(" ok"))):
            out.append(m.group(1))
    return out


# What a failed test's saved containerd log (tests/src/containerd.rs saves it as
# <test>.containerd.log beside the binary's log) says that matters: the shims' warnings and
# errors, husk-vmm's own warnings (a vsock reset names the side that ended it), the agent's
# warnings and errors, and a guest kernel's panic or oops on its console. The last LOG_LINES of
# them, each cut to LOG_WIDTH characters, go in the record and the summary.
LOG_LINE = re.compile(r"(^\S+Z\s+(WARN|ERROR) |husk-vmm: warning: |husk-vmm: guest shut down"
                      r"|agent: .*\b(WARN|ERROR)\b|guest: .*(Kernel panic|panicked|BUG: |Oops))")
LOG_LINES = 12
LOG_WIDTH = 300


def log_lines(artifacts, tests):
    out = {}
    for t in tests:
        text = read(f"{artifacts}/{t.replace('::', '-')}.containerd.log")
        hits = [l.strip()[:LOG_WIDTH] for l in text.splitlines() if LOG_LINE.search(l)]
        if hits:
            out[t] = hits[-LOG_LINES:]
    return out


def read(log):
    try:
        return open(log, errors="replace").read()
    except OSError:
        return ""


def record(log, rc, binary, attempt, action):
    text = read(log)
    rc = int(rc)
    reason = reason_of(text, rc)
    last_test = re.findall(r"^test (\S+) \.\.\. ", text, re.M)
    obj = {
        "binary": binary,
        "attempt": int(attempt),
        "rc": rc,
        "reason": reason,
        "action": action,
        "failed_tests": failed_tests(text),
        "running_when_stopped": last_test[-1] if last_test and rc in (75, 124) else None,
        "panics": panics(text),
        "guest_shutdowns": fetch_faults(text)[:4],
        "log_lines": log_lines(os.path.dirname(log) or ".", failed_tests(text)),
        "log": log,
    }
    print(json.dumps(obj))


def summary(path):
    try:
        rows = [json.loads(l) for l in open(path) if l.strip()]
    except OSError:
        rows = []
    if not rows:
        print("e2e: no binary failed or was run again")
        return
    print(f"e2e: {len(rows)} failed run(s) of a test binary ({path}):")
    for r in rows:
        what = ", ".join(r["failed_tests"]) or r.get("running_when_stopped") or "-"
        print(f"  {r['binary']} attempt {r['attempt']}: {r['reason']} (exit {r['rc']}) -> "
              f"{r['action']}; tests: {what}")
        for p in r["panics"]:
            print(f"      {p}")
        for l in r.get("guest_shutdowns", []):
            print(f"      the test host's KVM: {l.strip()[:300]}")
        for test, lines in r.get("log_lines", {}).items():
            print(f"      what {test}'s shims and VMMs warned of, last {len(lines)}:")
            for l in lines:
                print(f"        {l}")


if __name__ == "__main__":
    if sys.argv[1] == "reason":
        print(reason_of(read(sys.argv[2]), int(sys.argv[3])))
    elif sys.argv[1] == "record":
        record(*sys.argv[2:7])
    elif sys.argv[1] == "summary":
        summary(sys.argv[2])
    elif sys.argv[1] == "passed":
        for name in sorted({t for log in sys.argv[2:] for t in passed_tests(read(log))}):
            print(name)
    else:
        sys.exit(f"usage: {sys.argv[0]} reason|record|summary|passed ...")

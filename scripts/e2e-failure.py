#!/usr/bin/env python3
"""Describes one failed run of an e2e test binary as a JSON line, and summarises those lines.

  e2e-failure.py record <log> <rc> <binary> <attempt> <action>   prints one JSON object
  e2e-failure.py summary <jsonl>                                 prints the run's summary

The reason is what the exit code and output say:
  test-host-failed  husk-testhost exit 75: the nested test host wedged or its kernel died
                    under the binary (the environment, not the tests);
  killed-at-bound   exit 124: the binary ran past its bound (a hang; see its output);
  tests-failed      the binary's own tests failed: a product bug until shown otherwise.
For tests-failed the record names the failed tests and the first lines of their panics, so
the end of a CI log says what failed without scrolling back.
"""
import json
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


def record(log, rc, binary, attempt, action):
    try:
        text = open(log, errors="replace").read()
    except OSError:
        text = ""
    rc = int(rc)
    reason = {75: "test-host-failed", 124: "killed-at-bound"}.get(rc, "tests-failed")
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


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(*sys.argv[2:7])
    elif sys.argv[1] == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} record|summary ...")

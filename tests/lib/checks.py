"""PASS/FAIL bookkeeping shared by the Python suites (interop, gateway, strongSwan).

`check(name, ok, detail)` prints one PASS or FAIL line (FAIL with the detail that explains
it) and counts it; `summary(label)` prints the `N passed, M failed` line and returns the
exit status: 1 when any check failed.
"""
passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name} {detail}", flush=True)


def summary(label=""):
    print(f"{label}{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0

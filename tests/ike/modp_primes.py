#!/usr/bin/env python3
"""Derives the MODP primes of RFC 2409 section 6.2 (group 2) and RFC 3526 (groups 5, 14-18)
from their defining formula, p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + k),
and checks that ike/src/groups.rs holds exactly these numbers. --primality also checks that
p and (p-1)/2 are prime (Miller-Rabin, 24 rounds: about 2.5 minutes on the 2-core VM; run
once when the table was made, all seven safe). --print prints them as Rust hex constants.

Usage: modp_primes.py [--print] [--primality] [PATH/TO/groups.rs]
"""
import random
import re
import sys

GROUPS = {2: (1024, 129093), 5: (1536, 741804), 14: (2048, 124476), 15: (3072, 1690314),
          16: (4096, 240904), 17: (6144, 929484), 18: (8192, 4743158)}


def arctan_inv(x, one):
    total = term = one // x
    x2, n, sign = x * x, 3, -1
    while term:
        term //= x2
        total += sign * (term // n)
        sign, n = -sign, n + 2
    return total


def pi_scaled(bits):
    """floor(pi * 2^bits) (Machin's formula with guard bits)."""
    guard = 64
    one = 1 << (bits + guard)
    pi = 4 * (4 * arctan_inv(5, one) - arctan_inv(239, one))
    return pi >> guard


def probably_prime(n, rounds=24):
    if n < 4:
        return n in (2, 3)
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(1)
    for _ in range(rounds):
        a = rng.randrange(2, n - 2)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def prime(group):
    n, k = GROUPS[group]
    return 2**n - 2**(n - 64) - 1 + 2**64 * (pi_scaled(n - 130) + k)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    ok = True
    primes = {}
    for g in GROUPS:
        p = prime(g)
        if "--primality" in sys.argv:
            safe = probably_prime(p) and probably_prime((p - 1) // 2)
            print(f"group {g}: {GROUPS[g][0]} bits, safe prime: {safe}", file=sys.stderr)
            ok &= safe
        primes[g] = p
    if "--print" in sys.argv:
        for g, p in primes.items():
            h = f"{p:X}"
            print(f"pub const MODP_{g}: &str = concat!(")
            for i in range(0, len(h), 64):
                print(f'    "{h[i:i + 64]}",')
            print(");")
    if args:
        src = open(args[0]).read()
        for g, p in primes.items():
            m = re.search(rf"pub const MODP_{g}: &str = concat!\((.*?)\);", src, re.S)
            got = int("".join(re.findall(r'"([0-9A-F]+)"', m.group(1))), 16) if m else None
            same = got == p
            print(f"groups.rs MODP_{g} matches the formula: {same}", file=sys.stderr)
            ok &= same
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

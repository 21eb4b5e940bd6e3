"""Shared pieces of the hostile-input property tests (tests/*/test_hostile_*.py).

The default run keeps every property test to a few seconds; ``NEARCAST_HOSTILE_EXAMPLES=N`` raises each
one to at least N examples (the thorough run quoted in CHANGELOG.md uses 10000)."""

from __future__ import annotations

import os

from hypothesis import strategies as st

THOROUGH = int(os.environ.get("NEARCAST_HOSTILE_EXAMPLES", "0") or 0)


def examples(default: int) -> int:
    """Examples for one property test: ``default``, or more when the thorough run asks for more."""
    return max(default, THOROUGH)


# Characters that, combined at random, spell dot segments and separators in every encoding: "%2e%2e",
# "%2f", "%5c", "%00", "%252e", "..\\", NULs, look-alike dots, and plain file-name characters.
HOSTILE_CHARS = "./\\%25eEfFcC0\x00a~ :;?#\uff0e\u2024"
# Whole pieces the character soup rarely spells.
ATOMS = ["..", "%2e%2e", ".%2e", "%252e%252e", "%2f", "%5c", "%00", "%c0%ae", "%e0%80%ae", "//", "etc/passwd",
         "C:", "a" * 130, ".git", "%ff", "t1", "v1", "hls", "seg_1.m4s", "master.m3u8"]
hostile_text = st.text(alphabet=HOSTILE_CHARS, max_size=40) | st.lists(st.sampled_from(ATOMS), max_size=6).map("/".join)
json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
             | st.text(max_size=12))
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=12)

#!/usr/bin/env python3
"""Generates the Unicode tables in worker/engine/unicode_data.cc.

The CLIP tokenizer must reproduce Python's text handling bit for bit (the
reference is transformers' slow CLIPTokenizer on Python 3.11, Unicode 14.0.0),
so the tables are taken from the very functions the reference calls:
`unicodedata.category`, `unicodedata.combining`, `unicodedata.normalize`,
`str.lower` and `str.isspace`, not from the UCD text files.

Only the block between the `BEGIN GENERATED TABLES` / `END GENERATED TABLES`
markers of unicode_data.cc is rewritten; the code around it is hand-written.

Regenerate (from the repository root, with a Python whose
`unicodedata.unidata_version` is 14.0.0, i.e. Python 3.11):

    python3 tools/gen_unicode_data.py            # rewrites the table block
    python3 tools/gen_unicode_data.py --check    # exit 1 if it is out of date

A different Unicode version is refused unless --allow-version-mismatch is
given: the tokenizer would then disagree with the reference on new characters.
"""

import argparse
import os
import sys
import unicodedata

EXPECTED_UNICODE_VERSION = "14.0.0"
MAX_CP = 0x10FFFF
TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "engine",
                      "unicode_data.cc")
BEGIN_MARK = "// BEGIN GENERATED TABLES"
END_MARK = "// END GENERATED TABLES"

# Order must match `enum class GeneralCategory` in unicode_data.h.
CATEGORIES = [
    "Lu", "Ll", "Lt", "Lm", "Lo",
    "Mn", "Mc", "Me",
    "Nd", "Nl", "No",
    "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",
    "Sm", "Sc", "Sk", "So",
    "Zs", "Zl", "Zp",
    "Cc", "Cf", "Cs", "Co", "Cn",
]

# Unicode's White_Space property (PropList.txt; unchanged since Unicode 6.3,
# when U+180E left it). unicodedata does not expose it; the `regex` module's
# `\s`, used by CLIP's pre-tokenizer pattern, is exactly this set.
WHITE_SPACE = [(0x0009, 0x000D), (0x0020, 0x0020), (0x0085, 0x0085), (0x00A0, 0x00A0),
               (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F),
               (0x205F, 0x205F), (0x3000, 0x3000)]

HANGUL_S_BASE, HANGUL_S_COUNT = 0xAC00, 11172


def all_code_points():
    return range(MAX_CP + 1)


def ranges_of(predicate):
    """[(first, last)] of the maximal runs of code points where predicate holds."""
    out = []
    start = None
    for cp in all_code_points():
        if predicate(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, MAX_CP))
    return out


def fmt_list(items, per_line):
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + " ".join(items[i:i + per_line]))
    return "\n".join(lines)


def emit_ranges(name, ranges, comment):
    items = ["{0x%04X, 0x%04X}," % r for r in ranges]
    return (f"// {comment}\n"
            f"constexpr CodePointRange {name}[] = {{\n{fmt_list(items, 4)}\n}};\n")


def category_table():
    starts, cats = [], []
    prev = None
    for cp in all_code_points():
        cat = unicodedata.category(chr(cp))
        if cat != prev:
            starts.append(cp)
            cats.append(CATEGORIES.index(cat))
            prev = cat
    return starts, cats


def lower_tables():
    """Python's str.lower() per code point: stride/delta runs for the 1:1
    mappings, and a list for the few that lower to several code points."""
    simple, special = [], []
    for cp in all_code_points():
        if 0xD800 <= cp <= 0xDFFF:
            continue
        low = chr(cp).lower()
        if low == chr(cp):
            continue
        if len(low) == 1:
            simple.append((cp, ord(low) - cp))
        else:
            special.append((cp, [ord(c) for c in low]))
    # Greedy runs: same delta, constant stride (1 for blocks such as A-Z,
    # 2 for the alternating upper/lower pairs of Latin Extended-A and friends).
    runs = []
    i = 0
    while i < len(simple):
        cp, delta = simple[i]
        best_end, best_stride, best_j = cp, 1, i
        for stride in (1, 2):
            j = i
            while (j + 1 < len(simple) and simple[j + 1][0] == simple[j][0] + stride
                   and simple[j + 1][1] == delta):
                j += 1
            if j > best_j:
                best_end, best_stride, best_j = simple[j][0], stride, j
        runs.append((cp, best_end, best_stride, delta))
        i = best_j + 1
    return runs, special


def sigma_context_tables():
    """Case_Ignorable and Cased as CPython's final-sigma rule sees them.

    CPython lowers U+03A3 to final sigma when it follows a cased character
    (skipping case-ignorable ones) and no cased character follows. Probing
    str.lower() recovers the two properties it uses:
      lower(c + "Σ")       ends in ς  <=>  !ignorable(c) && cased(c)
      lower("A" + c + "Σ") ends in ς  <=>   ignorable(c) || cased(c)
    Cased-ness of an ignorable character never matters (it is skipped first),
    so the second table is "cased and not ignorable".
    """
    ignorable, cased = set(), set()
    for cp in all_code_points():
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        p1 = (c + "\u03a3").lower()[-1] == "\u03c2"
        p2 = ("A" + c + "\u03a3").lower()[-1] == "\u03c2"
        if p1:
            cased.add(cp)
        elif p2:
            ignorable.add(cp)
    return (ranges_of(lambda cp: cp in ignorable), ranges_of(lambda cp: cp in cased))


def ccc_ranges():
    out = []
    for cp in all_code_points():
        ccc = unicodedata.combining(chr(cp))
        if ccc == 0:
            continue
        if out and out[-1][1] == cp - 1 and out[-1][2] == ccc:
            out[-1] = (out[-1][0], cp, ccc)
        else:
            out.append((cp, cp, ccc))
    return out


def is_hangul_syllable(cp):
    return HANGUL_S_BASE <= cp < HANGUL_S_BASE + HANGUL_S_COUNT


def decomposition_tables():
    """Full canonical decompositions (Hangul syllables are done in code) and the
    primary composites (canonical pairs not excluded from composition)."""
    decomp = []  # (cp, [code points])
    compose = []  # (first, second, composite)
    for cp in all_code_points():
        if 0xD800 <= cp <= 0xDFFF or is_hangul_syllable(cp):
            continue
        c = chr(cp)
        nfd = unicodedata.normalize("NFD", c)
        if nfd != c:
            decomp.append((cp, [ord(x) for x in nfd]))
        mapping = unicodedata.decomposition(c)
        if mapping and not mapping.startswith("<"):
            parts = [int(x, 16) for x in mapping.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", c) == c:
                assert unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == c, hex(cp)
                compose.append((parts[0], parts[1], cp))
    compose.sort()
    return decomp, compose


def generate_tables():
    starts, cats = category_table()
    lower_runs, lower_special = lower_tables()
    ignorable, cased = sigma_context_tables()
    cccs = ccc_ranges()
    decomp, compose = decomposition_tables()
    python_space = ranges_of(lambda cp: not 0xD800 <= cp <= 0xDFFF and chr(cp).isspace())

    out = [BEGIN_MARK,
           f"// Unicode {unicodedata.unidata_version}, from Python's unicodedata and str methods.",
           "// Do not edit: run tools/gen_unicode_data.py.", ""]

    out.append("// General category: kCategoryStarts[i] begins a run of kCategoryValues[i] "
               "(GeneralCategory)\n// that lasts until the next start.")
    out.append(f"constexpr char32_t kCategoryStarts[] = {{\n"
               f"{fmt_list(['0x%04X,' % s for s in starts], 10)}\n}};")
    out.append(f"constexpr uint8_t kCategoryValues[] = {{\n"
               f"{fmt_list(['%d,' % c for c in cats], 20)}\n}};\n")

    out.append(emit_ranges("kPythonSpace", python_space,
                           "str.isspace(): bidi class WS/B/S or category Zs."))
    out.append(emit_ranges("kWhiteSpace", WHITE_SPACE,
                           "Unicode White_Space (what the regex module's \\s matches)."))
    out.append(emit_ranges("kCaseIgnorable", ignorable,
                           "Case_Ignorable, as CPython's final-sigma rule uses it."))
    out.append(emit_ranges("kCasedNotIgnorable", cased,
                           "Cased and not Case_Ignorable (the only cased-ness that rule reads)."))

    items = ["{0x%04X, 0x%04X, %d, %d}," % r for r in lower_runs]
    out.append("// str.lower(), 1:1 part: for first <= c <= last with (c - first) % stride == 0,\n"
               "// lower(c) = c + delta.\n"
               f"constexpr LowerRun kLowerRuns[] = {{\n{fmt_list(items, 3)}\n}};\n")
    items = []
    for cp, low in lower_special:
        assert len(low) <= 3
        items.append("{0x%04X, {%s}}," % (cp, ", ".join("0x%04X" % x for x in low)))
    out.append("// str.lower() mappings to more than one code point (SpecialCasing).\n"
               f"constexpr LowerSpecial kLowerSpecial[] = {{\n{fmt_list(items, 2)}\n}};\n")

    items = ["{0x%04X, 0x%04X, %d}," % r for r in cccs]
    out.append("// Canonical_Combining_Class, nonzero runs.\n"
               f"constexpr CombiningClassRun kCombiningClass[] = {{\n{fmt_list(items, 3)}\n}};\n")

    pool, entries = [], []
    for cp, parts in decomp:
        assert len(parts) <= 4
        entries.append("{0x%04X, %d, %d}," % (cp, len(pool), len(parts)))
        pool.extend(parts)
    assert len(pool) < 65536
    out.append("// Full canonical decompositions (Hangul syllables excepted): code point, offset\n"
               "// into kDecompositionPool, length.\n"
               f"constexpr Decomposition kDecompositions[] = {{\n{fmt_list(entries, 4)}\n}};")
    out.append(f"constexpr char32_t kDecompositionPool[] = {{\n"
               f"{fmt_list(['0x%04X,' % x for x in pool], 10)}\n}};\n")

    items = ["{0x%04X, 0x%04X, 0x%04X}," % r for r in compose]
    out.append("// Primary composites: (first, second) -> composite, sorted by (first, second).\n"
               f"constexpr Composition kCompositions[] = {{\n{fmt_list(items, 3)}\n}};\n")
    out.append(END_MARK)
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if unicode_data.cc is not what this script generates")
    parser.add_argument("--allow-version-mismatch", action="store_true")
    parser.add_argument("--output", default=TARGET)
    args = parser.parse_args()

    if unicodedata.unidata_version != EXPECTED_UNICODE_VERSION and not args.allow_version_mismatch:
        sys.exit(f"unicodedata is Unicode {unicodedata.unidata_version}, the reference is "
                 f"{EXPECTED_UNICODE_VERSION} (use Python 3.11)")

    with open(args.output, encoding="utf-8") as f:
        text = f.read()
    begin = text.find(BEGIN_MARK)
    end = text.find(END_MARK)
    if begin < 0 or end < begin:
        sys.exit(f"{args.output}: markers '{BEGIN_MARK}' / '{END_MARK}' not found")
    new_text = text[:begin] + generate_tables() + text[end + len(END_MARK):]

    if args.check:
        if new_text != text:
            sys.exit(f"{args.output} is out of date: run tools/gen_unicode_data.py")
        return
    if new_text != text:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(new_text)


if __name__ == "__main__":
    main()

"""Run the test suite under valgrind memcheck and classify what it reports.

Usage (from the repository root, after `pip install -e ".[test]"`)::

    python tests/run_valgrind.py [pytest args...]     # default: tests -q -p no:cacheprovider

CPython, glibc and the dynamic loader produce known false positives under
memcheck: uninitialised values from `getrandom`-seeded hashing, ld.so's
word-wise `strncmp` past short strings, and glibc's vectorised string
routines (`__wmemcmp_avx2_movbe` and friends, which valgrind 3.19 does not
replace) reading a whole vector past the end of a short string.  This script counts every error, then reports
separately the ones that matter: any error with a frame in a wsmem extension
module, and any invalid read/write/free outside the loader.  It exits 1 if
either count is non-zero.  PYTHONMALLOC=malloc makes every Python object a
real malloc block, so memcheck sees use-after-free of objects too.
"""
import os
import re
import subprocess
import sys

WSMEM_FRAME = re.compile(r"wsmem[/.]_(arena|array|workspace|pages|capture|gpu)|pyx/wsmem/")
INVALID = re.compile(r"Invalid (read|write|free)|Mismatched free|free\(\) / delete")
LOADER = re.compile(r"dl-load\.c|dl-open\.c|rtld|ld-linux")
# glibc's vectorised string functions as the innermost frame (vector over-read).
VECTOR_STRING = re.compile(r"==\d+==    at 0x[0-9A-F]+: __\w*(mem|str|wmem|wcs)\w*_(avx2|evex|sse2|sse4)")


def main(argv):
    args = argv or ["tests", "-q", "-p", "no:cacheprovider"]
    log = os.path.abspath("valgrind-memcheck.log")
    env = dict(os.environ, PYTHONMALLOC="malloc", WSMEM_UNDER_VALGRIND="1")
    cmd = ["valgrind", "--tool=memcheck", "--num-callers=30", f"--log-file={log}",
           os.path.realpath(sys.executable), "-m", "pytest", *args]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    text = open(log).read()
    blocks = [b for b in re.split(r"\n==\d+== \n", text) if re.search(r"==\d+== [A-Z]", b)]
    errors = [b for b in blocks if not re.search(r"==\d+== (HEAP|LEAK|ERROR) SUMMARY|"
                                                 r"in use at exit|total heap usage", b)]
    ours = [b for b in errors if WSMEM_FRAME.search(b)]
    invalid = [b for b in errors if INVALID.search(b) and not LOADER.search(b)
               and not VECTOR_STRING.search(b)]
    print(f"\nvalgrind memcheck: {len(errors)} error contexts in all (log: {log})")
    print(f"  with a wsmem frame: {len(ours)}")
    print(f"  invalid read/write/free outside the loader and glibc's vector string "
          f"routines: {len(invalid)}")
    for b in (ours + invalid)[:10]:
        print(b[:3000], "\n")
    print(f"pytest exit status under valgrind: {rc}")
    return 1 if (ours or invalid or rc) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

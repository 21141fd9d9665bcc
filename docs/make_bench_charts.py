"""Draw docs/img/bench_<suite>.png from the saved full runs in bench/results/,
and write their tables into docs/benchmarks.md and README.md.

Nothing is measured here: the charts show the numbers of
bench/results/<suite>.json (the same runs as the tables in benchmarks.md).
Run from the repository root: ``python docs/make_bench_charts.py``.
"""
import json
import os

from wsmem._plot import plot_comparison
from wsmem.benchmarks._compare import comparison_rows, format_comparison
from wsmem.benchmarks.cyclic import CONFIGS, LIMITS

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "bench", "results")


def main():
    all_rows = []
    for suite in ("alloc", "cyclic", "example"):
        path = os.path.join(RESULTS, f"{suite}.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            rows = comparison_rows(json.load(f))
        all_rows += rows
        out = os.path.join(HERE, "img", f"bench_{suite}.png")
        plot_comparison(rows, out, f"{suite}: wsmem speed-up over each peer "
                                   f"(bench/results/{suite}.json)")
        print(out)
    table = format_comparison(all_rows)
    write_table(table)
    print(table)


BEGIN = "<!-- comparison:begin (written by docs/make_bench_charts.py from bench/results/*.json) -->"
END = "<!-- comparison:end -->"
PAGE = os.path.join(HERE, "benchmarks.md")


def _saved_rows() -> list:
    rows = []
    for suite in ("alloc", "cyclic", "example"):
        path = os.path.join(RESULTS, f"{suite}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows += comparison_rows(json.load(f))
    return rows


def comparison_from_results() -> str:
    """The combined table of the saved full runs (what benchmarks.md shows)."""
    return format_comparison(_saved_rows())


# The plain-NumPy baseline of each suite, and peers that are not allocators.
_BASELINE = {"alloc": "np.empty", "cyclic": "NumPy (glibc)", "example": "plain NumPy"}
_NOT_PEERS = {CONFIGS[k][0] for k in LIMITS}
README = os.path.join(os.path.dirname(HERE), "README.md")
README_BEGIN = "<!-- results:begin (written by docs/make_bench_charts.py from bench/results/*.json) -->"
README_END = "<!-- results:end -->"


def readme_table() -> str:
    """The README's short results table: wsmem against plain NumPy and
    against the best other allocator, from the saved full runs."""
    from wsmem.benchmarks._compare import _fmt_time

    lines = ["| workload | size | wsmem time | vs plain NumPy | vs best other allocator |",
             "|---|---|---:|---:|---:|"]
    for r in _saved_rows():
        base = _BASELINE[r["suite"]]
        others = {k: v for k, v in r["peers"].items() if k != base and k not in _NOT_PEERS}
        best = min(others, key=others.__getitem__) if others else None
        vs_best = f"{others[best]:.2f}x ({best})" if best else "-"
        if best in r.get("ci", {}):
            lo, hi = r["ci"][best]
            vs_best = f"{others[best]:.2f}x [{lo:.2f}..{hi:.2f}] ({best})"
        lines.append(f"| {r['workload']} | {r['size']} | {_fmt_time(r['wsmem_time_s'])} | "
                     f"{r['peers'][base]:.2f}x | {vs_best} |")
    return "\n".join(lines)


def _replace(path: str, begin: str, end: str, table: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + begin + "\n" + table + "\n" + end + tail)


def write_table(table: str) -> None:
    _replace(PAGE, BEGIN, END, table)
    _replace(README, README_BEGIN, README_END, readme_table())


if __name__ == "__main__":
    main()

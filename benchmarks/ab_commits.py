"""Did a change cost speed or learning? tuneloop's LoRA SFT at two commits, interleaved, on this machine.

    python benchmarks/ab_commits.py --before 36d0012 [--after WORKTREE|REV] [--repeats 3] [--mode quick]

The "before" side is checked out into a temporary ``git worktree`` and runs *its own*
``benchmarks/worker_tuneloop.py`` against its own ``src/``; the "after" side is this checkout (or
``--after REV``, checked out the same way). Both train on the same data (``bench_data.build``,
Banking77 + the quickstart's chats, as ``bench_train.py`` uses), one subprocess per run, alternating
the order every repeat (A B, B A, ...) so that a change of machine load hits both sides. Compared:
training tokens/s (median over repeats), peak RSS and the validation loss after training, which must
be identical when the change kept behaviour (same seed, same data, same steps).

Writes ``results/ab_commits.json`` with the machine, both revisions and every run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402
from common import REPO, ensure_workdir, run_worker, write_result  # noqa: E402


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _side(rev: str | None, work: Path, label: str) -> tuple[Path, str]:
    """(the tree to run, its description): None is this checkout as it is."""
    if rev is None:
        dirty = " + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
        return REPO, _git("rev-parse", "--short", "HEAD") + dirty
    tree = work / label
    _git("worktree", "add", "--detach", "--force", str(tree), rev)
    return tree, _git("rev-parse", "--short", rev)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a git revision (commit, tag, branch)")
    parser.add_argument("--after", default=None, help="a git revision [default: this checkout as it is]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default="quick", choices=("quick", "full"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args(argv)

    data = bench_data.build(args.mode)
    data_dir = Path(data["train"]).parent
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(dir=ensure_workdir(), prefix="ab-") as tmp:
        work = Path(tmp)
        sides = {"before": _side(args.before, work, "before"), "after": _side(args.after, work, "after")}
        try:
            for repeat in range(args.repeats):
                order = ["before", "after"] if repeat % 2 == 0 else ["after", "before"]
                for name in order:
                    tree, rev = sides[name]
                    out = work / f"{name}-{repeat}"
                    result = run_worker([str(tree / "benchmarks/worker_tuneloop.py"), "--data", str(data_dir),
                                         "--out", str(out)], args.timeout, env={"PYTHONPATH": str(tree / "src")})
                    result.update(side=name, revision=rev, repeat=repeat)
                    runs.append(result)
                    print(f"{name} ({rev}) repeat {repeat + 1}/{args.repeats}: "
                          + (f"{result['tokens_per_s']:.1f} tokens/s, validation loss "
                             f"{result.get('validation_loss')}, peak RSS {result.get('peak_rss_gb')} GB"
                             if "error" not in result else f"FAILED {result['error']}: "
                                                            f"{result.get('stderr_tail', '')[-800:]}"),
                          flush=True)
        finally:
            for name, (tree, _) in sides.items():
                if tree != REPO:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                                   capture_output=True)
    summary = {}
    for name, (_, rev) in sides.items():
        ok = [r for r in runs if r["side"] == name and "error" not in r]
        summary[name] = {"revision": rev, "runs": len(ok),
                         "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in ok), 1) if ok else None,
                         "tokens_per_s_all": [round(r["tokens_per_s"], 1) for r in ok],
                         "peak_rss_gb_max": max((r.get("peak_rss_gb", 0) for r in ok), default=None),
                         "validation_losses": sorted({r.get("validation_loss") for r in ok}, key=str)}
    before, after = summary["before"]["tokens_per_s_median"], summary["after"]["tokens_per_s_median"]
    summary["speed_ratio_after_over_before"] = round(after / before, 3) if before and after else None
    payload = {"mode": args.mode, "repeats": args.repeats, "data": data, "summary": summary, "runs": runs}
    path = write_result("ab_commits", payload)
    print(f"after/before tokens/s: {summary['speed_ratio_after_over_before']}; validation losses "
          f"before {summary['before']['validation_losses']}, after {summary['after']['validation_losses']} "
          f"-> {path}")
    return payload


if __name__ == "__main__":
    main()

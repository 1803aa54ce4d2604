"""Score `nandoctor run` on real public training scripts, run unmodified (bench/real_scripts.yaml).

    python3 bench/real_scripts.py --source /work/realscripts              # every entry, through nandoctor run
    python3 bench/real_scripts.py --source DIR --only nanogpt --keep       # entries whose name contains a word
    python3 bench/real_scripts.py --source DIR --plain                     # check the injections under plain python
    python3 bench/real_scripts.py --source DIR --round 2                   # one round of entries (yaml `round`)
    python3 bench/real_scripts.py --source DIR --site SITE                 # SITE: `pip install --target SITE datasets
                                                                           #   jsonargparse[signatures]` (HF, LightningCLI)
    python3 bench/real_scripts.py --source DIR --run-option=--restart-over-mib=0  # an extra `nandoctor run` option
    python3 bench/real_scripts.py --list                                   # what each entry runs and expects

The scripts are not part of this repository. `--source` is a folder you filled from the public
repositories, one sub-folder per entry's `source`, holding the entry's `paths` at the commit the
yaml names. For each entry the harness:
1. copies that sub-folder to a temporary folder (the input is never modified);
2. writes the entry's tiny input files with our own generators (bench/real_scripts_data.py),
   including a data-borne failure when the injection is `data`;
3. applies the injection: extra arguments, generator keyword arguments, or a one-line
   replacement `{file, old, new}` in the copy;
4. runs `python -m nandoctor run --format json -o OUT --out BUNDLES SCRIPT ARGS` in the script's
   folder (or, with --plain, `python SCRIPT ARGS`), offline, on one thread, with the entry's
   stand-in packages (bench/real_scripts_stubs/) first on PYTHONPATH;
5. scores the JSON report: exit code, verdict, top cause, top three, and whether the first
   non-finite value's `user_source` and the top cause's `file` lie in the script's own files
   (the copied repository: never site-packages, never nandoctor); a `source` apart from
   `user_source` (shown as library code) that lies in them is flagged.

The table goes to stdout and is appended to bench/real_scripts_results.txt (with --plain:
bench/real_scripts_plain_results.txt; --results to change it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import yaml

BENCH = Path(__file__).resolve().parent
CHECKOUT = BENCH.parent
MANIFEST = BENCH / "real_scripts.yaml"
STUBS = BENCH / "real_scripts_stubs"
RESULTS = BENCH / "real_scripts_results.txt"
PLAIN_RESULTS = BENCH / "real_scripts_plain_results.txt"

sys.path.insert(0, str(BENCH))
from real_scripts_data import prepare  # noqa: E402

# Nothing may reach the network: the Hub clients read these, and every input is a local file.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
               "MPLBACKEND": "Agg"}


def entry_round(entry: dict[str, Any]) -> int:
    """The round an entry was added in (round 1 entries predate the field)."""
    return int(entry.get("round", 1))


def load_entries(only: list[str], rounds: Optional[list[int]] = None) -> list[dict[str, Any]]:
    entries = yaml.safe_load(MANIFEST.read_text())
    return [e for e in entries if (not only or any(word in e["name"] for word in only))
            and (not rounds or entry_round(e) in rounds)]


def stage(entry: dict[str, Any], source: Path, work: Path) -> tuple[Path, Path]:
    """Copy the entry's repository files into work/, write its inputs, apply the injection.
    Returns (the copy's root, the folder the script runs in)."""
    origin = source / entry["source"]
    if not origin.is_dir():
        raise FileNotFoundError(f"{origin} is missing: fetch {entry['repository']} at {entry['commit']} "
                                f"and put {', '.join(entry['paths'])} there")
    root = work / entry["source"]
    for rel in entry["paths"]:
        if not (origin / rel).exists():
            raise FileNotFoundError(f"{origin / rel} is missing (from {entry['repository']} at {entry['commit']})")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if (origin / rel).is_dir():
            shutil.copytree(origin / rel, root / rel)
        else:
            shutil.copy2(origin / rel, root / rel)
    inject = entry.get("inject") or {}
    spec = {name: dict(kwargs or {}) for name, kwargs in (entry.get("prepare") or {}).items()}
    for name, kwargs in (inject.get("prepare") or {}).items():
        spec.setdefault(name, {}).update(kwargs or {})
    prepare(root, spec)
    edit = inject.get("edit")
    if edit:
        target = root / edit["file"]
        text = target.read_text()
        if text.count(edit["old"]) != 1:
            raise ValueError(f"{entry['name']}: the edit's `old` text occurs {text.count(edit['old'])} times "
                             f"in {edit['file']} (must be exactly once)")
        target.write_text(text.replace(edit["old"], edit["new"]))
    return root, root / entry.get("cwd", ".")


def environment(entry: dict[str, Any], root: Path, work: Path, site: Optional[Path] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OFFLINE_ENV)
    env["HF_HOME"] = str(work / "hf_home")
    env["MPLCONFIGDIR"] = str(work / "mpl")
    stub_dir = work / "stubs"
    stub_dir.mkdir(exist_ok=True)
    for name in entry.get("stubs") or []:
        shutil.copytree(STUBS / name, stub_dir / name)
    paths = [str(stub_dir), *(str(root / p) for p in entry.get("pythonpath") or []), str(CHECKOUT),
             *([str(site.resolve())] if site else [])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # `{root}` in a value is the copy's root (for a cache the entry's generators wrote, e.g. HF_HOME).
    env.update({k: str(v).replace("{root}", str(root)) for k, v in (entry.get("env") or {}).items()})
    return env


def command(entry: dict[str, Any], out_json: Path, bundles: Path, plain: bool, experiments: bool,
            run_options: tuple[str, ...] = ()) -> list[str]:
    args = [str(a) for a in [*(entry.get("args") or []), *((entry.get("inject") or {}).get("args") or [])]]
    if plain:
        return [sys.executable, entry["script"], *args]
    options = ["--format", "json", "-o", str(out_json), "--out", str(bundles)]
    if not experiments:
        options.append("--no-experiments")
    return [sys.executable, "-m", "nandoctor", "run", *options, *(entry.get("run_options") or []), *run_options,
            entry["script"], *args]


def own_file(location: Optional[str], root: Path, cwd: Path) -> Optional[bool]:
    """Whether 'path:line' (or a bare path) names a file of the copied repository. None if absent."""
    if not location:
        return None
    match = re.match(r"(.+?)(?::(\d+))?$", str(location))
    path = Path(match.group(1)) if match else Path(str(location))
    resolved = (path if path.is_absolute() else cwd / path).resolve()
    text = str(resolved)
    if "site-packages" in text or "dist-packages" in text or resolved.is_relative_to(CHECKOUT / "nandoctor"):
        return False
    return resolved.is_relative_to(root.resolve()) and resolved.is_file()


def relative(location: Optional[str], root: Path, cwd: Path) -> str:
    if not location:
        return "-"
    match = re.match(r"(.+?)(?::(\d+))?$", str(location))
    path = Path(match.group(1))
    resolved = (path if path.is_absolute() else cwd / path).resolve()
    shown = str(resolved.relative_to(root.resolve())) if resolved.is_relative_to(root.resolve()) else str(path)
    return f"{shown}:{match.group(2)}" if match.group(2) else shown


def score(entry: dict[str, Any], proc: subprocess.CompletedProcess, doc: Optional[dict[str, Any]],
          root: Path, cwd: Path) -> dict[str, Any]:
    expected = entry["expected"]
    healthy = expected["verdict"] == "pass"
    want_exit = 0 if healthy else 1
    result: dict[str, Any] = {"name": entry["name"], "round": entry_round(entry), "repository": entry["repository"],
                              "exit": proc.returncode,
                              "exit_ok": proc.returncode == want_exit, "expected_top": expected.get("top") or [],
                              "report": doc is not None}
    if doc is None:
        result.update(verdict=None, verdict_ok=False, causes=[], top1=False, top3=False, origin=None,
                      origin_own=None, cause_file=None, cause_own=None)
    else:
        causes = doc.get("causes") or []
        ids = [c["id"] for c in causes]
        accepted = expected.get("top") or []
        event = doc.get("first_nonfinite") or {}
        top = causes[0] if causes else {}
        origin = event.get("user_source") or event.get("source")
        result.update(
            verdict=doc.get("verdict"), verdict_ok=doc.get("verdict") == expected["verdict"], causes=ids[:5],
            top1=(not [c for c in causes if c.get("severity") == "error"]) if healthy else bool(ids) and ids[0] in accepted,
            top3=healthy and doc.get("verdict") == "pass" or any(i in accepted for i in ids[:3]),
            phase=event.get("phase"), op=event.get("op"),
            origin=relative(origin, root, cwd), origin_own=own_file(event.get("user_source"), root, cwd),
            cause_file=relative(top.get("source") or top.get("file"), root, cwd) if top else "-",
            cause_own=own_file(top.get("file"), root, cwd) if top else None,
            # A `source` apart from `user_source` is shown as library code: it must not be the user's.
            library_own=(own_file(event.get("source"), root, cwd)
                         if event.get("source") and event.get("source") != event.get("user_source") else None))
    pattern = (entry.get("plain") or {}).get("output") if healthy else None
    if pattern:
        result["stdout_passed"] = re.search(pattern, proc.stdout) is not None
    return result


def check_plain(entry: dict[str, Any], proc: subprocess.CompletedProcess, root: Path, cwd: Path) -> dict[str, Any]:
    """Under plain python: did the script fail (or finish) the way the entry says?"""
    plain = entry.get("plain") or {}
    output = proc.stdout + proc.stderr
    checks = {}
    if "exit" in plain:
        checks["exit"] = proc.returncode == plain["exit"]
    if plain.get("output"):
        checks["output"] = re.search(plain["output"], output) is not None
    if plain.get("log"):  # a log file the script writes instead of printing (e.g. runs/*/training.log)
        logs = sorted(cwd.glob(plain["log"]["glob"]))
        checks["log"] = any(re.search(plain["log"]["regex"], log.read_text(errors="replace")) for log in logs)
    if plain.get("nonfinite_weights"):
        from safetensors.torch import load_file
        import torch
        path = cwd / plain["nonfinite_weights"]
        checks["nonfinite_weights"] = path.exists() and any(
            not torch.isfinite(t).all() for t in load_file(str(path)).values())
    return {"name": entry["name"], "round": entry_round(entry), "repository": entry["repository"],
            "exit": proc.returncode, "plain_ok": all(checks.values()) and bool(checks), "checks": checks}


def run_entry(entry: dict[str, Any], source: Path, plain: bool, experiments: bool, keep: bool,
              site: Optional[Path] = None, run_options: tuple[str, ...] = ()) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"real-{entry['name']}-"))
    began = time.perf_counter()
    try:
        root, cwd = stage(entry, source, work)
        out_json, bundles = work / "report.json", work / "bundles"
        cmd = command(entry, out_json, bundles, plain, experiments, run_options)
        timeout = entry.get("timeout", 180) * (1 if plain else 3)
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=environment(entry, root, work, site), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            proc = subprocess.CompletedProcess(cmd, 124, exc.stdout or "", (exc.stderr or "") + "\n[timeout]")
            if isinstance(proc.stdout, bytes):
                proc = subprocess.CompletedProcess(cmd, 124, proc.stdout.decode(errors="replace"),
                                                   proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr)
        (work / "stdout.txt").write_text(proc.stdout)
        (work / "stderr.txt").write_text(proc.stderr)
        if plain:
            result = check_plain(entry, proc, root, cwd)
        else:
            doc = json.loads(out_json.read_text()) if out_json.exists() else None
            result = score(entry, proc, doc, root, cwd)
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-3:]
    except Exception as exc:  # a missing source or a broken entry is a row of the table, not a crash
        result = {"name": entry["name"], "round": entry_round(entry), "repository": entry["repository"],
                  "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - began, 1)
    if keep:
        result["work"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def yes(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def table(results: list[dict[str, Any]], plain: bool) -> list[str]:
    if plain:
        rows = [f"{'entry':<26} {'rd':>2} {'repository':<30} {'exit':>4} {'as expected':>11} {'secs':>6}  checks"]
        for r in results:
            if "error" in r:
                rows.append(f"{r['name']:<26} {r['round']:>2} {r['repository']:<30} {'-':>4} {'ERROR':>11} "
                            f"{r['seconds']:>6}  {r['error']}")
                continue
            checks = ", ".join(f"{k}={'ok' if v else 'NO'}" for k, v in r["checks"].items())
            rows.append(f"{r['name']:<26} {r['round']:>2} {r['repository']:<30} {r['exit']:>4} {yes(r['plain_ok']):>11} "
                        f"{r['seconds']:>6}  {checks}")
        rows.append(f"{sum(bool(r.get('plain_ok')) for r in results)} of {len(results)} entries behave as the yaml says under plain python")
        return rows
    head = (f"{'entry':<26} {'rd':>2} {'exit':>4} {'verdict':>7} {'top cause (expected)':<44} {'top1':>4} {'top3':>4} "
            f"{'origin own':>10} {'cause own':>9} {'secs':>6}  origin")
    rows = [head]
    for r in results:
        if "error" in r:
            rows.append(f"{r['name']:<26} {r['round']:>2} ERROR {r['error']}")
            continue
        top = (r["causes"] or ["-"])[0]
        expected = "/".join(r["expected_top"]) or "none"
        verdict = f"{r['verdict'] or '-'}{'' if r['verdict_ok'] else '!'}"
        exit_code = f"{r['exit']}{'' if r['exit_ok'] else '!'}"
        extra = "" if "stdout_passed" not in r else f"  stdout passed: {yes(r['stdout_passed'])}"
        if not r["report"]:
            extra += f"  no report: {(r.get('stderr_tail') or ['?'])[-1][:120]}"
        if r.get("library_own"):
            extra += "  LIBRARY LINE IN OWN FILES"
        rows.append(f"{r['name']:<26} {r['round']:>2} {exit_code:>4} {verdict:>7} {f'{top} ({expected})':<44} {yes(r['top1']):>4} "
                    f"{yes(r['top3']):>4} {yes(r['origin_own']):>10} {yes(r['cause_own']):>9} {r['seconds']:>6}  "
                    f"{r['origin'] or '-'} [{r.get('phase') or '-'}]{extra}")
    scored = [r for r in results if "error" not in r]
    count = lambda key: sum(bool(r.get(key)) for r in scored)
    failing = [r for r in scored if r["expected_top"]]
    rows.append(f"entries {len(results)} (errors {len(results) - len(scored)}): exit {count('exit_ok')}, "
                f"verdict {count('verdict_ok')}, top1 {count('top1')}, top3 {count('top3')}, "
                f"origin in own files {sum(bool(r['origin_own']) for r in failing)}/{len(failing)}, "
                f"top cause in own files {sum(bool(r['cause_own']) for r in failing)}/{len(failing)}"
                + (f", library line in own files {sum(bool(r.get('library_own')) for r in scored)}"
                   if any(r.get("library_own") for r in scored) else ""))
    return rows


def describe(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        inject = e.get("inject") or {}
        lines.append(f"{e['name']} (round {entry_round(e)}): {e['repository']}@{e['commit'][:10]} {e['cwd'] if e.get('cwd') else '.'}/{e['script']}")
        lines.append(f"  injection ({inject.get('kind', 'none')}): {inject.get('what', '-')}")
        lines.append(f"  expected: {e['expected']['verdict']}, top {e['expected'].get('top') or '-'}, "
                     f"file {e['expected'].get('file', '-')}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="folder with one sub-folder per repository (the entries' `source`)")
    parser.add_argument("--only", action="append", default=[], help="entries whose name contains this (repeatable)")
    parser.add_argument("--round", type=int, action="append", default=[], help="entries of this round (repeatable)")
    parser.add_argument("--site", type=Path,
                        help="a folder of extra packages the scripts need (e.g. `pip install --target DIR datasets`), "
                             "put on their PYTHONPATH after the stubs and nandoctor")
    parser.add_argument("--plain", action="store_true", help="run `python SCRIPT ARGS` and check the injection works")
    parser.add_argument("--no-experiments", action="store_true", help="pass --no-experiments to nandoctor run")
    parser.add_argument("--run-option", action="append", default=[], metavar="OPTION",
                        help="an extra option for every entry's `nandoctor run` (repeatable; e.g. "
                             "--run-option=--restart-over-mib=0 runs lr experiments from the script's start)")
    parser.add_argument("--keep", action="store_true", help="keep each entry's temporary folder (printed)")
    parser.add_argument("--list", action="store_true", help="describe the entries and exit")
    parser.add_argument("--json", type=Path, help="also write the per-entry results as JSON")
    parser.add_argument("--results", type=Path,
                        help=f"table file the table is appended to (default {RESULTS.name}, or {PLAIN_RESULTS.name} "
                             "with --plain)")
    args = parser.parse_args(argv)

    if args.site:  # the generators use them too (datasets writes its own cache format)
        sys.path.append(str(args.site.resolve()))
    entries = load_entries(args.only, args.round)
    if not entries:
        print("no entry matches", file=sys.stderr)
        return 2
    if args.list:
        print(describe(entries))
        return 0
    if args.source is None:
        parser.error("--source is required (a folder holding the public repositories' files)")
    results = []
    began = time.perf_counter()
    for entry in entries:
        result = run_entry(entry, args.source, args.plain, not args.no_experiments, args.keep, args.site,
                           tuple(args.run_option))
        results.append(result)
        print(f"{entry['name']:<26} {result['seconds']:>6}s {result.get('work', '')}"
              f"{'  ' + result['error'] if 'error' in result else ''}", file=sys.stderr)
    rows = table(results, args.plain)
    mode = "plain python" if args.plain else " ".join(
        ["nandoctor run", *(["--no-experiments"] if args.no_experiments else []), *args.run_option])
    header = [f"# bench/real_scripts.py ({mode}), {time.strftime('%Y-%m-%d')}, {len(results)} entries, "
              f"{time.perf_counter() - began:.0f} s, python {sys.version.split()[0]}"]
    text = "\n".join(header + rows) + "\n"
    print(text, end="")
    # Appended: the results files keep every earlier run's table (a write would erase them).
    results_file = args.results or (PLAIN_RESULTS if args.plain else RESULTS)
    earlier = results_file.read_text() if results_file.exists() else ""
    with results_file.open("a") as out:
        out.write(("\n" if earlier.strip() else "") + text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

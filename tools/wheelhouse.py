"""Download every wheel t2i-audit needs, except torch, for an offline GPU node.

    python tools/wheelhouse.py --python-version 3.12 --extras all --dest .whl

`pip download` cannot leave one dependency out, and torch (plus its CUDA wheels) is the one an
offline node must bring in its own CUDA build. So this resolves the closure itself: download the
requirements without dependencies, read each wheel's Requires-Dist (markers evaluated for the
target Python), skip torch and its CUDA/triton wheels, repeat until nothing is missing. Then, on
the node: pip install --no-index --find-links .whl -e '.[all]'
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

SKIP = re.compile(r"^(torch|torchvision|triton|nvidia-.*)$")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def project_requirements(extras: set[str]) -> list[str]:
    """Build requirements, dependencies and those of the extras (self-references expanded)."""
    pyproject = tomllib.loads(Path("pyproject.toml").read_text())
    project = pyproject["project"]
    table = project.get("optional-dependencies", {})
    build = pyproject.get("build-system", {}).get("requires", [])
    todo, seen, reqs = list(extras), set(), [*build, *project["dependencies"]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in table.get(name, []):
            if req.startswith("t2i-audit["):
                todo += req[len("t2i-audit[") : -1].split(",")
            else:
                reqs.append(req)
    return reqs


def download(reqs: list[str], dest: Path, python: str) -> None:
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, *platforms, "--dest", str(dest), *reqs]
    subprocess.run(cmd, check=True)


def requires(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    """Requires-Dist of a wheel that apply on the target (extras of the wheel ignored)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(zf.read(meta).decode())
    out = []
    for text in msg.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            out.append(req)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--extras", default="all")
    ap.add_argument("--dest", default=".whl")
    args = ap.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    env = {**default_environment(), "python_version": args.python_version}
    env["python_full_version"] = args.python_version + ".0"
    wanted = [r for r in project_requirements(set(args.extras.split(",")))]
    wanted = [r for r in wanted if not SKIP.match(canonicalize_name(Requirement(r).name))]
    while wanted:
        download(wanted, dest, args.python_version)
        have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in dest.glob("*.whl")}
        missing = {}
        for wheel in dest.glob("*.whl"):
            for req in requires(wheel, env):
                name = canonicalize_name(req.name)
                if name not in have and not SKIP.match(name):
                    missing[name] = str(Requirement(f"{req.name}{req.specifier}"))
        wanted = sorted(missing.values())
    total = sum(w.stat().st_size for w in dest.glob("*.whl")) / 2**20
    print(
        f"{len(list(dest.glob('*.whl')))} wheels ({total:.0f} MiB) for Python "
        f"{args.python_version} in {dest}/ (torch excluded). On the node, with torch installed:"
    )
    print(f"  pip install --no-index --find-links {dest} -e '.[{args.extras}]'")


if __name__ == "__main__":
    main()

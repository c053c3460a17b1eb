"""contrib/prometheus against itself, the docs and the SQL: run by scripts/test (unit).

- every series the alert rules use is one the queries file yields (postgres_exporter
  names a series <query name>_<column> for each non-LABEL column);
- the state list of the `fetch_etl` query is the view's (and the core's) QueueState;
- docs/operations.md lists exactly the series the queries file yields;
- the Grafana dashboard is JSON whose queries use only those series;
- `promtool check rules` and `promtool test rules` pass (skipped, loudly, without promtool).
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "contrib" / "prometheus"


def series_of(queries: dict) -> set:
    out = set()
    for name, q in queries.items():
        for metric in q["metrics"]:
            (column, spec), = metric.items()
            if spec["usage"] != "LABEL":
                out.add(f"{name}_{column}")
    return out


def main() -> int:
    problems = []
    queries = yaml.safe_load((PROM / "fetch_etl.yaml").read_text())
    series = series_of(queries)
    rules = yaml.safe_load((PROM / "fetch_etl_rules.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for used in sorted(set(re.findall(r"\bfetch_etl_\w+", exprs))):
        if used not in series:
            problems.append(f"fetch_etl_rules.yml uses {used}, which fetch_etl.yaml does not yield")
    dashboard = json.loads((PROM / "fetch_etl_dashboard.json").read_text())
    dash_exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    if not dash_exprs:
        problems.append("fetch_etl_dashboard.json has no queries")
    for used in sorted(set(re.findall(r"\bfetch_etl_\w+", " ".join(dash_exprs)))):
        if used not in series:
            problems.append(f"fetch_etl_dashboard.json uses {used}, which fetch_etl.yaml does not yield")
    states = re.findall(r"'(\w+)'", re.search(r"ARRAY\[([^\]]*)\]", queries["fetch_etl"]["query"]).group(1))
    contract = (REPO / "crates" / "core" / "src" / "contract.rs").read_text()
    block = contract[contract.index("    QueueState {"):]
    block = block[: block.index("\n    }")]
    want = re.findall(r'= "(\w+)",', block)
    if states != want:
        problems.append(f"fetch_etl.yaml's states {states} are not QueueState's {want}")
    ops = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(fetch_etl_\w+)`", ops, re.M))
    if documented != series:
        problems.append(f"docs/operations.md series table: missing {sorted(series - documented)}, "
                        f"extra {sorted(documented - series)}")
    promtool = shutil.which("promtool")
    if promtool is None:
        print("check_prometheus: SKIPPED promtool checks: promtool is not installed (scripts/setup installs it)",
              file=sys.stderr)
    else:
        for args in (["check", "rules", "fetch_etl_rules.yml"], ["test", "rules", "fetch_etl_rules_test.yml"]):
            r = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}")
    for p in problems:
        print(f"check_prometheus: {p}", file=sys.stderr)
    if not problems:
        print(f"check_prometheus: {len(series)} series, rules and docs agree; promtool "
              f"{'passed' if promtool else 'skipped'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

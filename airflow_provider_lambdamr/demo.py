"""``make demo``: generate a small Amplab sample and run query 2a on the embedded default.

Local runtime (worker processes that run the Lambda handlers from the versioned zip) and
``file://`` storage: no AWS account and no services needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from airflow_provider_lambdamr import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=".demo", help="where the sample and result go")
    parser.add_argument("--rows", type=int, default=200_000, help="uservisits rows (~164 bytes each)")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    data = root / "data"
    output = root / "amplab-2a"
    if not (data / "uservisits").is_dir():
        code = cli.main(["amplab-gen", "--output", str(data), "--rows", str(args.rows), "--files", "4",
                         "--seed", "42", "--table", "uservisits"])
        if code:
            return code
    print("\n$ lambdamr run amplab-2a --input", data / "uservisits", "--output", output, "--overwrite")
    code = cli.main(["run", "amplab-2a", "--input", str(data / "uservisits"), "--output", str(output),
                     "--split-size", "8MB", "--overwrite"])
    if code:
        return code
    first = sorted(output.glob("part-*"))[0]
    print(f"\nresult: {output}  (SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1)")
    print(f"first rows of {first.name}:")
    with open(first) as fh:
        for _ in range(5):
            line = fh.readline()
            if not line:
                break
            print("  " + line.rstrip("\n"))
    print(f"job summary: {output / '_SUCCESS'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

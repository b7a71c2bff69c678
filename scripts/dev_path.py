"""Make an import view of the repo without installing it (for machines with no pip access).

`python scripts/dev_path.py DIR` creates DIR/liveditor -> liveditor/ with the mapped subpackages
(kernels, data_pipeline, train, eval, configs) linked in, as pyproject's package-dir does.
"""

import os
import sys
from pathlib import Path

MAPPED = {"kernels": "kernels", "data_pipeline": "data_pipeline", "train": "train", "eval": "eval", "configs": "configs"}


def main(dest: str) -> None:
    repo = Path(__file__).resolve().parent.parent
    pkg = Path(dest) / "liveditor"
    pkg.mkdir(parents=True, exist_ok=True)
    for entry in (repo / "liveditor").iterdir():
        link = pkg / entry.name
        if not link.exists():
            os.symlink(entry, link)
    for name, folder in MAPPED.items():
        link = pkg / name
        if not link.exists():
            os.symlink(repo / folder, link)
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1])

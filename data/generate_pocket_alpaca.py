"""Regenerate data/pocket_alpaca/{train,heldout}.jsonl: python data/generate_pocket_alpaca.py [--out DIR] [--seed N]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab_utils.data.pocket_data import main  # noqa: E402

raise SystemExit(main())

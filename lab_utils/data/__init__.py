"""Stage `data`: Alpaca records read, validated, split and formatted (alpaca, re-exported here), the pocket data's
tables (pocket_data), and the rehearsal's stand-in datasets (standin)."""

from lab_utils.data.alpaca import *  # noqa: F403 - `from lab_utils import data` gives the Alpaca functions
from lab_utils.data.standin import hub_source  # noqa: F401 - what a rehearsal loads for a hub id

"""``python -m streamscribe.cli ...`` runs the ``streamscribe`` command."""

from __future__ import annotations

import sys

from streamscribe.cli import main

if __name__ == "__main__":
    sys.exit(main())

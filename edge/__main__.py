"""``python -m duro.edge [flags]``: the same as ``duro edge [flags]``."""

from duro.edge.main import main

raise SystemExit(main())

"""``python -m duro.placement --etcd 127.0.0.1:2379 --listen 127.0.0.1:7000 [--id ID] ...``"""

from __future__ import annotations

from duro.placement.main import main

raise SystemExit(main())

"""All the examples as one app: what ``duro dev`` runs by default.

``load_app("examples")`` imports this file as a submodule of a synthetic package rooted at
``examples/`` (see ``duro._app``), so the sibling example directories are reachable by relative
imports (``examples/counter/app.py`` is ``.counter.app``). The same classes then also run alone
from their own directories (``load_app("examples/counter")``).

Routes with the edge's default routing: ``/counter/<name>/{increment,get,websocket}``,
``/chat/<room>/{messages,websocket}``, ``/bank/<bank>/{balance,history,deposit,transfer}``.
"""

from __future__ import annotations

from .bank.app import BankAccount
from .chat.app import ChatRoom
from .counter.app import Counter

__all__ = ["Counter", "ChatRoom", "BankAccount"]

"""The seed article's "Transactional Workflows" BankAccount, on duro.

One object per bank (``env.BANK.get_by_name("acme")``) holds every account's balance, so that a
transfer between two accounts is one storage transaction of one object: both balances and the log
entry are written together or not at all. (Balances in *different* objects cannot share a
transaction; that would need a saga or two-phase protocol between objects.)

Storage layout::

    balance:<account>          int
    seq                        int, the number of log entries so far
    transaction:<seq, 20 digits>  {"seq", "type", "from", "to", "amount", "timestamp"}

RPC::

    bank = env.BANK.get_by_name("acme")
    await bank.deposit("alice", 100)          # -> 100 (alice's new balance)
    await bank.transfer("alice", "bob", 30)   # -> {"from": 70, "to": 30}
    await bank.balance("bob")                 # -> 30
    await bank.history(limit=10)              # newest log entries first

HTTP (``/bank/<bank>/...`` through the edge): ``GET balance?account=a``, ``GET history?limit=n``,
``POST deposit`` with ``{"account", "amount"}``, ``POST transfer`` with ``{"from", "to",
"amount"}``.

Errors: a bad argument raises ``ValueError``, a transfer larger than the balance raises
``InsufficientFundsError``; the caller sees :class:`duro.ObjectError` with that ``remote_type``,
and nothing was written.
"""

from __future__ import annotations

import json
import time
from typing import Any

from duro import DurableObject, Request, Response

MAX_ACCOUNT = 256  # characters of an account name
MAX_HISTORY = 1000


class InsufficientFundsError(Exception):
    """The source account's balance is smaller than the amount."""


def _account(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ACCOUNT:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_ACCOUNT} characters")
    return value


def _amount(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"amount must be a positive int, got {value!r}")
    return value


def _log_key(seq: int) -> str:
    return f"transaction:{seq:020d}"  # zero-padded: key order is log order


class BankAccount(DurableObject):
    # -- RPC ----------------------------------------------------------------------------------
    async def deposit(self, account: str, amount: int) -> int:
        """Add ``amount`` to ``account``; returns its new balance."""
        _account("account", account)
        _amount(amount)
        async with self.ctx.storage.transaction() as txn:
            balance = await txn.get(f"balance:{account}", 0) + amount
            await txn.put(f"balance:{account}", balance)
            await self._log(txn, {"type": "deposit", "from": None, "to": account, "amount": amount})
        return balance

    async def transfer(self, from_account: str, to_account: str, amount: int) -> dict[str, int]:
        """Move ``amount`` from one account to another, atomically; returns both new balances."""
        _account("from_account", from_account)
        _account("to_account", to_account)
        _amount(amount)
        if from_account == to_account:
            raise ValueError("cannot transfer from an account to itself")
        async with self.ctx.storage.transaction() as txn:
            from_balance = await txn.get(f"balance:{from_account}", 0)
            to_balance = await txn.get(f"balance:{to_account}", 0)
            if from_balance < amount:
                # Raising inside the transaction discards it: nothing of it is written.
                raise InsufficientFundsError(
                    f"insufficient funds: {from_account!r} has {from_balance}, needs {amount}"
                )
            await txn.put(f"balance:{from_account}", from_balance - amount)
            await txn.put(f"balance:{to_account}", to_balance + amount)
            await self._log(
                txn, {"type": "transfer", "from": from_account, "to": to_account, "amount": amount}
            )
        return {"from": from_balance - amount, "to": to_balance + amount}

    async def balance(self, account: str) -> int:
        _account("account", account)
        return await self.ctx.storage.get(f"balance:{account}", 0)

    async def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` log entries (1..1000), newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY:
            raise ValueError(f"limit must be an int in 1..{MAX_HISTORY}, got {limit!r}")
        entries = await self.ctx.storage.list(prefix="transaction:", reverse=True, limit=limit)
        return list(entries.values())

    async def _log(self, txn: Any, entry: dict[str, Any]) -> None:
        seq = await txn.get("seq", 0) + 1
        await txn.put("seq", seq)
        await txn.put(_log_key(seq), {"seq": seq, **entry, "timestamp": int(time.time() * 1000)})

    # -- HTTP ---------------------------------------------------------------------------------
    async def fetch(self, request: Request) -> Response:
        op = request.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if op == "balance" and request.method == "GET":
                account = request.query.get("account", "")
                return Response.json({"account": account, "balance": await self.balance(account)})
            if op == "history" and request.method == "GET":
                limit = int(request.query.get("limit", "20"))
                return Response.json({"transactions": await self.history(limit)})
            if op == "deposit" and request.method == "POST":
                body = request.json()
                balance = await self.deposit(body.get("account"), body.get("amount"))
                return Response.json({"account": body["account"], "balance": balance})
            if op == "transfer" and request.method == "POST":
                body = request.json()
                return Response.json(
                    await self.transfer(body.get("from"), body.get("to"), body.get("amount"))
                )
        except InsufficientFundsError as exc:
            return Response.json({"error": str(exc)}, status=409)
        except (ValueError, TypeError, AttributeError) as exc:  # bad JSON or arguments
            return Response.json({"error": str(exc)}, status=400)
        return Response("Not found", status=404)

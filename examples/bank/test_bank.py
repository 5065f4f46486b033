"""BankAccount through the Testbed: transactions, validation, concurrency, restart."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from duro import ObjectError
from duro.testing import Testbed

APP = Path(__file__).parent


@pytest.fixture
async def tb(tmp_path):
    async with Testbed(app=APP, data_dir=tmp_path) as tb:
        yield tb


async def test_successful_transfer(tb):
    bank = tb.env.BANK.get_by_name("acme")
    assert await bank.deposit("alice", 100) == 100
    assert await bank.transfer("alice", "bob", 30) == {"from": 70, "to": 30}
    assert await bank.balance("alice") == 70
    assert await bank.balance("bob") == 30
    assert await bank.balance("carol") == 0
    [transfer, deposit] = await bank.history()
    assert {k: transfer[k] for k in ("seq", "type", "from", "to", "amount")} == {
        "seq": 2, "type": "transfer", "from": "alice", "to": "bob", "amount": 30}
    assert {k: deposit[k] for k in ("seq", "type", "to", "amount")} == {
        "seq": 1, "type": "deposit", "to": "alice", "amount": 100}
    stored = tb.storage(bank.id)
    assert stored["balance:alice"] == 70 and stored["balance:bob"] == 30 and stored["seq"] == 2
    assert list(k for k in stored if k.startswith("transaction:")) == [
        "transaction:00000000000000000001", "transaction:00000000000000000002"]


async def test_insufficient_funds_writes_nothing(tb):
    bank = tb.env.BANK.get_by_name("acme")
    await bank.deposit("alice", 50)
    await bank.deposit("bob", 5)
    before = tb.storage(bank.id)
    with pytest.raises(ObjectError) as info:
        await bank.transfer("alice", "bob", 51)
    assert info.value.remote_type == "InsufficientFundsError"
    assert "insufficient funds" in str(info.value)
    with pytest.raises(ObjectError):
        await bank.transfer("nobody", "bob", 1)  # no account: balance 0
    assert tb.storage(bank.id) == before  # both balances and the log untouched
    assert await bank.balance("alice") == 50
    assert await bank.balance("bob") == 5
    assert len(await bank.history()) == 2
    # the stub is still usable after the object's error
    assert await bank.transfer("alice", "bob", 50) == {"from": 0, "to": 55}


async def test_validation(tb):
    bank = tb.env.BANK.get_by_name("acme")
    await bank.deposit("alice", 10)
    before = tb.storage(bank.id)
    bad_calls = [
        bank.deposit("alice", 0), bank.deposit("alice", -5), bank.deposit("alice", 1.5),
        bank.deposit("alice", "10"), bank.deposit("alice", True), bank.deposit("", 1),
        bank.deposit(7, 1), bank.deposit("x" * 257, 1),
        bank.transfer("alice", "alice", 1), bank.transfer("alice", "bob", 0),
        bank.transfer("alice", None, 1), bank.history(0), bank.history(1001),
    ]
    for call in bad_calls:
        with pytest.raises(ObjectError) as info:
            await call
        assert info.value.remote_type == "ValueError"
    assert tb.storage(bank.id) == before


async def test_concurrent_transfers_conserve_the_total(tb):
    bank = tb.env.BANK.get_by_name("acme")
    accounts = [f"acct-{i}" for i in range(10)]
    for a in accounts:
        await bank.deposit(a, 100)
    rng = random.Random(7)
    calls = []
    for _ in range(100):
        src, dst = rng.sample(accounts, 2)
        calls.append(bank.transfer(src, dst, rng.randint(1, 80)))
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, ObjectError) and e.remote_type == "InsufficientFundsError"
               for e in failed)
    assert 0 < len(failed) < len(results)  # the mix exercises both paths (fixed seed)
    balances = [await bank.balance(a) for a in accounts]
    assert sum(balances) == 1000
    assert min(balances) >= 0
    log = await bank.history(limit=1000)
    assert len(log) == len(accounts) + len(results) - len(failed)
    assert [e["seq"] for e in log] == list(range(len(log), 0, -1))  # newest first, no gaps
    stored = tb.storage(bank.id)
    assert sum(v for k, v in stored.items() if k.startswith("balance:")) == 1000


async def test_history_order_and_limit(tb):
    bank = tb.env.BANK.get_by_name("acme")
    for i in range(1, 26):
        await bank.deposit("alice", i)
    assert [e["amount"] for e in await bank.history()] == list(range(25, 5, -1))  # default 20
    assert [e["amount"] for e in await bank.history(limit=3)] == [25, 24, 23]


async def test_state_survives_restart(tb):
    bank = tb.env.BANK.get_by_name("acme")
    await bank.deposit("alice", 100)
    await bank.transfer("alice", "bob", 40)
    await tb.evict(bank.id)
    assert await bank.balance("bob") == 40
    await tb.restart()
    bank = tb.env.BANK.get_by_name("acme")
    assert await bank.balance("alice") == 60
    assert await bank.balance("bob") == 40
    await bank.transfer("bob", "alice", 10)  # the log numbering continues
    assert [e["seq"] for e in await bank.history()] == [3, 2, 1]


async def test_banks_are_separate(tb):
    await tb.env.BANK.get_by_name("acme").deposit("alice", 100)
    assert await tb.env.BANK.get_by_name("other").balance("alice") == 0


async def test_http(tb):
    bank = tb.env.BANK.get_by_name("acme")
    resp = await bank.fetch("/bank/acme/deposit", method="POST",
                            body='{"account": "alice", "amount": 100}')
    assert (resp.status, resp.json_body()) == (200, {"account": "alice", "balance": 100})
    resp = await bank.fetch("/transfer", method="POST",
                            body='{"from": "alice", "to": "bob", "amount": 25}')
    assert resp.json_body() == {"from": 75, "to": 25}
    resp = await bank.fetch("/transfer", method="POST",
                            body='{"from": "alice", "to": "bob", "amount": 1000}')
    assert resp.status == 409
    assert (await bank.fetch("/deposit", method="POST", body="{bad")).status == 400
    assert (await bank.fetch("/deposit", method="POST", body='{"account": "a"}')).status == 400
    resp = await bank.fetch("/balance?account=bob")
    assert resp.json_body() == {"account": "bob", "balance": 25}
    resp = await bank.fetch("/history?limit=1")
    assert [e["type"] for e in resp.json_body()["transactions"]] == ["transfer"]
    assert (await bank.fetch("/balance", method="DELETE")).status == 404

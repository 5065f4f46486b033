"""The combined examples app (what ``duro dev`` runs): loads, binds the three classes, runs them."""

from __future__ import annotations

from pathlib import Path

from duro._app import load_app
from duro.testing import Testbed

EXAMPLES = Path(__file__).parent


def test_bindings():
    app = load_app(EXAMPLES)
    assert {name: b.class_name for name, b in app.bindings.items()} == {
        "COUNTER": "Counter", "CHAT": "ChatRoom", "BANK": "BankAccount"}
    assert load_app(EXAMPLES / "duro.toml").bindings["CHAT"].cls is app.bindings["CHAT"].cls
    assert app.worker_fetch is None  # the edge's default routing: /<binding>/<name>/<rest>


async def test_all_three_run(tmp_path):
    async with Testbed(app=EXAMPLES, data_dir=tmp_path) as tb:
        assert (await tb.env.COUNTER.get_by_name("c").fetch("/counter/c/increment")).json_body() \
            == {"value": 1}
        await tb.env.CHAT.get_by_name("lobby").post("u1", "alice", "hi")
        resp = await tb.env.CHAT.get_by_name("lobby").fetch("/chat/lobby/messages")
        assert [m["content"] for m in resp.json_body()["messages"]] == ["hi"]
        bank = tb.env.BANK.get_by_name("acme")
        await bank.deposit("alice", 10)
        assert await bank.transfer("alice", "bob", 4) == {"from": 6, "to": 4}

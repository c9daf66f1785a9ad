"""Recording several messages in one operation: new ones, repeats of stored ones, and the
same delivery id twice in one batch, with ids that never repeat."""

from __future__ import annotations

from pathlib import Path

from orrad.state import Database, Ledger


async def test_a_batch_tells_new_from_repeats_and_ids_never_repeat(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "s.sqlite3"))
    await db.open()
    try:
        ledger = Ledger(db)
        first = await ledger.record_many([("hooks", "a", "ns:1", {"n": 1}),
                                          ("hooks", "b", "ns:1", {"n": 2})])
        assert [new for new, _ in first] == [True, True]
        await ledger.settle_many([(("hooks", "a"), "delivered", {"message": "hi"})])
        second = await ledger.record_many([("hooks", "a", "ns:1", {"n": 9}),
                                           ("hooks", "c", "ns:2", {"n": 3}),
                                           ("hooks", "c", "ns:2", {"n": 4}),
                                           ("other", "a", "ns:3", {"n": 5})])
        assert [new for new, _ in second] == [False, True, False, True]
        repeat_a, new_c, repeat_c, other_a = (entry for _, entry in second)
        assert (repeat_a.id, repeat_a.state, repeat_a.payload) == (first[0][1].id, "delivered",
                                                                   {"n": 1})
        assert repeat_a.reply == {"message": "hi"}
        assert repeat_c.id == new_c.id and repeat_c.payload == {"n": 3}
        ids = [first[0][1].id, first[1][1].id, new_c.id, other_a.id]
        assert len(set(ids)) == 4 and ids == sorted(ids)
        again = await ledger.record_many([("hooks", "d", "ns:1", {})])
        assert again[0][1].id > max(ids)
    finally:
        await db.close()

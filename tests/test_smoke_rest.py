from tests.factories import auth, count_events


async def test_post_then_list(client, acme_key, db):
    answer = await client.post(
        "/orgs/acme/containers/c1/events",
        json={"event_type": "ACCESS", "timestamp": "2023-11-18T12:00:00Z", "status": "SUCCESS"},
        headers=auth(acme_key),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == "Event logged successfully"
    listed = await client.get("/orgs/acme/events", headers=auth(acme_key))
    assert [e["id"] for e in listed.json()["events"]] == [answer.json()["event"]["id"]]
    assert await count_events(db) == 1

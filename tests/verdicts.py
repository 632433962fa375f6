"""POST /v1/updates answers 202 and the validation pipeline decides later: tests resolve a
submission to its final answer with one helper."""
from __future__ import annotations


class Outcome:
    """A submission's final answer: the POST's refusal, or the validation pipeline's verdict."""

    def __init__(self, status_code, payload):
        self.status_code, self.payload = status_code, payload

    def json(self):
        return self.payload


def resolve(client, r, wait: float = 60) -> Outcome:
    """The POST's own refusal, or the verdict of GET /v1/updates/{id} (status 200 when accepted,
    else the code the refusal carries)."""
    if r.status_code != 202:
        return Outcome(r.status_code, r.json())
    v = client.get(f"/v1/updates/{r.json()['update_id']}", params={"wait": wait}).json()
    return Outcome(200 if v["status"] == "accepted" else v.get("code"), v)

"""`ailo api`: the OpenAI wire format over a coordinator's rooms, served from the user's machine
(app.py: routes; wire.py: pure request/answer/error shapes)."""
